"""Honest GPU timing: CUDA events around each call after a warm-up, median/p90/p99, and a record of what
was timed.

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

import time

import numpy as np

from fuse_export.compare.timing import LatencyStats, summarize
from fuse_export.runners.cuda_base import CudaRunner, require_cuda

TIMING_MODES = {
    "device": "device-only: CUDA events around the model on the current stream; input and outputs resident in "
              "GPU memory; synchronized after each call",
    "end-to-end": "end-to-end: CUDA events around H2D from pinned memory + model + D2H of every output to pinned "
                  "memory; synchronized after each call",
}


def check_mode(mode: str) -> str:
    if mode not in TIMING_MODES:
        raise ValueError(f"timing mode {mode!r}: choose from {', '.join(TIMING_MODES)}")
    return mode


def measure_cuda(runner: CudaRunner, x: np.ndarray, warmup: int = 20, iterations: int = 100,
                 mode: str = "device") -> LatencyStats:
    """Time `runner.run_device` on the batch `x` (host array in the runner's input contract)."""
    import torch

    require_cuda()
    check_mode(mode)
    stream = torch.cuda.current_stream()
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

    for _ in range(warmup):  # compiles, autotunes, captures graphs, fills caches
        step()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    wall = []
    for start, end in zip(starts, ends):
        t0 = time.perf_counter()
        start.record(stream)
        step()
        end.record(stream)
        end.synchronize()
        wall.append(time.perf_counter() - t0)
    samples_s = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    stats = summarize(samples_s, warmup)
    stats.timed = f"{TIMING_MODES[mode]} (host wall clock median {np.median(wall) * 1e3:.3f} ms)"
    return stats
