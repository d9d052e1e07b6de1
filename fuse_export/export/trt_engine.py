"""TensorRT engines: ONNX -> raw serialized plan (trtexec can load it) plus a JSON sidecar.

The plan is written byte for byte as TensorRT serialized it (no header, unlike Ultralytics' .engine files).
The sidecar `<engine>.json` records what the plan is tied to: TensorRT version, GPU name and compute
capability, precision, optimization profile and the ONNX's sha256. A plan only deserializes with the
TensorRT version and GPU that built it, so loading checks the sidecar first and says to rebuild.
Version differences (10 vs 11) are decided by `trt_api.TrtApi`, never here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fuse_export.contract import MAX_BATCH
from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.export.onnx_inspect import OnnxInfo, inspect_onnx
from fuse_export.export.trt_api import LayerInfo, TrtApi, fp32_layers, import_tensorrt
from fuse_export.fileio import atomic_open, sha256_file, write_json

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


# ---------------------------------------------------------------- build (needs TensorRT and a GPU)

def _pin_fp32(trt, network) -> list[str]:
    """Give the SCN sigmoid, the softmaxes and everything after them fp32 precision and outputs (weak typing)."""
    layers, infos = [], []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        activation = None
        if layer.type == trt.LayerType.ACTIVATION:
            layer.__class__ = trt.IActivationLayer  # the binding hands out ILayer; the subclass exposes ActivationType
            activation = layer.type.name
        ins = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outs = tuple(layer.get_output(k).name for k in range(layer.num_outputs))
        floats = all(layer.get_output(k).dtype in (trt.float32, trt.float16) for k in range(layer.num_outputs))
        layers.append(layer)
        infos.append(LayerInfo(layer.name, kind, activation, ins, outs, floats))
    pinned = fp32_layers(infos)
    for i in pinned:
        layers[i].precision = trt.float32
        for k in range(layers[i].num_outputs):
            layers[i].set_output_type(k, trt.float32)
    return [infos[i].name for i in pinned]


def attach_timing_cache(config, blob: bytes, cache_file: Path, log=print) -> bytes:
    """Give the builder config the timing cache `blob` (b"" for a fresh one); returns the blob in use.

    `set_timing_cache(cache, ignore_mismatch=False)` returns False when it refuses a cache written by another
    TensorRT build or GPU (and `create_timing_cache` may return None for an unreadable blob): the build would
    then run without the cache we think it has, so start a fresh one and say so; refusing an empty cache too
    is an error.
    """
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # noqa: BLE001 - some releases raise instead of returning None for a damaged blob
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):  # False: refuse a mismatched cache
            return blob
        log(f"warning: {cache_file}: TensorRT refused this timing cache (another TensorRT version or GPU, or a "
            "damaged file); building with a fresh one, which replaces it")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise ExportError(f"TensorRT could not attach an empty timing cache to the builder config ({cache_file})")
    return b""


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str | None = None,
                 profile: BatchProfile | None = None, workspace_gb: float = 4.0,
                 timing_cache: str | os.PathLike | None = None, opt_level: int = 3,
                 log=print) -> dict[str, Any]:
    """Build a plan from `onnx_path`; write it raw to `engine_path` plus its sidecar. Returns the sidecar."""
    trt = import_tensorrt()
    api = TrtApi.from_version(trt.__version__)
    gpu = current_gpu()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = inspect_onnx(onnx_path)
    plan = api.plan(precision, info.kind, onnx_path.name)
    profile = profile or default_profile(info)
    check_profile(profile, info)
    if not 0 <= opt_level <= 5:
        raise UserError(f"--opt-level {opt_level}: TensorRT's builder optimization level is 0..5")
    if plan.strongly_typed and info.reduced_sensitive_ops:
        log(f"warning: {onnx_path.name} computes {', '.join(info.reduced_sensitive_ops)} below fp32; a strongly "
            "typed engine keeps that, which costs probability parity (export with them kept in fp32)")
    log(f"TensorRT {api.version} on {gpu.name} ({gpu.sm}): {plan.describe()}; batch profile {profile}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT {api.version} cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = opt_level
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    pinned = _pin_fp32(trt, network) if plan.pin_fp32 else []
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(info.input_name, *profile.shapes(info.input_dims))
    config.add_optimization_profile(opt_profile)
    cache_file = Path(timing_cache) if timing_cache else timing_cache_path(cache_root(), api.version, gpu)
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    blob = attach_timing_cache(config, blob, cache_file, log)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT {api.version} could not build a {plan.precision} engine (see the "
                          "TensorRT messages above); try a larger --workspace-gb or another --batch profile")
    build_s = time.perf_counter() - t0
    with atomic_open(engine_path, "wb") as fh:
        fh.write(serialized)
    with atomic_open(cache_file, "wb") as fh:  # the cache grew by this build's timings: the next one reuses them
        fh.write(config.get_timing_cache().serialize())
    plan_desc = {"precision": plan.precision, "onnx_kind": plan.onnx_kind, "strongly_typed": plan.strongly_typed,
                 "network_flags": list(plan.network_flags), "set_flags": list(plan.set_flags),
                 "clear_flags": list(plan.clear_flags), "fp32_layers": pinned}
    settings = {"workspace_bytes": int(workspace_gb * (1 << 30)), "builder_optimization_level": opt_level,
                "timing_cache": str(cache_file), "timing_cache_reused": bool(blob), "build_seconds": round(build_s, 1)}
    sidecar = engine_sidecar(engine_path, info, api, gpu, plan_desc, profile, settings)
    write_json(sidecar_path(engine_path), sidecar)
    log(f"engine {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) in {build_s:.1f} s; "
        f"sidecar {sidecar_path(engine_path).name}")
    return sidecar


def manifest_extras(sidecar: dict[str, Any], engine: Path) -> dict[str, Any]:
    """What the export manifest records about an engine (the sidecar beside it has the rest)."""
    return {"sidecar": sidecar_path(engine).name, "tensorrt_version": sidecar["tensorrt_version"],
            "gpu": sidecar["gpu"], "profile": sidecar["profile"]["batch"], "source_onnx": sidecar["onnx"]["file"],
            "strongly_typed": sidecar["build"]["strongly_typed"]}
