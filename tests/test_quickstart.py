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


def test_the_curves_are_listed_only_when_training_wrote_them(tiny_run, tiny_export, tmp_path, monkeypatch):
    """Issue 26: the quickstart listed train/training_curves.png, which is not written without matplotlib (the
    `plot` extra). The list the quickstart prints names it only when training wrote it."""
    import dataclasses
    import sys

    from fuse_export.app.export_verify import ExportResult
    from fuse_export.app.quickstart import QuickstartResult
    from fuse_export.cli.quickstart import artifact_rows
    from fuse_export.training.metrics import plot_history

    out = tmp_path / "train"
    out.mkdir()
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    exported = ExportResult(tiny_export, tiny_export / "manifest.json", manifest["artifacts"])
    result = QuickstartResult(tmp_path / "data.csv", dataclasses.replace(tiny_run, out_dir=out), exported,
                              None, tmp_path / "bench.json")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # an install without the `plot` extra
        assert plot_history(out, tiny_run.history) is None  # what training does then: no PNG
    rows = dict(artifact_rows(result))
    assert "curves" not in rows and {"checkpoint", "metrics", "manifest", "torchscript", "onnx"} <= set(rows)
    assert rows["onnx"] == tiny_export / "model.onnx"
    written = plot_history(out, tiny_run.history)  # with matplotlib
    assert written is not None and written.is_file()
    assert dict(artifact_rows(result))["curves"] == written
