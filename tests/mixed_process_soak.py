"""One long-lived process mixing torch, ONNX Runtime and OpenVINO, as `bench`, `serve` and `load()` do.

Run by tests/test_openvino.py in a child process under the debug allocators (PYTHONMALLOC=debug,
MALLOC_CHECK_=3, MALLOC_PERTURB_), so native memory corruption surfaces as a crash or an abort with the
allocator's message instead of passing silently. Each loop: torch training steps (autograd, OpenMP pool),
ONNX -> IR conversion, the bf16 runner's graph cut on a model read and dropped at once, every OpenVINO precision
through the registry's runners (bf16 and PyTorch bf16 where the CPU has it; elsewhere the bf16 runner's
trunk/heads split is still built and run, at the f32 hint), ONNX Runtime, TorchScript, eager fp32,
`fuse_export.bench` with the OpenVINO rows and `fuse_export.load()` predictions. Every array a runner returned
is kept with a private copy and compared at the end: an output aliasing runtime memory that was freed and
reused would change. (A fresh process like this one never reproduced the suite process's SIGSEGV of issue 27,
which a Core per runner activation caused; it guards the runners' own memory handling.)

    python tests/mixed_process_soak.py EXPORT_DIR CHECKPOINT CSV [--loops N]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def train_steps(checkpoint: Path, steps: int, size: int) -> None:
    """A few optimizer steps on the checkpoint's model: torch's autograd and OpenMP pool at work."""
    import torch

    from fuse_export.training.checkpoint import load_model

    model = load_model(checkpoint).model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 3, size, size, generator=gen)
        logits, probs, alpha = model(x)
        loss = logits.logsumexp(1).mean() + alpha.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--loops", type=int, default=3)
    args = ap.parse_args()

    import fuse_export as fx
    from fuse_export.contract import Preprocessing
    from fuse_export.cpuinfo import cpu_features
    from fuse_export.exporters.to_openvino import export_openvino, import_openvino, shared_core
    from fuse_export.runners import openvino_runner
    from fuse_export.runners.registry import BACKENDS

    manifest = json.loads((args.export / "manifest.json").read_text())
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    files = {a["backend"]: a["file"] for a in manifest["artifacts"]}
    native_bf16 = cpu_features().native_bf16
    if not native_bf16:  # reach the bf16 runner's graph surgery and two-stage run on any CPU
        openvino_runner.INFERENCE_PRECISION["bf16"] = "f32"
    runs = [("pytorch", None), ("onnxruntime", files["onnxruntime"]), ("openvino", files["openvino"]),
            ("openvino-int8", files["openvino-int8"]), ("openvino-bf16", files["openvino"])]
    runs += [("torchscript", files["torchscript"])] if "torchscript" in files else []
    runs += [("pytorch-bf16", None)] if native_bf16 else []
    bench_keys = ("pytorch", "onnxruntime", "openvino", "openvino-int8") + (
        ("openvino-bf16", "pytorch-bf16") if native_bf16 else ())
    rng = np.random.default_rng(0)
    kept: list[tuple[str, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        for loop in range(args.loops):
            train_steps(args.checkpoint, 3, pre.image_size)
            xml = Path(tmp) / f"loop{loop}.xml"
            export_openvino(args.export / files["onnxruntime"], xml, {"loop": loop})
            ov = import_openvino()  # the bf16 runner's cut, on a model read here and dropped at once
            if openvino_runner.split_after_pooling(ov, shared_core().read_model(str(xml))) is None:
                print("the converted IR has no global pooling to cut after")
                return 1
            for key, file in runs:
                runner = BACKENDS[key].factory(None if file is None else args.export / file, args.checkpoint, pre, 2,
                                               False)
                with runner:
                    for n in (1, 3, 16):
                        x = rng.standard_normal((n, 3, pre.image_size, pre.image_size)).astype(np.float32)
                        for name, out in runner.infer({"image": x}).items():
                            kept.append((f"loop {loop} {key} batch {n} {name}", out, out.copy()))
                del runner
                gc.collect()
            report = fx.bench(args.export, fx.BenchOptions(backends=bench_keys, batch_sizes=(1, 4), warmup=1,
                                                           iterations=2, min_time_s=0, rounds=1, threads=2),
                              progress=False)
            if not report.passed:
                print(f"loop {loop}: bench failed: {[r.reason for r in report.rows if r.status != 'ok']}")
                return 1
            with fx.load(args.export, backend="openvino", threads=2) as model:
                pixels = rng.integers(0, 256, (4, pre.image_size, pre.image_size, 3), dtype=np.uint8)
                got = model.predict_pixels(pixels)
                kept.append((f"loop {loop} load() probabilities", got.probabilities, got.probabilities.copy()))
            del report, model
            gc.collect()
            print(f"loop {loop}: ok ({len(kept)} outputs kept)", flush=True)
    changed = [name for name, out, copy in kept if not np.array_equal(out, copy, equal_nan=True)]
    if changed:
        print(f"{len(changed)} returned arrays changed after their runner closed (aliased runtime memory): "
              f"{changed[:5]}")
        return 1
    print(f"{args.loops} loops, {len(kept)} outputs unchanged: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
