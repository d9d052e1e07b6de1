"""Time loading a full-size FER-2013 CSV (35,887 rows: 28,709 Training, 3,589 PublicTest, 3,589 PrivateTest).

The file is generated (random pixels, Kaggle's header and Usage values, Kaggle's row grouping) because the
real one cannot be shipped; parsing cost depends on the row count and the number of pixel tokens, not on
the pixel values. Target: under 10 s on 2 CPU cores.

    python benchmarks/bench_fer2013_load.py [--repeat 3] [--keep PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fuse_export.data.fer2013 import load_fer2013_csv

COUNTS = {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}  # 35,887 rows, as in Kaggle's file
TARGET_S = 10.0


def write_full_size_csv(path: Path, seed: int = 0) -> int:
    """Write a 35,887-row fer2013.csv with random 48x48 pixels; returns the file size in bytes."""
    rng = np.random.default_rng(seed)
    tokens = np.array([str(i) for i in range(256)])
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("emotion,pixels,Usage\n")
        for usage, n in COUNTS.items():
            labels = rng.integers(0, 7, size=n)
            pixels = rng.integers(0, 256, size=(n, 48 * 48))
            fh.writelines(f"{label},{' '.join(tokens[row])},{usage}\n" for label, row in zip(labels.tolist(), pixels))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed loads (the best and all are printed)")
    parser.add_argument("--keep", type=Path, help="write the CSV here and keep it (default: a temporary file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "fer2013.csv"
        t0 = time.perf_counter()
        size = write_full_size_csv(path)
        print(f"generated {path} ({size / 1e6:.0f} MB, {sum(COUNTS.values()):,} rows) in {time.perf_counter() - t0:.1f} s")
        times, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            ds = load_fer2013_csv(path)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        counts = ds.counts()
        assert counts == {"train": 28_709, "val": 3_589, "test": 3_589}, counts
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        verdict = "PASS" if min(times) < TARGET_S else "FAIL"
        # On a shared machine wall time includes waiting for a core: CPU time and the load average say how much.
        load = f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "load average n/a"
        print(f"load_fer2013_csv: best {min(times):.2f} s wall ({min(cpu):.2f} s CPU), all "
              f"{', '.join(f'{t:.2f}' for t in times)} s ({cores} cores, {load}; target < {TARGET_S:.0f} s: {verdict}); "
              f"splits {counts}")


if __name__ == "__main__":
    main()
