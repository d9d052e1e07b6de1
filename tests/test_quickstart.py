import json

import pytest
from typer.testing import CliRunner

from fuse_export.cli import app


@pytest.mark.slow
def test_quickstart_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "qs"
    r = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--epochs", "2", "--samples-per-class", "40",
                                 "--image-size", "40", "--no-progress"])
    assert r.exit_code == 0, r.output
    for title in ("PyTorch", "TorchScript", "ONNX Runtime"):
        assert title in r.output
    assert "test accuracy (chance 14.3%)" in r.output
    for rel in ("data/fer2013-synthetic.csv", "train/best.pt", "train/metrics.csv", "export/model.torchscript",
                "export/model.onnx", "export/manifest.json", "bench.json"):
        assert (out / rel).is_file(), rel
    doc = json.loads((out / "bench.json").read_text())
    ran = {r["backend"] for r in doc["rows"] if r["status"] == "ok"}  # the others: skipped, no artifact
    from fuse_export.app.quickstart import quick_backends, quick_formats

    expected = set(quick_backends(quick_formats()))
    assert {"pytorch", "torchscript", "onnxruntime"} <= expected
    assert doc["passed"] and ran == expected
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert {a["format"] for a in manifest["artifacts"]} == {f.key for f in quick_formats()}
