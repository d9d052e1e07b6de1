"""What a machine without CUDA or TensorRT says: `doctor`, and commands that fail at once with the reason."""

import json

import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.cuda_base import cuda_status
from fuse_export.runners.gpu_backends import tensorrt_status
from fuse_export.runners.registry import BACKENDS, parse_backends

NO_CUDA = not cuda_status()[0]
NO_TRT = not tensorrt_status()[0]
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks the no-CUDA messages; this machine has CUDA")
needs_no_trt = pytest.mark.skipif(not NO_TRT, reason="checks the no-TensorRT messages; TensorRT is installed here")


def test_doctor_lists_every_backend_with_usability_and_reason():
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = {row["backend"]: row for row in doc["backends"]}
    assert list(rows) == list(BACKENDS)
    for key, b in BACKENDS.items():
        assert (rows[key]["usable"], rows[key]["reason"]) == b.available()
        assert rows[key]["usable"] or rows[key]["reason"]  # never unusable without saying why
    env = doc["environment"]
    assert env["torch"]["version"] and "cuda_available" in env["torch"] and "usable" in env["tensorrt"]
    assert rows["pytorch"]["usable"] and rows["onnxruntime"]["usable"]
    text = CliRunner().invoke(app, ["doctor"])
    assert text.exit_code == 0 and "torch " in text.stdout and "TensorRT" in text.stdout
    for key in BACKENDS:
        assert key in text.stdout


@needs_no_cuda
@needs_no_trt
def test_doctor_says_why_gpu_backends_cannot_run_here():
    rows = {row["backend"]: row for row in json.loads(CliRunner().invoke(app, ["doctor", "--json"]).stdout)["backends"]}
    for key in ("pytorch-cuda", "pytorch-cuda-fp16", "pytorch-cuda-graph-fp16", "torchscript-cuda"):
        assert not rows[key]["usable"] and rows[key]["reason"].startswith("no CUDA device")
    for key in ("tensorrt", "tensorrt-fp16", "tensorrt-int8", "tensorrt-fp16-graph"):
        assert rows[key]["reason"].startswith("TensorRT not installed") and "no CUDA device" in rows[key]["reason"]
    ort = rows["onnxruntime-cuda"]["reason"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert ort.startswith("onnxruntime-gpu not installed")
    assert "onnxruntime-gpu" in rows["onnxruntime-trt"]["reason"] or "TensorRT" in rows["onnxruntime-trt"]["reason"]


@needs_no_trt
def test_build_engine_without_tensorrt_exits_2_with_one_line(tiny_export):
    r = CliRunner().invoke(app, ["build-engine", str(tiny_export / "model.onnx"), "--batch", "1:8:32"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in r.output
    assert err.startswith("error: building a TensorRT engine needs TensorRT and a CUDA GPU: TensorRT not installed")
    assert not (tiny_export / "model.engine").exists()


def test_build_engine_checks_arguments_before_anything_else(tiny_export, tmp_path):
    cases = [([str(tmp_path / "missing.onnx")], "missing.onnx: no such ONNX file"),
             ([str(tiny_export / "model.onnx"), "--batch", "8:2:32"], "--batch '8:2:32': expected MIN:OPT:MAX"),
             ([str(tiny_export / "model.onnx"), "--batch", "1:x:4"], "--batch '1:x:4': expected MIN:OPT:MAX")]
    for args, message in cases:
        r = CliRunner().invoke(app, ["build-engine", *args])
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.output)


@needs_no_trt
def test_export_format_tensorrt_without_tensorrt_exits_2_before_writing(tiny_run, tmp_path):
    out = tmp_path / "export"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx,tensorrt", "--out", str(out)])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: --format tensorrt: TensorRT not installed")
    assert not out.exists()  # failed at once: nothing exported
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "trt", "--out", str(out)])
    assert r.exit_code == 2 and "--format tensorrt" in r.stderr  # the alias resolves to the same row


@needs_no_trt
def test_bench_shows_unavailable_gpu_backends_as_skipped_with_reason(tiny_export, tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--backends", "pytorch,tensorrt,onnxruntime-cuda",
                                 "--batch-sizes", "1", "--warmup", "0", "--iterations", "2", "--json", str(out),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = {row["backend"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["pytorch"]["status"] == "ok"
    assert rows["tensorrt"]["status"] == "skipped" and rows["tensorrt"]["reason"].startswith("TensorRT not installed")
    assert rows["onnxruntime-cuda"]["status"] == "skipped" and rows["onnxruntime-cuda"]["reason"]
    assert "skipped" in r.stdout and "TensorRT not installed" in r.stdout


@needs_no_cuda
def test_default_backends_here_are_the_cpu_ones_and_cuda_runners_refuse_with_reason(tiny_run):
    assert {b.device for b in parse_backends(None)} == {"cpu"}
    assert {b.key for b in parse_backends("pytorch,pytorch-cuda")} == {"pytorch", "pytorch-cuda"}
    from fuse_export.compare.gpu_timing import check_mode
    from fuse_export.runners.cuda_runners import TorchCudaRunner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    runner = TorchCudaRunner(tiny_run.best, pre, precision="fp16")  # constructing imports nothing, needs no GPU
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        runner.activate()
    assert check_mode("device") == "device"
    with pytest.raises(ValueError, match="device, end-to-end"):
        check_mode("wall")


def test_batchnorm_folding_for_the_cuda_runners_is_exact(tiny_run):
    import copy

    import torch

    from fuse_export.model.fused import ExportView
    from fuse_export.runners.cuda_runners import fold_batchnorm
    from fuse_export.training.checkpoint import load_model

    model = load_model(tiny_run.best).model  # trained: running statistics are not the identity
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 20  # every BatchNorm2d of ResNet-18, downsample branches included
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(6, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(ExportView(model)(x), ExportView(folded)(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
