"""Honest host timing: warm-up, then per-call wall clock with perf_counter, reported as percentiles; and the
bench's interleaved, adaptive schedule (rows take turns in rounds, each row measured for a minimum time)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

HOST_TIMED = "end-to-end host wall clock per call (inputs and outputs in host memory)"


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iterations: int
    warmup: int
    timed: str = HOST_TIMED
    rounds: int = 1  # interleaved rounds the iterations were spread over
    measured_s: float = 0.0  # total timed seconds (the adaptive count reaches at least the minimum time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples_s: list[float], warmup: int) -> LatencyStats:
    ms = np.asarray(samples_s) * 1e3
    return LatencyStats(float(np.median(ms)), float(np.percentile(ms, 90)), float(np.percentile(ms, 99)),
                        float(ms.mean()), float(ms.min()), len(ms), warmup, measured_s=float(ms.sum() / 1e3))


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


class SamplerLike(Protocol):
    """compare/gpu_timing.Sampler's interface: `run(n)` untimed calls, `sample(n)` per-call seconds."""

    timed: str

    def run(self, n: int) -> None: ...

    def sample(self, n: int) -> list[float]: ...


@dataclass(frozen=True)
class Schedule:
    """How the bench times its rows: `rounds` turns across all rows; in each, a row gets `warmup` untimed calls,
    then timed calls until it has at least min_iterations / rounds of them AND min_time_s / rounds seconds."""

    warmup: int = 5
    min_iterations: int = 30
    min_time_s: float = 1.0
    rounds: int = 3
    max_iterations: int = 1_000_000  # per row: a guard against a zero-cost call

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_iterations < 1 or self.min_time_s < 0 or self.warmup < 0:
            raise ValueError(f"invalid schedule {self}")


def _one_round(sampler: SamplerLike, schedule: Schedule) -> list[float]:
    """One row's timed calls of one round (the adaptive count: enough calls and enough time)."""
    need_n = math.ceil(schedule.min_iterations / schedule.rounds)
    need_s = schedule.min_time_s / schedule.rounds
    cap = max(need_n, schedule.max_iterations // schedule.rounds)
    out = sampler.sample(need_n)
    while sum(out) < need_s and len(out) < cap:
        per_call = max(float(np.mean(out)), 1e-7)
        more = min(cap - len(out), max(1, math.ceil((need_s - sum(out)) / per_call)))
        out += sampler.sample(more)
    return out


def interleaved_adaptive(samplers: dict[Any, SamplerLike], schedule: Schedule,
                         on_round: Callable[[int, Any], None] | None = None) -> dict[Any, LatencyStats]:
    """Time every sampler in `schedule.rounds` turns (order reversed every other round), so a noisy neighbour or
    a thermal drift hits every row alike rather than whichever row happened to run at that moment."""
    samples: dict[Any, list[float]] = {k: [] for k in samplers}
    keys = list(samplers)
    for r in range(schedule.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            if on_round is not None:
                on_round(r, key)
            samplers[key].run(schedule.warmup)
            samples[key] += _one_round(samplers[key], schedule)
    out = {}
    for key, s in samples.items():
        stats = summarize(s, schedule.warmup)
        stats.rounds, stats.timed = schedule.rounds, samplers[key].timed
        out[key] = stats
    return out
