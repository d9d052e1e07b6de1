"""pt2 (torch.export + AOTInductor) on CPU: compile time, and batch-1 latency against eager and ONNX Runtime.

    python benchmarks/pt2_latency.py --sizes 40,224 --threads 2

The fused model is built with random weights (latency does not depend on them). Each size is exported
once to ONNX and twice to pt2 (dynamic batch, as `fuse-export export --format pt2` writes it, and
`--static-batch --batch 1`), compiling into an empty Inductor cache so the compile time is a cold one.
Latency: batch 1, host wall clock per call, median over rounds in which the backends take turns, so a
load change on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fuse_export.compare.timing import measure
from fuse_export.contract import IO_CONTRACT, Preprocessing
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.exporters.to_onnx import export_onnx
from fuse_export.exporters.to_pt2 import export_pt2, load_pt2
from fuse_export.model.fused import ExportView, FusedFER, ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="40,224", help="comma-separated input sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="timed calls per backend per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    view = ExportView(FusedFER(ModelConfig(num_classes=7)).eval()).eval()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} logical CPUs")
    print("| size | backend | compile s | batch-1 median ms | vs eager |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        pre = Preprocessing(image_size=size)
        meta = artifact_metadata(pre)
        example = torch.randn(2, 3, size, size)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            export_onnx(view, example, tmp_path / "model.onnx", IO_CONTRACT, meta)
            compile_s = {}
            for label, static, ex in (("pt2 dynamic batch", False, example), ("pt2 static batch 1", True, example[:1])):
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / f"cache-{static}")  # a cold compile
                t0 = time.perf_counter()
                export_pt2(view, ex, tmp_path / f"{static}.pt2", IO_CONTRACT, meta, static_batch=static)
                compile_s[label] = time.perf_counter() - t0
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(tmp_path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            dyn, _ = load_pt2(tmp_path / "False.pt2")
            stat, _ = load_pt2(tmp_path / "True.pt2")
            x = torch.randn(1, 3, size, size)
            xn = x.numpy()
            fns = {"pytorch eager": lambda: view(x), "onnxruntime": lambda: sess.run(None, {"image": xn}),
                   "pt2 dynamic batch": lambda: dyn(x), "pt2 static batch 1": lambda: stat(x)}
            medians: dict[str, list[float]] = {k: [] for k in fns}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    for name, fn in fns.items():
                        medians[name].append(measure(fn, warmup=3, iterations=args.iterations).median_ms)
            eager = float(np.median(medians["pytorch eager"]))
            for name, ms in medians.items():
                m = float(np.median(ms))
                c = f"{compile_s[name]:.1f}" if name in compile_s else "-"
                print(f"| {size} | {name} | {c} | {m:.2f} | {m / eager:.2f} |", flush=True)


if __name__ == "__main__":
    main()
