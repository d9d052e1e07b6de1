"""The pt2 format: torch.export + AOTInductor package, its runner, parity and bench, and its failure modes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, InputError, UserError
from fuse_export.exporters.formats import FORMATS, parse_formats
from fuse_export.fileio import sha256_file
from fuse_export.model.fused import ExportView
from fuse_export.runners.registry import BACKENDS
from fuse_export.training.checkpoint import load_model
from fuse_export.app.export_verify import export_checkpoint


# These share the session's one AOTInductor compile (`pt2_export`), 20-35 s on 2 cores.
needs_pt2 = pytest.mark.slow


def eager(checkpoint, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        return [o.numpy() for o in ExportView(load_model(checkpoint).model).eval()(torch.from_numpy(x))]


@needs_pt2
def test_manifest_lists_verified_pt2_next_to_the_other_formats(pt2_export):
    m = json.loads((pt2_export / "manifest.json").read_text())
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "onnx", "pt2"}
    (a,) = [a for a in m["artifacts"] if a["format"] == "pt2"]
    assert a["file"] == "model.pt2" and a["backend"] == "pt2" and a["precision"] == "fp32"
    assert a["sha256"] == sha256_file(pt2_export / "model.pt2")
    assert a["verification"]["passed"] and a["verification"]["max_abs_prob"] <= 1e-4
    assert a["compile_s"] > 0 and a["io"]["inputs"][0]["shape"] == ["batch", 3, 40, 40]
    assert not list(pt2_export.glob(".model.pt2*"))  # no temporary left behind


PLAIN_LOADER = r"""
import sys, json
sys.modules["fuse_export"] = None  # prove the package needs no fuse_export
import numpy as np, torch, torch._inductor
model = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.inference_mode():
    logits, prob, conf = model(x)
np.savez(sys.argv[2] + ".out.npz", logits=logits.numpy(), prob=prob.numpy(), conf=conf.numpy())
print(json.loads(model.get_metadata()["fuse_export"])["class_names"][3])
"""


@needs_pt2
def test_plain_aoti_load_package_matches_eager_at_other_batch_sizes(pt2_export, tiny_run, tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 3, 40, 40)).astype(np.float32)  # not the example batch 2
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(pt2_export / "model.pt2"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "happy"
    out = np.load(tmp_path / "x.npy.out.npz")
    ref = eager(tiny_run.best, x)
    for got, want in zip((out["logits"], out["prob"], out["conf"]), ref):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


@needs_pt2
def test_runner_matches_eager_and_checks_the_contract(pt2_export, tiny_run):
    pre = Preprocessing(image_size=40)
    with BACKENDS["pt2"].factory(pt2_export / "model.pt2", tiny_run.best, pre, 1, False) as runner:
        assert runner.metadata["image_size"] == 40 and runner.metadata["input_layout"] == "float-nchw"
        for n in (1, 7):
            x = np.random.default_rng(n).standard_normal((n, 3, 40, 40)).astype(np.float32)
            got = runner.infer({"image": x})
            assert list(got) == ["logits", "probabilities", "confidence"]
            for g, want in zip(got.values(), eager(tiny_run.best, x)):
                assert np.abs(g - want).max() <= 1e-4
        with pytest.raises(InputError, match=r"expected \('N', 3, 40, 40\)"):
            runner.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})


@needs_pt2
def test_bench_has_a_pt2_row_with_parity(pt2_export, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", str(pt2_export), "--backends", "pytorch,onnxruntime,pt2", "--batch-sizes",
                                 "1,3", "--iterations", "3", "--warmup", "1", "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "AOTInductor (pt2)" in r.output
    rows = [x for x in json.loads(out.read_text())["rows"] if x["backend"] == "pt2"]
    assert [x["batch"] for x in rows] == [1, 3]
    for row in rows:
        assert row["status"] == "ok" and row["latency"]["median_ms"] > 0
        assert row["parity"]["passed"] and row["parity"]["max_abs_prob"] <= 1e-4


def test_pt2_format_row_and_aliases():
    assert parse_formats("aoti")[0] is FORMATS["pt2"] and FORMATS["pt2"].file_name == "model.pt2"
    assert BACKENDS["pt2"].format == "pt2" and BACKENDS["pt2"].available() == (True, "")


def test_missing_compiler_is_a_clear_error_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("CXX", "no-such-c++")
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-c++"))
    with pytest.raises(BackendUnavailable, match="no C\\+\\+ compiler was found"):
        export_checkpoint(tiny_run.best, [FORMATS["pt2"]], tmp_path / "a")
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "pt2", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no C++ compiler was found" in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "b").glob("*pt2*")) and not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.undo()
    from torch._inductor import cpp_builder

    cpp_builder.cpp_compiler_search.cache_clear()  # forget the failed search for the tests that follow


@needs_pt2
def test_corrupt_package_is_a_user_error(pt2_export, tmp_path):
    from fuse_export.exporters.to_pt2 import load_pt2

    bad = tmp_path / "model.pt2"
    bad.write_bytes((pt2_export / "model.pt2").read_bytes()[:4096])
    with pytest.raises(UserError, match="not a loadable AOTInductor package"):
        load_pt2(bad)
    with pytest.raises(UserError, match="no such pt2 package"):
        load_pt2(tmp_path / "missing.pt2")


@needs_pt2
def test_predict_runs_pt2_and_triton_repo_skips_it_with_a_reason(pt2_export, tiny_run, tmp_path):
    from PIL import Image

    from fuse_export.data.synthetic import SyntheticSpec, generate_faces
    from fuse_export.data.transforms import eval_transform

    faces, _, _ = generate_faces(SyntheticSpec(samples_per_class=1, seed=2))
    Image.fromarray(faces[0]).save(tmp_path / "face.png")
    r = CliRunner().invoke(app, ["predict", str(pt2_export / "model.pt2"), str(tmp_path / "face.png"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["backend"] == "pt2"
    loaded = load_model(tiny_run.best)
    x = eval_transform(loaded.preprocessing)(Image.open(tmp_path / "face.png").convert("RGB"))[None].numpy()
    want = eager(tiny_run.best, x)[1][0]
    got = [doc["results"][0]["predictions"][0]["probabilities"][c] for c in loaded.preprocessing.class_names]
    assert np.abs(np.array(got) - want).max() <= 1e-4
    r = CliRunner().invoke(app, ["triton-repo", str(pt2_export), "--out", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    assert "skipped model.pt2: format 'pt2' has no Triton platform here" in r.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["fer_onnx", "fer_torchscript"]
