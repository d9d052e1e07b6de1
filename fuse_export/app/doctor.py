"""`fuse-export doctor`: what this machine can run, and why not.

Lists the environment (Python, torch and its CUDA build, the GPU and driver, ONNX Runtime and its
execution providers, TensorRT, triton) and every backend of the registry with whether it is usable here
and the reason when it is not. Importing nothing that can fail: missing pieces are reported, not raised.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import re
import shutil
import subprocess
from typing import Any

from fuse_export import __version__
from fuse_export.cpuinfo import TITLES, cpu_features


def _dist_version(*names: str) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def driver_version() -> str | None:
    """The NVIDIA kernel driver version, from /proc (Linux) or nvidia-smi; None without a driver."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            m = re.search(r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)", fh.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.strip()
            return out.splitlines()[0] if out else None
        except (subprocess.SubprocessError, OSError):
            return None
    return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"installed": False}
    info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
                            "cuda_available": torch.cuda.is_available(), "devices": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                                    "memory_gib": round(p.total_memory / 2**30, 1)})
    return info


def _ort_info() -> dict[str, Any]:
    dist = _dist_version("onnxruntime-gpu", "onnxruntime")
    if dist is None or importlib.util.find_spec("onnxruntime") is None:
        return {"installed": False}
    import onnxruntime as ort

    return {"distribution": dist[0], "version": ort.__version__, "providers": ort.get_available_providers()}


def _trt_info() -> dict[str, Any]:
    from fuse_export.runners.gpu_backends import tensorrt_status

    ok, why = tensorrt_status()
    info: dict[str, Any] = {"usable": ok, "reason": why}
    if ok:
        from fuse_export.exporters.trt_api import TrtApi

        api = TrtApi.installed()
        info.update(version=api.version, major=api.major, strongly_typed_only=api.always_strongly_typed,
                    precision_flags=api.has_precision_flags)
    return info


def environment() -> dict[str, Any]:
    triton = _dist_version("triton", "pytorch-triton")
    return {
        "fuse_export": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_features().to_dict(),
        "nvidia_driver": driver_version(),
        "torch": _torch_info(),
        "onnxruntime": _ort_info(),
        "tensorrt": _trt_info(),
        "triton": triton[1] if triton else None,
    }


def backend_rows() -> list[dict[str, Any]]:
    from fuse_export.runners.registry import BACKENDS

    rows = []
    for b in BACKENDS.values():
        ok, why = b.available()
        rows.append({"backend": b.key, "title": b.title, "device": b.device, "precision": b.precision,
                     "format": b.format or "checkpoint", "usable": ok, "reason": why})
    return rows


def doctor_report() -> dict[str, Any]:
    return {"environment": environment(), "backends": backend_rows()}


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment as short human lines."""
    t, o, r = env["torch"], env["onnxruntime"], env["tensorrt"]
    lines = [f"fuse-export {env['fuse_export']}, Python {env['python']} on {env['platform']}"]
    c = env["cpu"]  # the instruction sets that decide CPU speed (bf16 and int8 paths need the last four)
    lines.append(f"CPU: {c['model']}, {c['logical_cpus']} logical CPUs; "
                 + ", ".join(f"{TITLES[k]} {'yes' if v else 'no'}" for k, v in c["flags"].items()))
    if t.get("installed") is False:
        lines.append("torch: not installed")
    else:
        lines.append(f"torch {t['version']} (CUDA build: {t['cuda_build'] or 'none, CPU-only'}, "
                     f"cuDNN {t['cudnn'] or '-'}), CUDA available: {t['cuda_available']}")
    for d in t.get("devices", []):
        lines.append(f"GPU {d['index']}: {d['name']}, compute capability {d['compute_capability']}, "
                     f"{d['memory_gib']} GiB")
    lines.append(f"NVIDIA driver: {env['nvidia_driver'] or 'none found'}")
    lines.append("onnxruntime: not installed" if o.get("installed") is False else
                 f"{o['distribution']} {o['version']}: providers {', '.join(o['providers'])}")
    if r["usable"]:
        how = "strongly typed only, precision from the ONNX" if r["strongly_typed_only"] else "precision flags too"
        lines.append(f"TensorRT {r['version']} ({how})")
    else:
        lines.append(f"TensorRT: {r['reason']}")
    lines.append(f"triton: {env['triton'] or 'not installed'}")
    return lines


def doctor_table(rows: list[dict[str, Any]]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title="fuse-export backends on this machine")
    for col in ("Backend", "Device", "Precision", "Runs", "Usable", "Why not"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["backend"], r["device"], r["precision"], r["format"], "yes" if r["usable"] else "no",
                      Text(r["reason"]))  # plain text: "pip install 'fuse-export[train]'" is not rich markup
    return table
