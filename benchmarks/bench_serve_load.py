"""What bench_serve.py measures around the server: the in-process runner, the machine, others' CPU use."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- what else runs on the machine -------------------------------------------------------------------------

def _stat_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by `root` and its living descendants (the server: tritonserver and its stubs)."""
    tick, kids, own = os.sysconf("SC_CLK_TCK"), {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            kids.setdefault(int(f[1]), []).append(int(d.name))
            own[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += own.get(p, 0.0)
        todo += kids.get(p, [])
    return total


class Others:
    """Cores used by every process but this benchmark (and its threads) and the server's process tree."""

    def __init__(self, *server_pids: int) -> None:
        self.server_pids = server_pids

    def _ours(self) -> float:
        return time.process_time() + sum(tree_cpu_s(p) for p in self.server_pids)

    def __enter__(self) -> Others:
        self._t, self._busy, self._ours0 = time.perf_counter(), _stat_busy_s(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        # A server process that exited inside the phase takes its CPU with it: floor at zero.
        self.cores = max(0.0, (_stat_busy_s() - self._busy) - (self._ours() - self._ours0)) / max(wall, 1e-9)


def machine() -> dict:
    from fuse_export.cpuinfo import cpu_features

    cpu = cpu_features()
    versions = {}
    for pkg in ("onnxruntime", "nvidia-pytriton", "tritonclient", "numpy"):
        try:
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
        except Exception:
            versions[pkg] = None
    return {"cpu": cpu.to_dict(), "summary": cpu.summary(), "python": platform.python_version(), "versions": versions}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- the in-process runner ------------------------------------------------------------------------------------

@dataclass
class InProcess:
    """The runner the server runs (same backend, same threads), called directly: no server, no serialization."""

    runner: object
    size: int

    def images(self, batch: int, seed: int = 0) -> np.ndarray:
        """A batch in the runner's input contract: normalized float32 NCHW, or uint8 NHWC pixels where the
        export embeds its preprocessing."""
        (spec,) = self.runner.contract.inputs
        shape = spec.shape(batch, 7, self.size)
        rng = np.random.default_rng(seed)
        if np.dtype(spec.dtype) == np.uint8:
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.normal(size=shape).astype(np.float32)

    @property
    def triton_dtype(self) -> str:
        return {"float32": "FP32", "uint8": "UINT8"}[str(np.dtype(self.runner.contract.inputs[0].dtype))]

    def throughput(self, batch: int, seconds: float) -> float:
        x = self.images(batch)
        self.runner.infer({"image": x})  # this shape's first call (memory planning) is not a steady-state one
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.runner.infer({"image": x})
            n += batch
        return n / (time.perf_counter() - t0)


def serialization_ms(ip: InProcess, n: int = 200) -> float:
    """The client's cost of turning one [1,3,H,W] float32 array into a gRPC request (median)."""
    import tritonclient.grpc as g
    from tritonclient.grpc import _utils

    x = ip.images(1)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        inp = g.InferInput("image", list(x.shape), ip.triton_dtype)
        inp.set_data_from_numpy(x)
        _utils._get_inference_request("fer", [inp], "", "", None, 0, False, False, 0, None, None).SerializeToString()
        times.append(time.perf_counter() - t0)
    return 1e3 * pct(times, 50)
