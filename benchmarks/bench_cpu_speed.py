"""CPU speed targets of the foundation issue, measured side by side in one run (224x224, 2 threads).

1. ONNX Runtime batch-1 latency of the exported fused model <= 0.7x PyTorch eager's for the same model.
2. The fused graph costs <= 1.05x a bare torchvision ResNet-18 exported the same way (one backbone pass).

Variants are timed in interleaved rounds so that drift of a shared machine hits all of them alike; the
figure per variant is the median over every timed call of every round.

    python benchmarks/bench_cpu_speed.py [--rounds 6] [--iterations 15] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

from fuse_export.compare.report import machine_info
from fuse_export.contract import IO_CONTRACT, Preprocessing
from fuse_export.exporters.manifest import tool_versions
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.exporters.to_onnx import export_onnx
from fuse_export.exporters.to_torchscript import export_torchscript, load_torchscript
from fuse_export.model.fused import ExportView, FusedFER, ModelConfig


def export_bare_onnx(model: torch.nn.Module, path: Path, size: int) -> None:
    """A plain ResNet-18 through the same exporter settings (dynamo, opset 18, dynamic batch)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, 3, size, size),), str(path), dynamo=True, opset_version=18,
                          input_names=["image"], output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size
    pre = Preprocessing(image_size=size)
    fused = ExportView(FusedFER(ModelConfig(num_classes=7)).eval()).eval()
    bare = torchvision.models.resnet18(num_classes=7).eval()
    tmp = Path(tempfile.mkdtemp(prefix="fuse-bench-"))
    example = torch.randn(2, 3, size, size)
    export_onnx(fused, example, tmp / "fused.onnx", IO_CONTRACT, artifact_metadata(pre))
    export_bare_onnx(bare, tmp / "bare.onnx", size)
    export_torchscript(fused, example, tmp / "fused.torchscript", {})
    ts_fused, _ = load_torchscript(tmp / "fused.torchscript")
    s_fused, s_bare = ort_session(tmp / "fused.onnx", args.threads), ort_session(tmp / "bare.onnx", args.threads)

    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    variants = {
        "eager fused": lambda: fused(xt),
        "eager bare resnet18": lambda: bare(xt),
        "torchscript fused": lambda: ts_fused(xt),
        "onnxruntime fused": lambda: s_fused.run(None, {"image": x}),
        "onnxruntime bare resnet18": lambda: s_bare.run(None, {"image": x}),
    }
    import time

    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up every variant once before the rounds
            for _ in range(3):
                fn()
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(args.iterations):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    ratios = {
        "onnxruntime_fused / eager_fused (target <= 0.70)": med["onnxruntime fused"] / med["eager fused"],
        "onnxruntime_fused / onnxruntime_bare (target <= 1.05)": med["onnxruntime fused"] / med["onnxruntime bare resnet18"],
        "eager_fused / eager_bare": med["eager fused"] / med["eager bare resnet18"],
        "torchscript_fused / eager_fused": med["torchscript fused"] / med["eager fused"],
    }
    print(f"batch 1, {size}x{size}, {args.threads} threads, {args.rounds} rounds x {args.iterations} calls per variant")
    print(f"{'variant':<28} {'median ms':>10} {'p90 ms':>8}")
    for k, v in samples.items():
        print(f"{k:<28} {med[k]:>10.2f} {np.percentile(v, 90):>8.2f}")
    for k, v in ratios.items():
        print(f"{k:<58} {v:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"median_ms": med, "ratios": ratios, "machine": machine_info(),
                                         "versions": tool_versions(), "args": vars(args) | {"json": str(args.json)}},
                                        indent=2))


if __name__ == "__main__":
    main()
