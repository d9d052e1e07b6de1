"""CUDA backends through the same bench, parity and timing machinery as the CPU ones (skipped without CUDA)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from fuse_export.compare.bench import eval_inputs, run_all, run_bench
from fuse_export.compare.parity import compare_outputs
from fuse_export.runners.registry import BACKENDS

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).parents[1]

TORCH_KEYS = ["pytorch-cuda", "pytorch-cuda-fp16", "pytorch-cuda-bf16", "pytorch-cuda-graph-fp16", "torchscript-cuda",
              "onnxruntime-cuda"]


def _usable(key: str) -> None:
    ok, why = BACKENDS[key].available()
    if not ok:
        pytest.skip(f"{key}: {why}")


@pytest.mark.parametrize("key", TORCH_KEYS)
def test_cuda_backend_in_bench_with_parity_and_cuda_event_timing(tiny_export, key):
    _usable(key)
    report = run_bench(tiny_export, [BACKENDS["pytorch"], BACKENDS[key]], [1, 8], warmup=3, iterations=10,
                       progress=False)
    rows = [r for r in report.rows if r.backend == key and r.title == BACKENDS[key].title]
    assert [r.status for r in rows] == ["ok", "ok"], [(r.status, r.reason) for r in rows]
    for r in rows:
        assert r.parity, r.parity.explain()
        assert r.latency.timed.startswith("end-to-end: CUDA events") and 0 < r.latency.median_ms <= r.latency.p99_ms


@pytest.mark.slow
def test_torch_compile_reduce_overhead_matches_eager(tiny_export):
    _usable("pytorch-compile-fp16")
    report = run_bench(tiny_export, [BACKENDS["pytorch"], BACKENDS["pytorch-compile-fp16"]], [1], warmup=3,
                       iterations=10, progress=False)
    row = report.rows[-1]
    assert row.status == "ok" and row.parity, (row.reason, row.parity and row.parity.explain())


def test_cuda_graph_replay_equals_eager_cuda_across_batch_sizes(tiny_export, tiny_run):
    from fuse_export.runners.cuda_runners import TorchCudaRunner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    x = eval_inputs(pre, None, 40).float_nchw
    with TorchCudaRunner(tiny_run.best, pre, precision="fp16") as eager, \
            TorchCudaRunner(tiny_run.best, pre, precision="fp16", mode="graph") as graph:
        for n in (1, 8, 3, 8, 1):  # shapes repeat: replays of earlier captures must still be right
            a = eager.infer({"image": x[:n]})
            b = graph.infer({"image": x[:n]})
            for name in a:
                np.testing.assert_allclose(a[name], b[name], atol=1e-3)
        assert len(graph._graphs) == 3


def test_gpu_timing_modes_are_recorded(tiny_run):
    from fuse_export.compare.gpu_timing import TIMING_MODES, measure_cuda
    from fuse_export.runners.cuda_runners import TorchCudaRunner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    x = eval_inputs(pre, None, 4).float_nchw
    with TorchCudaRunner(tiny_run.best, pre, precision="fp16", mode="graph") as runner:
        dev = measure_cuda(runner, x, warmup=3, iterations=20, mode="device")
        e2e = measure_cuda(runner, x, warmup=3, iterations=20, mode="end-to-end")
    assert dev.timed.startswith(TIMING_MODES["device"]) and e2e.timed.startswith(TIMING_MODES["end-to-end"])
    assert 0 < dev.median_ms <= dev.p90_ms <= dev.p99_ms and dev.iterations == 20 and dev.warmup == 3
    assert e2e.median_ms > 0


def test_fp32_cuda_matches_cpu_eager_to_1e4_without_tf32(tiny_run):
    import torch

    from fuse_export.runners.cuda_runners import TorchCudaRunner
    from fuse_export.runners.torch_runners import EagerRunner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    x = eval_inputs(pre, None, 64).float_nchw
    with EagerRunner(tiny_run.best, pre) as cpu:
        ref = run_all(cpu, x)
    tf32_before = torch.backends.cudnn.allow_tf32
    with TorchCudaRunner(tiny_run.best, pre) as gpu:
        assert torch.backends.cudnn.allow_tf32 is False
        got = run_all(gpu, x)
    assert torch.backends.cudnn.allow_tf32 == tf32_before  # restored on deactivate
    parity = compare_outputs("pytorch-cuda", ref, got, "fp32")
    assert parity and parity.top1_agreement == 1.0, parity.explain()


def test_settings_are_restored_when_loading_fails_and_cuda_needs_no_index(tmp_path, tiny_run):
    import torch

    from fuse_export.runners.cuda_runners import TorchCudaRunner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    from fuse_export.errors import CheckpointError

    with pytest.raises(CheckpointError):  # _numerics() has switched TF32 off before the checkpoint fails to load
        TorchCudaRunner(tmp_path / "missing.pt", pre).activate()
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.benchmark) == before
    with TorchCudaRunner(tiny_run.best, pre, device="cuda") as runner:  # "cuda" without an index
        assert runner.device.index == torch.cuda.current_device()
        assert runner.numerics()["tf32_conv"] is False and runner.numerics()["layout"] == "channels_last"


def test_gpu_check_backend_job_checks_parity_at_every_timed_shape(tmp_path, tiny_run):
    """The GPU check's backend job, in-process, on a CUDA-graph runner: a graph per timed batch size, each
    compared with the eager fp32 CPU reference, then interleaved repeats."""
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package
    from benchmarks.gpu.jobs import State, time_backend
    from fuse_export.training.checkpoint import load_model

    _usable("pytorch-cuda-graph-fp16")
    pre = load_model(tiny_run.best).preprocessing
    x = eval_inputs(pre, None, 16).float_nchw
    with BACKENDS["pytorch"].factory(None, tiny_run.best, pre, None, False) as ref:
        reference = run_all(ref, x)
    np.savez(tmp_path / "parity.npz", x=x, **{f"ref_{k}": v for k, v in reference.items()})
    rows: list = []
    spec = {"backend": "pytorch-cuda-graph-fp16", "label": "graph", "preprocessing": pre.to_dict(),
            "parity_file": str(tmp_path / "parity.npz"), "checkpoint": str(tiny_run.best), "work": str(tmp_path),
            "batch_sizes": [1, 16], "repeats": 3, "min_calls": 30, "warmup": 2, "timing_mode": "device"}
    time_backend(spec, rows.extend, State(tmp_path / "state.json"))
    assert [r["batch"] for r in rows] == [1, 16]
    for r in rows:
        assert r["parity"]["passed"] and r["parity"]["samples"] == 16, r["parity"]
        assert r["latency"]["calls"] == 30 and len(r["latency"]["block_medians_ms"]) == 3
        assert r["latency"]["timed"].startswith("device-only") and r["numerics"]["mode"] == "graph"


def test_plain_resnet18_baseline_runs_with_its_numerics_recorded(tiny_run):
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu.baseline import VARIANTS, PlainResNet18Runner
    from fuse_export.training.checkpoint import load_model

    pre = load_model(tiny_run.best).preprocessing
    x = torch.randn(4, 3, pre.image_size, pre.image_size, device="cuda")
    for _label, precision, channels_last, mode in VARIANTS:
        with PlainResNet18Runner(pre, precision=precision, channels_last=channels_last, mode=mode) as r:
            (logits,) = r.run_device(x)
            assert logits.shape == (4, pre.num_classes) and logits.dtype == torch.float32
            n = r.numerics()
            assert (n["precision"], n["mode"], n["batchnorm_folded"]) == (precision, mode, False)
