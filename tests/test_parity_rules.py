"""The parity rules and exit codes: all three outputs gated, --atol/--rtol overrides recorded, --keep-failed,
exit 0 ok / 1 parity failure / 2 user error, and verification on real images by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare.parity import compare_outputs, tolerance_for
from fuse_export.errors import IntegrityError, ParityError, UserError


def _outputs(n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 7)).astype(np.float32)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return {"logits": logits, "probabilities": (e / e.sum(1, keepdims=True)).astype(np.float32),
            "confidence": rng.uniform(0.2, 0.9, (n, 1)).astype(np.float32)}


def test_confidence_is_gated_by_its_absolute_bound():
    ref = _outputs()
    got = {**ref, "confidence": ref["confidence"] + 2e-3}  # probabilities identical, alpha off by 2e-3
    res = compare_outputs("x", ref, got, "fp32")
    assert not res and res.failed_outputs() == ["confidence"]
    assert res.max_abs_prob == 0.0 and res.max_abs_conf == pytest.approx(2e-3, rel=1e-3)
    assert "failing: 'confidence'" in res.explain() and "would pass only with atol >= 2.00e-03" in res.explain()
    assert compare_outputs("x", ref, got, "fp32", atol=3e-3)  # the --atol override covers it


def test_logits_are_gated_by_top1_agreement_not_scale():
    ref = _outputs()
    shifted = {**ref, "logits": ref["logits"] + 5.0}  # a constant shift: the same decisions
    assert compare_outputs("x", ref, shifted)
    flipped = ref["logits"].copy()
    flipped[0] = flipped[0][::-1]  # another class wins for input 0; probabilities left as they were
    res = compare_outputs("x", ref, {**ref, "logits": flipped})
    assert not res and res.failed_outputs() == ["logits"] and res.top1_agreement < 1.0
    d = res.to_dict()
    assert d["outputs"]["logits"]["rule"] == "top1" and not d["outputs"]["logits"]["passed"]
    assert d["outputs"]["probabilities"]["passed"] and d["outputs"]["confidence"]["passed"]


def test_rtol_adds_a_relative_part_and_histogram_counts_every_element():
    ref = _outputs()
    got = {k: v * (1 + 1e-3) for k, v in ref.items()}  # 0.1% relative error everywhere
    assert not compare_outputs("x", ref, got, "fp32")
    res = compare_outputs("x", ref, got, "fp32", rtol=2e-3)
    assert res and res.rtol == 2e-3 and res.to_dict()["passed"]
    hist = res.to_dict()["outputs"]["probabilities"]["histogram"]
    assert sum(hist) == ref["probabilities"].size
    assert tolerance_for("int8", atol=0.2).atol == 0.2 and tolerance_for("int8").min_agreement == 0.95


def test_parity_error_is_an_integrity_error_with_exit_code_1():
    assert issubclass(ParityError, IntegrityError) and ParityError.exit_code == 1
    assert UserError.exit_code == 2


def test_export_parity_failure_exits_1_and_removes_the_file(tiny_run, tmp_path):
    out = tmp_path / "exp"
    # atol 0: only bit-exact passes, and ONNX Runtime's kernels are not PyTorch's
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx", "--out", str(out), "--atol", "0"])
    assert r.exit_code == 1, r.output
    assert "does not match eager PyTorch fp32" in r.output and "--keep-failed" in r.output
    assert not (out / "model.onnx").exists() and not (out / "model.failed.onnx").exists()


def test_keep_failed_keeps_the_artifact_on_disk_and_out_of_the_manifest(tiny_run, tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx", "--out", str(out), "--atol", "0",
                                 "--keep-failed"])
    assert r.exit_code == 1, r.output
    kept = out / "model.failed.onnx"
    assert kept.is_file() and "kept on disk, not in the manifest" in r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert all("failed" not in a["file"] for a in manifest["artifacts"])
    import onnxruntime as ort  # the kept file is a whole model, loadable for inspection

    assert [o.name for o in ort.InferenceSession(str(kept)).get_outputs()] == ["logits", "probabilities",
                                                                                "confidence"]


def test_tolerance_overrides_are_recorded_and_real_images_are_the_default(tiny_run, tiny_csv, tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx", "--out", str(out),
                                 "--atol", "1e-3", "--rtol", "1e-2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    assert art["tolerance_overrides"] == {"atol": 1e-3, "rtol": 1e-2}
    v = art["verification"]
    assert v["atol"] == 1e-3 and v["rtol"] == 1e-2 and v["passed"]
    assert set(v["outputs"]) == {"logits", "probabilities", "confidence"}
    assert {v["outputs"][k]["rule"] for k in v["outputs"]} == {"abs", "top1"}
    # No --verify-data, no calibration data: the data the checkpoint was trained on (its test split).
    assert str(tiny_csv) in art["verified_on"] and "heldout_accuracy" in art
    assert "noise" not in r.output
    ref = manifest["reference"]
    assert ref["file"] == "reference.npz" and len(ref["sha256"]) == 64


def test_noise_only_with_a_warning_when_the_training_data_is_gone(tiny_run, tmp_path):
    import torch

    from fuse_export.training.checkpoint import read_checkpoint

    state = read_checkpoint(tiny_run.best)
    state["recipe"]["data"]["path"] = str(tmp_path / "moved-away.csv")
    ckpt = tmp_path / "best.pt"
    torch.save(state, ckpt)
    out = tmp_path / "exp"
    r = CliRunner().invoke(app, ["export", str(ckpt), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "noise images" in r.output
    (art,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert "random images" in art["verified_on"]


def _perturb_onnx(folder: Path, scale: float = 1.5) -> None:
    """Scale the largest weight tensor of model.onnx and re-record its hash, as a re-export would."""
    import onnx
    from onnx import numpy_helper

    from fuse_export.fileio import sha256_file

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save_model(model, str(path))
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    for a in manifest["artifacts"]:
        if a["file"] == "model.onnx":
            a["sha256"], a["size_bytes"] = sha256_file(path), path.stat().st_size
    mpath.write_text(json.dumps(manifest))


def test_bench_on_a_perturbed_artifact_exits_1_and_a_user_error_exits_2(export_copy, tmp_path):
    _perturb_onnx(export_copy)
    out = tmp_path / "b.json"
    args = ["bench", str(export_copy), "--backends", "pytorch,onnxruntime", "--batch-sizes", "1", "--iterations", "1",
            "--warmup", "0", "--min-time", "0", "--rounds", "1", "--no-progress"]
    r = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 1, r.output
    assert "FAILED onnxruntime" in r.output and "PARITY FAIL" in r.output
    doc = json.loads(out.read_text())
    (row,) = [x for x in doc["rows"] if x["backend"] == "onnxruntime"]
    assert not doc["passed"] and not row["parity"]["passed"]
    r = CliRunner().invoke(app, [*args, "--reference", str(tmp_path / "missing.npz")])
    assert r.exit_code == 2 and "reference file not found" in r.output
    r = CliRunner().invoke(app, [*args, "--device", "gpu0"])
    assert r.exit_code == 2 and "expected cpu, cuda or cuda:N" in r.output


def test_export_user_errors_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "none.pt"), "--device", "cuda:x"])
    assert r.exit_code == 2



def test_simplify_and_no_optimize_are_recorded_and_verified(tiny_run, tmp_path):
    import onnx

    out = tmp_path / "exp"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx", "--out", str(out), "--simplify",
                                 "--no-optimize"])
    assert r.exit_code == 0, r.output
    (art,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    s = art["simplified"]
    assert art["optimize"] is False and s["tool"] == "onnxslim"
    assert s["nodes_after"] <= s["nodes_before"]
    assert s["nodes_after"] == len(onnx.load(str(out / "model.onnx")).graph.node)
    assert art["verification"]["passed"]  # verified after simplification, on the file as shipped
    meta = {p.key for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert "preprocessing" in meta  # our metadata survives onnxslim
