"""Training throughput of the fused network against a plain torchvision ResNet-18 loop, in the same run, plus
the data loader's images/s alone (issue 6; target: fused >= 0.9x plain).

- fused: the project's own training step (`train_one_epoch`: both heads, SCN's rank regularization and
  relabeling, metric sums on the device) over the stage-1 network, as `fuse-export train` runs it;
- plain: torchvision `resnet18(num_classes=7)`, cross-entropy, the same optimizer, AMP, grad scaler and
  memory format;
- both read batches that already sit in GPU memory, so the ratio compares the training steps; timed as
  wall time over `steps` steps after warm-up, synchronized at both ends (pipelined throughput, not
  per-step latency), in interleaved rounds so drift hits both alike; the figure is the median round;
- loader: synthetic uint8 images (FER-2013's 48x48 by default) through the real train transforms, the
  real train DataLoader (seeded per-sample augmentation, workers, pinned memory), no model.

    python benchmarks/gpu_train_throughput.py                    # H200 target: 224x224, batch 256, bf16
    python benchmarks/gpu_train_throughput.py --device cpu --batch 8 --steps 3 --image-size 64  # smoke

`measure_train_throughput(...)` returns a JSON-ready dict; benchmarks/gpu_check.py runs this script in a
subprocess of its own (`--json FILE`) and puts the result in its report.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split
from fuse_export.data.transforms import train_transform
from fuse_export.model.fused import FusedFER, ModelConfig
from fuse_export.runners.cuda_base import cuda_device
from fuse_export.training.build import make_optimizer, training_network
from fuse_export.training.distributed import DistContext
from fuse_export.training.loaders import train_loader
from fuse_export.training.loop import LabelState, train_one_epoch
from fuse_export.training.recipe import Recipe
from fuse_export.training.speed import batch_to, configure_backends, make_precision, maybe_compile, to_memory_format

TARGET_RATIO = 0.9
NUM_CLASSES = 7


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _recipe(batch: int, image_size: int, amp: str, channels_last: bool, compile: bool) -> Recipe:
    # Relabeling on from the first epoch: the fused step is timed with all of SCN's per-step work.
    return Recipe().replace(data={"image_size": image_size}, scn={"relabel_epoch": 1},
                            train={"batch_size": batch, "amp": amp, "channels_last": channels_last,
                                   "compile": compile})


class FusedBench:
    """The project's training step over device-resident batches (the loop reads a list as its loader)."""

    def __init__(self, recipe: Recipe, ctx: DistContext, x: torch.Tensor, y: torch.Tensor) -> None:
        self.recipe, self.ctx = recipe, ctx
        self.model = FusedFER(ModelConfig(NUM_CLASSES)).to(ctx.device)
        self.net = training_network(self.model, recipe, ctx)
        self.optimizer, _ = make_optimizer(self.model, recipe)
        self.precision = make_precision(recipe.train.amp, ctx.device)
        n = x.shape[0]
        self.labels = LabelState(y.cpu().clone(), y.cpu().clone())
        self.batch = (batch_to(x, ctx.device, recipe.train.channels_last), torch.arange(n))

    def run(self, steps: int) -> float:
        """images/s over `steps` steps (the loop synchronizes the device before it stops its clock)."""
        stats = train_one_epoch(self.net, self.model, [self.batch] * steps, self.labels, self.optimizer,
                                self.precision, self.recipe.scn, self.recipe.train, 1, self.ctx)
        # Keep the labels fixed across rounds: relabeling would otherwise change what later rounds compute.
        self.labels.labels.copy_(self.labels.original)
        return stats.images_per_s


class PlainBench:
    """A plain torchvision ResNet-18 training loop with the same optimizer, AMP, scaler and memory format."""

    def __init__(self, recipe: Recipe, ctx: DistContext, x: torch.Tensor, y: torch.Tensor) -> None:
        t = recipe.train
        self.device, self.channels_last = ctx.device, t.channels_last
        model = torchvision.models.resnet18(num_classes=NUM_CLASSES).to(ctx.device)
        self.model = to_memory_format(model, t.channels_last)
        self.net: nn.Module = maybe_compile(self.model, t.compile)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.precision = make_precision(t.amp, ctx.device)
        self.x, self.y = batch_to(x, ctx.device, t.channels_last), y.to(ctx.device)

    def run(self, steps: int) -> float:
        self.model.train()
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            with self.precision.autocast():
                loss = nn.functional.cross_entropy(self.net(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward_step(loss, self.optimizer)
        _sync(self.device)
        return steps * self.x.shape[0] / (time.perf_counter() - start)


def measure_loader(image_size: int, batch: int, workers: int, batches: int, device: torch.device,
                   source_size: int = 48) -> dict[str, Any]:
    """images/s of the real train DataLoader over synthetic uint8 images (no model), after worker start-up."""
    warmup = 2
    n = batch * (batches + warmup)
    rng = np.random.default_rng(0)
    split = Split(labels=rng.integers(0, NUM_CLASSES, n), images=rng.integers(0, 256, (n, source_size, source_size),
                                                                             dtype=np.uint8))
    loader = train_loader(split, train_transform(Preprocessing(image_size=image_size)), batch,
                          DistContext(device=device), seed=0, num_workers=workers)
    loader.sampler.set_epoch(1)  # type: ignore[union-attr]
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in it)
    seconds = time.perf_counter() - start
    del it, loader
    return {"images_per_s": count / seconds, "images": count, "workers": workers, "source_size": source_size,
            "pin_memory": device.type == "cuda"}


def measure_train_throughput(device: str = "cuda", batch: int = 256, image_size: int = 224, steps: int = 30,
                             warmup: int = 10, rounds: int = 3, amp: str = "bf16", channels_last: bool = True,
                             compile: bool = False, loader_workers: int = 8, loader_batches: int = 20,
                             source_size: int = 48) -> dict[str, Any]:
    """Fused vs plain ResNet-18 training images/s (median of interleaved rounds), and the loader's images/s."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda":
        # set_device() refuses a CUDA device without an index ("cuda"): pin it to the current one first.
        dev = cuda_device(str(dev))
        torch.cuda.set_device(dev)
    configure_backends(dev, deterministic=False)  # cudnn.benchmark on, as in training
    torch.manual_seed(0)
    ctx = DistContext(device=dev)
    recipe = _recipe(batch, image_size, amp, channels_last, compile)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    benches = {"fused": FusedBench(recipe, ctx, x, y), "plain_resnet18": PlainBench(recipe, ctx, x, y)}
    for bench in benches.values():  # cudnn autotuning, torch.compile, allocator growth
        bench.run(warmup)
    rates: dict[str, list[float]] = {k: [] for k in benches}
    for r in range(rounds):
        order = list(benches) if r % 2 == 0 else list(reversed(benches))
        for name in order:
            rates[name].append(benches[name].run(steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del benches
    loader = measure_loader(image_size, batch, loader_workers, loader_batches, dev, source_size)
    ratio = med["fused"] / med["plain_resnet18"]
    return {
        "fused_images_per_s": med["fused"], "plain_resnet18_images_per_s": med["plain_resnet18"],
        "ratio": ratio, "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        "loader": loader, "loader_over_fused": loader["images_per_s"] / med["fused"],
        "rounds": rates, "peak_gpu_memory_gib": peak,
        "settings": {"device": str(dev), "batch": batch, "image_size": image_size, "steps": steps,
                     "warmup": warmup, "rounds": rounds, "amp": amp, "channels_last": channels_last,
                     "compile": compile, "optimizer": "adam"},
        "timed": "wall time of `steps` training steps on device-resident batches, device synchronized at both "
                 "ends; median over interleaved rounds",
        "machine": {"device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
                    or platform.machine(), "torch": torch.__version__, "torchvision": torchvision.__version__,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
                    "python": platform.python_version()},
    }


def format_result(res: dict[str, Any]) -> str:
    s = res["settings"]
    size = f"{s['image_size']}x{s['image_size']}"
    lines = [f"{res['machine']['device_name']} ({s['device']}): {size}, batch {s['batch']}, amp {s['amp']}, "
             f"channels_last {s['channels_last']}, compile {s['compile']}, {s['rounds']} rounds x {s['steps']} steps",
             f"{'fused network (train_one_epoch)':<36}{res['fused_images_per_s']:>10.1f} img/s",
             f"{'plain torchvision resnet18':<36}{res['plain_resnet18_images_per_s']:>10.1f} img/s",
             f"{'fused / plain (target >= 0.90)':<36}{res['ratio']:>10.3f}  "
             f"{'meets target' if res['meets_target'] else 'BELOW TARGET'}",
             f"{'data loader alone':<36}{res['loader']['images_per_s']:>10.1f} img/s  "
             f"({res['loader']['workers']} workers, {res['loader']['source_size']}px source; "
             f"{res['loader_over_fused']:.2f}x the fused step)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--loader-workers", type=int, default=8)
    ap.add_argument("--loader-batches", type=int, default=20)
    ap.add_argument("--source-size", type=int, default=48, help="side of the synthetic source images (FER: 48)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args()
    res = measure_train_throughput(a.device, a.batch, a.image_size, a.steps, a.warmup, a.rounds, a.amp,
                                   a.channels_last, a.compile, a.loader_workers, a.loader_batches, a.source_size)
    print(format_result(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
