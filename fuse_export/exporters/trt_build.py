"""Building a TensorRT engine from an ONNX file (needs TensorRT, imported lazily, and a GPU).

`build_engine` parses the ONNX with TensorRT's official API, sets up the builder config (workspace, optimization
level, the precision flags `trt_api.TrtApi` chooses, fp32-pinned layers, the batch profile, the shared timing
cache), and writes the serialized plan raw beside its sidecar (`fuse_export.exporters.trt_engine`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fuse_export.errors import ExportError, UserError
from fuse_export.exporters.onnx_inspect import inspect_onnx
from fuse_export.exporters.trt_api import LayerInfo, TrtApi, fp32_layers, import_tensorrt
from fuse_export.exporters.trt_engine import (BatchProfile, cache_root, check_profile, current_gpu, default_profile,
                                           engine_sidecar, sidecar_path, timing_cache_path)
from fuse_export.fileio import atomic_open, write_json


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
