import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare.bench import run_bench
from fuse_export.compare.parity import compare_outputs
from fuse_export.runners.registry import BACKENDS, parse_backends

import numpy as np
import pytest

from fuse_export.errors import InputError, UserError


def test_bench_cli_json_has_three_backends_with_parity_and_accuracy(tiny_export, tiny_csv, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--batch-sizes", "1,4", "--iterations", "3",
                                 "--warmup", "1", "--data", str(tiny_csv), "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    for title in ("PyTorch", "TorchScript", "ONNX Runtime"):
        assert title in r.output
    doc = json.loads(out.read_text())
    assert doc["passed"] and {"cpu", "platform"} <= set(doc["machine"]) and "onnxruntime" in doc["versions"]
    # Backends without an artifact in the folder (pt2, reduced precision) are skipped rows with a reason.
    exported = {"pytorch", "torchscript", "onnxruntime"}
    assert all(x["reason"] for x in doc["rows"] if x["backend"] not in exported)
    rows = [x for x in doc["rows"] if x["backend"] in exported]
    assert {(x["backend"], x["batch"]) for x in rows} == {(b, n) for b in exported for n in (1, 4)}
    for row in rows:
        assert row["status"] == "ok"
        lat = row["latency"]
        assert 0 < lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["iterations"] == 3
        assert row["images_per_s"] > 0
        assert row["parity"]["max_abs_prob"] <= 1e-4 and row["parity"]["top1_agreement"] == 1.0
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["parity"]["samples"] == 28  # the whole test split of the tiny set (7 classes x 4)
    accs = {x["accuracy"] for x in rows}
    assert len(accs) == 1  # identical predictions -> identical accuracy on every backend


def test_bench_skips_missing_artifacts_with_reason(export_copy):
    (export_copy / "model.onnx").unlink()
    report = run_bench(export_copy, parse_backends("pytorch,torchscript,onnxruntime"), [1], warmup=0, iterations=1,
                       progress=False)
    skipped = [r for r in report.rows if r.status == "skipped"]
    assert [r.backend for r in skipped] == ["onnxruntime"]
    assert "listed in manifest.json but missing" in skipped[0].reason


def test_parity_result_explains_failure():
    ref = {"logits": np.zeros((2, 3)), "probabilities": np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]),
           "confidence": np.ones((2, 1))}
    bad = {**ref, "probabilities": np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])}
    res = compare_outputs("x", ref, bad)
    assert not res and res.top1_agreement == 0.5
    assert "FAILED x" in res.explain() and "would pass only with atol >= 7.00e-01" in res.explain()
    assert compare_outputs("x", ref, ref)


def test_runner_checks_inputs_against_contract(tiny_export, tiny_run):
    from fuse_export.contract import Preprocessing

    pre = Preprocessing(image_size=40)
    with BACKENDS["onnxruntime"].factory(tiny_export / "model.onnx", tiny_run.best, pre, 1, False) as runner:
        with pytest.raises(InputError, match=r"shape \(1, 3, 32, 32\), expected \('N', 3, 40, 40\)"):
            runner.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="dtype float64"):
            runner.infer({"image": np.zeros((1, 3, 40, 40))})
        with pytest.raises(InputError, match="expected exactly"):
            runner.infer({"input": np.zeros((1, 3, 40, 40), np.float32)})


def test_unknown_backend_and_bad_batch_sizes(tiny_export):
    with pytest.raises(UserError, match="unknown backend 'trt'"):
        parse_backends("pytorch,trt")
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and "expected comma-separated integers" in r.output
    r = CliRunner().invoke(app, ["bench", str(tiny_export.parent / "nowhere")])
    assert r.exit_code == 2 and "no manifest" in r.output


def test_help_is_instant_and_imports_no_heavy_modules():
    code = ("import sys, time; t=time.perf_counter(); from fuse_export.cli import app; "
            "heavy=[m for m in ('torch','onnx','onnxruntime','tensorrt') if m in sys.modules]; "
            "print(heavy, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fuse_export", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t0 < 5.0
