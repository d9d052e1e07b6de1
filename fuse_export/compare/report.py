"""Bench reports for people (a rich table, a PNG plot) and for scripts (JSON with machine and version info, CSV)."""

from __future__ import annotations

import csv
import io
import os
import platform
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from fuse_export.compare.bench import BenchReport


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count()}
    from fuse_export.cpuinfo import cpu_features  # AVX2/AVX-512/VNNI/BF16/AMX: what decides CPU speed

    info["cpu_features"] = cpu_features().to_dict()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def table_console():
    """A console wide enough for the bench table even when stdout is a pipe or a CI log."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=170)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def bench_table(report: BenchReport) -> Table:
    table = Table(title=f"fuse-export bench: {report.folder}  (inputs: {report.inputs}; reference: {report.reference})")
    for col, justify in (("Backend", "left"), ("Status", "left"), ("Prec", "left"), ("Size MB", "right"),
                         ("Batch", "right"), ("p50 ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"),
                         ("Calls", "right"), ("img/s", "right"), ("max|Δp|", "right"), ("max|Δconf|", "right"),
                         ("top-1 agree", "right"), ("Accuracy", "right"), ("Note", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report.rows:
        status = r.status
        if r.parity is not None and not r.parity:
            status = "PARITY FAIL: " + ",".join(r.parity.failed_outputs())
        if r.status != "ok" or r.latency is None:
            # The reason in a column of its own (it used to fill Accuracy), as plain Text: an install hint such as
            # pip install 'fuse-export[openvino]' is not Rich markup, which would swallow the [openvino].
            table.add_row(r.title, status, r.precision, _fmt(r.size_mb, ".1f"), "-", "-", "-", "-", "-", "-", "-", "-",
                          "-", "-", Text(r.reason))
            continue
        lat, p = r.latency, r.parity
        table.add_row(
            r.title, status, r.precision, _fmt(r.size_mb, ".1f"), str(r.batch), f"{lat.median_ms:.2f}",
            f"{lat.p90_ms:.2f}", f"{lat.p99_ms:.2f}", str(lat.iterations), f"{r.images_per_s:.1f}",
            _fmt(p.max_abs_prob if p is not None else None, ".1e"),
            _fmt(p.max_abs_conf if p is not None else None, ".1e"),
            _fmt(p.top1_agreement * 100 if p is not None else None, ".2f") + ("%" if p is not None else ""),
            _fmt(r.accuracy * 100 if r.accuracy is not None else None, ".2f") + ("%" if r.accuracy is not None else ""),
            Text(r.reason or ""),
        )
    return table


def bench_json(report: BenchReport, settings: dict[str, Any]) -> dict[str, Any]:
    from fuse_export.exporters.manifest import tool_versions

    return {
        "folder": report.folder,
        "inputs": report.inputs,
        "reference": report.reference,
        "settings": settings,
        "machine": machine_info(),
        "versions": tool_versions(),
        "rows": [r.to_dict() for r in report.rows],
        "passed": not report.failures(),
    }


CSV_COLUMNS = ("backend", "title", "status", "precision", "file", "size_mb", "batch", "median_ms", "p90_ms", "p99_ms",
               "mean_ms", "min_ms", "iterations", "rounds", "images_per_s", "max_abs_prob", "max_abs_conf",
               "top1_agreement", "parity_passed", "accuracy", "reason")


def bench_csv(report: BenchReport) -> str:
    """One CSV line per (backend, batch) row, skipped and failed backends included (with their reason)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in report.rows:
        lat, p = r.latency, r.parity
        w.writerow({
            "backend": r.backend, "title": r.title, "status": r.status, "precision": r.precision, "file": r.file or "",
            "size_mb": r.size_mb, "batch": r.batch, "median_ms": lat and round(lat.median_ms, 4),
            "p90_ms": lat and round(lat.p90_ms, 4), "p99_ms": lat and round(lat.p99_ms, 4),
            "mean_ms": lat and round(lat.mean_ms, 4), "min_ms": lat and round(lat.min_ms, 4),
            "iterations": lat and lat.iterations, "rounds": lat and lat.rounds,
            "images_per_s": r.images_per_s and round(r.images_per_s, 2),
            "max_abs_prob": None if p is None else p.max_abs_prob,
            "max_abs_conf": None if p is None else p.max_abs_conf,
            "top1_agreement": None if p is None else p.top1_agreement,
            "parity_passed": "" if p is None else bool(p), "accuracy": r.accuracy, "reason": r.reason,
        })
    return buf.getvalue()


def bench_plot(report: BenchReport, path: str | os.PathLike) -> Path:
    """A PNG of median latency and throughput against batch size, one line per backend (matplotlib, lazily)."""
    from fuse_export.extras import MissingExtra, require

    require("plot", "--plot")  # `bench --plot` checks this before the bench runs; here for other callers
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # installed, but broken
        raise MissingExtra("plot", "--plot", ["a matplotlib that imports"]) from None
    from fuse_export.fileio import atomic_path

    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in report.rows:
        if r.status == "ok" and r.latency is not None and r.batch is not None and r.images_per_s:
            series.setdefault(r.title, []).append((r.batch, r.latency.median_ms, r.images_per_s))
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for title, pts in series.items():
        pts.sort()
        batches = [b for b, _, _ in pts]
        ax_lat.plot(batches, [m for _, m, _ in pts], marker="o", label=title)
        ax_thr.plot(batches, [t for _, _, t in pts], marker="o", label=title)
    for ax, label in ((ax_lat, "median latency per call (ms)"), (ax_thr, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_thr.legend(fontsize=8, loc="best")
    fig.suptitle(f"fuse-export bench: {Path(report.folder).name} ({report.inputs})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
