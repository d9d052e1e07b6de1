"""TensorRT engines: the plan file beside its ONNX, its JSON sidecar, and what both are tied to.

The plan is written byte for byte as TensorRT serialized it (no header, unlike Ultralytics' .engine files).
The sidecar `<engine>.json` records what the plan is tied to: TensorRT version, GPU name and compute
capability, precision, optimization profile and the ONNX's sha256. A plan only deserializes with the
TensorRT version and GPU that built it, so loading checks the sidecar first and says to rebuild. Also here:
the batch profile, the GPU's identity and the cache keys. Building a plan is `fuse_export.exporters.trt_build`.
Version differences (10 vs 11) are decided by `trt_api.TrtApi`, never here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fuse_export.contract import MAX_BATCH
from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.exporters.onnx_inspect import OnnxInfo
from fuse_export.exporters.trt_api import TrtApi
from fuse_export.fileio import sha256_file

SIDECAR_SCHEMA = "fuse-export-trt-engine/1"
DEFAULT_OPT, DEFAULT_MAX = 32, 256  # default profile for a dynamic-batch ONNX: 1:32:256
MAX_PROFILE_BATCH = MAX_BATCH  # the exported graphs' dynamic batch range


class EngineMismatch(UserError):
    """An engine was built for another TensorRT version or GPU (or its files changed): rebuild it."""


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch sizes; the other input axes are the ONNX's static ones."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """`MIN:OPT:MAX`, or a single `N` for a fixed batch."""
        parts = text.strip().split(":")
        hint = "expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (e.g. 1:32:256) or one batch size N"
        if len(parts) not in (1, 3):
            raise UserError(f"--batch {text!r}: {hint}")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"--batch {text!r}: {hint}") from None
        lo, opt, hi = values * 3 if len(values) == 1 else values
        if not 1 <= lo <= opt <= hi:
            raise UserError(f"--batch {text!r}: {hint}")
        if hi > MAX_PROFILE_BATCH:
            raise UserError(f"--batch {text!r}: MAX {hi} exceeds the export's batch limit {MAX_PROFILE_BATCH}")
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, dims: list[int | str]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes: the batch axis from the profile, the rest from the ONNX."""
        rest = tuple(int(d) for d in dims[1:])
        return (self.min, *rest), (self.opt, *rest), (self.max, *rest)


def default_profile(info: OnnxInfo) -> BatchProfile:
    """From the export's batch axis: a fixed batch N gives N:N:N, a dynamic one 1:32:256."""
    n = info.static_batch
    return BatchProfile(n, n, n) if n else BatchProfile(1, DEFAULT_OPT, DEFAULT_MAX)


def check_profile(profile: BatchProfile, info: OnnxInfo) -> None:
    """The profile must fit the ONNX: a static batch allows only itself; only the batch axis may be dynamic."""
    dynamic_rest = [d for d in info.input_dims[1:] if not isinstance(d, int) or d <= 0]
    if dynamic_rest:
        raise ExportError(f"{info.path}: input {info.input_name} {info.input_dims} has dynamic axes besides the "
                          "batch; re-export it with fuse-export (static image size)")
    n = info.static_batch
    if n and (profile.min, profile.opt, profile.max) != (n, n, n):
        raise UserError(f"--batch {profile}: {info.path} has a fixed batch of {n}; use --batch {n} or re-export "
                        "without --static-batch")


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def current_gpu(index: int = 0) -> GpuIdentity:
    """The CUDA device TensorRT builds for and runs on, or BackendUnavailable."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device: TensorRT needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(index)
    return GpuIdentity(torch.cuda.get_device_name(index), f"{major}.{minor}")


# ---------------------------------------------------------------- cache keys

def cache_root() -> Path:
    """Where timing caches and ONNX Runtime TensorRT-EP engine caches live ($FUSE_EXPORT_CACHE overrides)."""
    return Path(os.environ.get("FUSE_EXPORT_CACHE") or Path.home() / ".cache" / "fuse-export")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def timing_cache_path(root: Path, trt_version: str, gpu: GpuIdentity) -> Path:
    """One timing cache per TensorRT version and GPU: TensorRT rejects a cache from another of either,
    while any number of networks can share one (that is what makes rebuilds fast)."""
    return root / "tensorrt" / f"timing-trt{_slug(trt_version)}-{gpu.sm}-{_slug(gpu.name)}.cache"


def ort_trt_cache_dir(root: Path, onnx_sha256: str, ort_version: str, trt_version: str, gpu: GpuIdentity,
                      precision: str, profile: BatchProfile) -> Path:
    """ONNX Runtime's TensorRT-EP engine cache folder, keyed by everything that invalidates its engines
    (the model, ORT and TensorRT versions, the GPU, the precision and the profile)."""
    key = json.dumps([onnx_sha256, ort_version, trt_version, gpu.name, gpu.compute_capability, precision,
                      str(profile)])
    return root / "ort-trt" / f"{onnx_sha256[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------- files

def engine_path_for(onnx: str | os.PathLike) -> Path:
    """model.onnx -> model.engine, model.fp16.onnx -> model.fp16.engine (formats.artifact_file's naming)."""
    onnx = Path(onnx)
    return onnx.with_name(onnx.name.removesuffix(".onnx") + ".engine")


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any] | None:
    """The engine's sidecar, or None when there is none (e.g. a plan from trtexec)."""
    path = sidecar_path(engine)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("schema") != SIDECAR_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}")
        return doc
    except (ValueError, AttributeError) as exc:
        raise EngineMismatch(f"{path}: unreadable engine sidecar ({exc}); rebuild the engine with "
                             "`fuse-export build-engine`") from None


def check_engine(engine: str | os.PathLike, sidecar: dict[str, Any], trt_version: str, gpu: GpuIdentity) -> None:
    """Refuse, with a rebuild message, a plan built for another TensorRT or GPU, or changed since its sidecar."""
    engine = Path(engine)
    built_gpu = sidecar.get("gpu", {})
    problems = []
    if sidecar.get("tensorrt_version") != trt_version:
        problems.append(f"TensorRT {sidecar.get('tensorrt_version')} (this machine has {trt_version})")
    if (built_gpu.get("name"), built_gpu.get("compute_capability")) != (gpu.name, gpu.compute_capability):
        problems.append(f"GPU {built_gpu.get('name')} with compute capability {built_gpu.get('compute_capability')}"
                        f" (this machine has {gpu.name}, {gpu.compute_capability})")
    onnx = sidecar.get("onnx", {}).get("file", "MODEL.onnx")
    rebuild = f"rebuild it here with `fuse-export build-engine {onnx}`"
    if problems:
        raise EngineMismatch(f"{engine}: built for {' and '.join(problems)}; a TensorRT plan only loads with the "
                             f"TensorRT version and GPU that built it: {rebuild}")
    if engine.is_file() and sidecar.get("engine_sha256") != sha256_file(engine):
        raise EngineMismatch(f"{engine}: the plan changed since {sidecar_path(engine).name} was written; {rebuild}")


def engine_sidecar(engine: Path, info: OnnxInfo, api: TrtApi, gpu: GpuIdentity, plan_desc: dict[str, Any],
                   profile: BatchProfile, settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    shapes = profile.shapes(info.input_dims)
    return {
        "schema": SIDECAR_SCHEMA,
        "engine": engine.name,
        "engine_sha256": sha256_file(engine),
        "engine_bytes": engine.stat().st_size,
        "tensorrt_version": api.version,
        "gpu": asdict(gpu),
        "cuda_runtime": torch.version.cuda,
        "precision": plan_desc["precision"],
        "build": plan_desc,
        "profile": {"input": info.input_name, "batch": str(profile), "min": list(shapes[0]),
                    "opt": list(shapes[1]), "max": list(shapes[2])},
        "onnx": {"file": Path(info.path).name, "sha256": sha256_file(info.path), "kind": info.kind,
                 "reduced_sensitive_ops": info.reduced_sensitive_ops},
        **settings,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def manifest_extras(sidecar: dict[str, Any], engine: Path) -> dict[str, Any]:
    """What the export manifest records about an engine (the sidecar beside it has the rest)."""
    return {"sidecar": sidecar_path(engine).name, "tensorrt_version": sidecar["tensorrt_version"],
            "gpu": sidecar["gpu"], "profile": sidecar["profile"]["batch"], "source_onnx": sidecar["onnx"]["file"],
            "strongly_typed": sidecar["build"]["strongly_typed"]}
