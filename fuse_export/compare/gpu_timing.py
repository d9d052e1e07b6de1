"""Honest GPU timing: CUDA events around each call after a warm-up, median/p90/p99, and a record of what
was timed; plus interleaved repeats (several timed blocks per row, rows taking turns) for reported figures.

Two modes, chosen by the caller and written into the stats (`LatencyStats.timed`):

* `device`: the input already sits in GPU memory and the outputs stay there; the events bracket the
  model's work on the current stream (including any launch gaps the host leaves, which is what batch-1
  latency is made of).
* `end-to-end`: the events also bracket the host-to-device copy of the input from pinned host memory and
  the device-to-host copies of every output into pinned host memory.

Each call is synchronized before the next starts, so a sample is one request's latency, not a pipelined
throughput figure; images/s is then batch / median latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fuse_export.compare.timing import LatencyStats, summarize
from fuse_export.runners.cuda_base import CudaRunner, require_cuda

TIMING_MODES = {
    "device": "device-only: CUDA events around the model on the current stream; input and outputs resident in "
              "GPU memory; synchronized after each call",
    "end-to-end": "end-to-end: CUDA events around H2D from pinned memory + model + D2H of every output to pinned "
                  "memory; synchronized after each call",
}
HOST_TIMING = "host wall clock (perf_counter) around each call; inputs and outputs in host memory"


def check_mode(mode: str) -> str:
    if mode not in TIMING_MODES:
        raise ValueError(f"timing mode {mode!r}: choose from {', '.join(TIMING_MODES)}")
    return mode


class Sampler:
    """Times one call shape: `run(n)` calls it n times untimed, `sample(n)` returns n per-call times (s)."""

    timed = HOST_TIMING

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def run(self, n: int) -> None:
        for _ in range(n):
            self.fn()

    def sample(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.fn()
            out.append(time.perf_counter() - t0)
        return out


class CudaSampler(Sampler):
    """`runner.run_device` on the batch `x` (host array in the runner's input contract), timed by CUDA events."""

    def __init__(self, runner: CudaRunner, x: np.ndarray, mode: str = "device") -> None:
        import torch

        require_cuda()
        self.timed = TIMING_MODES[check_mode(mode)]
        self.stream = torch.cuda.current_stream()
        host_outs: list[torch.Tensor] = []
        if mode == "device":
            x_dev = torch.from_numpy(np.ascontiguousarray(x)).to(runner.device)

            def step() -> None:
                runner.run_device(x_dev)
        else:
            x_pin = torch.from_numpy(np.ascontiguousarray(x)).pin_memory()
            x_dev = torch.empty(x_pin.shape, dtype=x_pin.dtype, device=runner.device)

            def step() -> None:
                x_dev.copy_(x_pin, non_blocking=True)
                outs = runner.run_device(x_dev)
                if not host_outs:  # pinned destinations, allocated once
                    host_outs.extend(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs)
                for h, o in zip(host_outs, outs):
                    h.copy_(o, non_blocking=True)
        super().__init__(step)
        self.wall: list[float] = []

    def run(self, n: int) -> None:
        import torch

        super().run(n)
        torch.cuda.synchronize()

    def sample(self, n: int) -> list[float]:
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for start, end in zip(starts, ends):
            t0 = time.perf_counter()
            start.record(self.stream)
            self.fn()
            end.record(self.stream)
            end.synchronize()
            self.wall.append(time.perf_counter() - t0)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def measure_cuda(runner: CudaRunner, x: np.ndarray, warmup: int = 20, iterations: int = 100,
                 mode: str = "device") -> LatencyStats:
    """Time `runner.run_device` on the batch `x` (host array in the runner's input contract), one block."""
    sampler = CudaSampler(runner, x, mode)
    sampler.run(warmup)  # compiles, autotunes, captures graphs, fills caches
    stats = summarize(sampler.sample(iterations), warmup)
    stats.timed = f"{sampler.timed} (host wall clock median {np.median(sampler.wall) * 1e3:.3f} ms)"
    return stats


@dataclass
class RepeatedStats:
    """One row timed in `repeats` blocks that took turns with the other rows: the median of the blocks'
    medians (robust to a block hit by drift), and p90/p99 over every call of every block."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    block_medians_ms: list[float]
    calls: int
    repeats: int
    warmup_per_block: int
    timed: str = HOST_TIMING
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved(samplers: dict[Any, Sampler], repeats: int = 3, min_calls: int = 200,
                warmup: int = 5) -> dict[Any, RepeatedStats]:
    """Time every sampler in `repeats` blocks of ceil(min_calls / repeats) calls, in turns (the order reversed
    every other round, so drift and thermal state hit all rows alike); `warmup` untimed calls open each block."""
    if repeats < 1 or min_calls < 1:
        raise ValueError(f"repeats {repeats} and min_calls {min_calls} must be >= 1")
    per_block = math.ceil(min_calls / repeats)
    samples: dict[Any, list[list[float]]] = {k: [] for k in samplers}
    keys = list(samplers)
    for r in range(repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:
            samplers[key].run(warmup)
            samples[key].append(samplers[key].sample(per_block))
    out = {}
    for key, blocks in samples.items():
        ms = np.concatenate([np.asarray(b) for b in blocks]) * 1e3
        medians = [float(np.median(b) * 1e3) for b in blocks]
        out[key] = RepeatedStats(float(np.median(medians)), float(np.percentile(ms, 90)), float(np.percentile(ms, 99)),
                                 float(ms.mean()), float(ms.min()), medians, int(ms.size), repeats, warmup,
                                 samplers[key].timed)
    return out
