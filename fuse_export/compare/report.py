"""Bench reports for people (a rich table) and for scripts (JSON with machine and version info)."""

from __future__ import annotations

import os
import platform
from typing import Any

from rich.table import Table

from fuse_export.compare.bench import BenchReport


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count()}
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
    table = Table(title=f"fuse-export bench: {report.folder}  (inputs: {report.inputs})")
    for col, justify in (("Backend", "left"), ("Status", "left"), ("Prec", "left"), ("Size MB", "right"),
                         ("Batch", "right"), ("p50 ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"),
                         ("img/s", "right"), ("max|Δp|", "right"), ("top-1 agree", "right"), ("Accuracy", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report.rows:
        status = r.status
        if r.parity is not None and not r.parity:
            status = "PARITY FAIL"
        if r.status != "ok":
            table.add_row(r.title, status, r.precision, _fmt(r.size_mb, ".1f"), "-", "-", "-", "-", "-", "-", "-",
                          r.reason[:60])
            continue
        lat = r.latency
        assert lat is not None
        table.add_row(
            r.title, status, r.precision, _fmt(r.size_mb, ".1f"), str(r.batch), f"{lat.median_ms:.2f}",
            f"{lat.p90_ms:.2f}", f"{lat.p99_ms:.2f}", f"{r.images_per_s:.1f}",
            _fmt(r.parity.max_abs_prob if r.parity else None, ".1e"),
            _fmt(r.parity.top1_agreement * 100 if r.parity else None, ".2f") + "%",
            _fmt(r.accuracy * 100 if r.accuracy is not None else None, ".2f") + ("%" if r.accuracy is not None else ""),
        )
    return table


def bench_json(report: BenchReport, settings: dict[str, Any]) -> dict[str, Any]:
    from fuse_export.export.manifest import tool_versions

    return {
        "folder": report.folder,
        "inputs": report.inputs,
        "settings": settings,
        "machine": machine_info(),
        "versions": tool_versions(),
        "rows": [r.to_dict() for r in report.rows],
        "passed": not report.failures(),
    }
