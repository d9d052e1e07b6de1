"""Honest host timing: warm-up, then per-call wall clock with perf_counter, reported as percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iterations: int
    warmup: int
    timed: str = "end-to-end host wall clock per call (inputs and outputs in host memory)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples_s: list[float], warmup: int) -> LatencyStats:
    ms = np.asarray(samples_s) * 1e3
    return LatencyStats(float(np.median(ms)), float(np.percentile(ms, 90)), float(np.percentile(ms, 99)),
                        float(ms.mean()), float(ms.min()), len(ms), warmup)


def measure(fn: Callable[[], Any], warmup: int = 5, iterations: int = 30) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then `iterations` times timed one by one."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples, warmup)
