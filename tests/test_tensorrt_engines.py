"""TensorRT engines on a GPU: build, sidecar, runtime, CUDA-graph replay, mismatch (skipped without TensorRT)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare.bench import eval_inputs, run_bench
from fuse_export.runners.registry import BACKENDS

pytestmark = pytest.mark.tensorrt


@pytest.fixture()
def trt_folder(export_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSE_EXPORT_CACHE", str(tmp_path / "cache"))
    return export_copy


def test_build_engine_fp32_raw_plan_sidecar_manifest_and_timing_cache_reuse(trt_folder, tmp_path):
    import tensorrt as trt

    r = CliRunner().invoke(app, ["build-engine", str(trt_folder / "model.onnx"), "--batch", "1:8:32"])
    assert r.exit_code == 0, r.output
    engine = trt_folder / "model.engine"
    side = json.loads((trt_folder / "model.engine.json").read_text())
    assert side["tensorrt_version"] == trt.__version__ and side["precision"] == "fp32"
    assert side["profile"]["batch"] == "1:8:32" and side["profile"]["max"] == [32, 3, 40, 40]
    assert "TF32" in side["build"]["clear_flags"] and not side["timing_cache_reused"]
    # the raw plan: TensorRT's own runtime deserializes the file as it is (no header in front)
    assert trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(engine.read_bytes()) is not None
    manifest = json.loads((trt_folder / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["file"] == "model.engine")
    assert art["format"] == "tensorrt" and art["backend"] == "tensorrt" and art["verification"]["passed"]
    again = CliRunner().invoke(app, ["build-engine", str(trt_folder / "model.onnx"), "--out",
                                     str(tmp_path / "second.engine"), "--no-verify"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "second.engine.json").read_text())["timing_cache_reused"]


def test_engine_runner_parity_graph_replay_and_profile_limits(trt_folder, tiny_run):
    from fuse_export.app.engines import build_engine_file
    from fuse_export.errors import InputError
    from fuse_export.runners.trt_runner import TensorRTRunner
    from fuse_export.training.checkpoint import load_model

    build_engine_file(trt_folder / "model.onnx", batch="1:4:32")  # bench evaluates in chunks of 32
    pre = load_model(tiny_run.best).preprocessing
    x = eval_inputs(pre, None, 32).float_nchw
    with TensorRTRunner(trt_folder / "model.engine", pre) as plain, \
            TensorRTRunner(trt_folder / "model.engine", pre, cuda_graph=True) as graph:
        for n in (1, 32, 5, 1):
            a, b = plain.infer({"image": x[:n]}), graph.infer({"image": x[:n]})
            for name in a:
                np.testing.assert_allclose(a[name], b[name], atol=1e-6)
        with pytest.raises(InputError, match="outside the engine's profile 1..32; rebuild"):
            plain.infer({"image": np.concatenate([x, x])})
    report = run_bench(trt_folder, [BACKENDS["pytorch"], BACKENDS["tensorrt"]], [1, 32], warmup=3, iterations=10,
                       progress=False)
    rows = [r for r in report.rows if r.backend == "tensorrt"]
    assert [r.status for r in rows] == ["ok", "ok"] and all(r.parity for r in rows)


def test_engine_from_another_trt_or_gpu_is_refused_with_rebuild(trt_folder, tiny_run):
    from fuse_export.app.engines import build_engine_file
    from fuse_export.exporters.trt_engine import EngineMismatch, sidecar_path
    from fuse_export.runners.trt_runner import TensorRTRunner
    from fuse_export.training.checkpoint import load_model

    result = build_engine_file(trt_folder / "model.onnx", verify=False)
    side = json.loads(sidecar_path(result.engine).read_text())
    side["tensorrt_version"] = "9.9.9"
    sidecar_path(result.engine).write_text(json.dumps(side))
    pre = load_model(tiny_run.best).preprocessing
    with pytest.raises(EngineMismatch, match="TensorRT 9.9.9 .*rebuild it here"):
        TensorRTRunner(result.engine, pre).activate()
    side["tensorrt_version"], side["gpu"]["name"] = result.sidecar["tensorrt_version"], "Some Other GPU"
    sidecar_path(result.engine).write_text(json.dumps(side))
    with pytest.raises(EngineMismatch, match="GPU Some Other GPU.*rebuild"):
        TensorRTRunner(result.engine, pre).activate()


def test_fp16_and_int8_engines_per_major_version(trt_folder, tiny_run, tmp_path):
    from fuse_export.contract import Preprocessing
    from fuse_export.app.engines import build_engine_file
    from fuse_export.exporters.calibration import CalibrationSet, random_pixels
    from fuse_export.exporters.onnx_precision import convert_fp16, quantize_int8
    from fuse_export.exporters.trt_api import TrtApi

    api = TrtApi.installed()
    if api.has_precision_flags:  # TensorRT 10: an fp32 ONNX lowered with the FP16 flag, heads pinned to fp32
        lowered = build_engine_file(trt_folder / "model.onnx", tmp_path / "lowered.fp16.engine", "fp16")
        assert lowered.sidecar["build"]["set_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
        assert len(lowered.sidecar["build"]["fp32_layers"]) >= 5 and lowered.parity
    convert_fp16(trt_folder / "model.onnx", trt_folder / "model.fp16.onnx", {})
    fp16 = build_engine_file(trt_folder / "model.fp16.onnx", verify=False)  # no manifest entry: ORT reference
    assert fp16.sidecar["precision"] == "fp16" and fp16.sidecar["build"]["strongly_typed"]
    pre = Preprocessing.from_dict(json.loads((trt_folder / "manifest.json").read_text())["preprocessing"])
    calib = CalibrationSet(random_pixels(pre, 64), random_pixels(pre, 8, seed=3), None, "random")
    quantize_int8(trt_folder / "model.onnx", tmp_path / "model.int8.onnx", {}, calib, pre)
    int8 = build_engine_file(tmp_path / "model.int8.onnx", verify=False)
    assert int8.sidecar["precision"] == "int8" and int8.sidecar["onnx"]["kind"] == "int8"


def test_export_format_tensorrt_builds_verifies_and_lists_the_engine(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSE_EXPORT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "export"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "tensorrt", "--out", str(out)])
    assert r.exit_code == 0, r.output
    files = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert {"model.onnx", "model.engine"} <= set(files)  # the ONNX it was built from comes with it
    assert files["model.engine"]["verification"]["passed"] and files["model.engine"]["tensorrt"]["sidecar"]


def test_a_refused_timing_cache_is_replaced_not_silently_ignored(trt_folder, tmp_path):
    """set_timing_cache() returns False for a cache TensorRT will not take: the build starts a fresh one, says
    so, and writes the fresh cache over the bad file."""
    from fuse_export.exporters.trt_build import build_engine

    bad = tmp_path / "timing.cache"
    bad.write_bytes(b"not a TensorRT timing cache" * 64)
    said: list[str] = []
    side = build_engine(trt_folder / "model.onnx", tmp_path / "m.engine", None, None, 1.0, bad, 3, log=said.append)
    assert any("refused this timing cache" in line for line in said), said
    assert not side["timing_cache_reused"] and bad.read_bytes() != b"not a TensorRT timing cache" * 64
