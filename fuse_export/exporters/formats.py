"""The format table: one row per export format. CLI choices, file names, per-format option checks and the
benchmark rows all derive from it (after Ultralytics' `export_formats()`)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuse_export.errors import UserError


@dataclass(frozen=True)
class Format:
    key: str  # what users type: --format onnx
    title: str  # what tables show
    file_name: str  # artifact file name inside the export folder
    backend: str  # runner key that executes it
    cpu: bool
    gpu: bool
    precisions: tuple[str, ...]
    options: frozenset[str]  # export options this format accepts with a non-default value
    # Converted from this call's verified export of `source` (same precision), so exported after it, by
    # `converter` ("module:function", called with (source file, target file, metadata) -> manifest extras).
    source: str | None = None
    converter: str | None = None
    # "module:function" reading the metadata embedded in a file of this format (None: not readable alone).
    metadata_reader: str | None = None
    # The optional extra (pyproject.toml) that writing this format needs, checked before an export starts.
    extra: str | None = None


FORMATS: dict[str, Format] = {
    f.key: f
    for f in (
        Format("torchscript", "TorchScript", "model.torchscript", "torchscript", True, True, ("fp32",),
               frozenset({"static_batch", "embed_preprocessing"}),
               metadata_reader="fuse_export.exporters.to_torchscript:read_torchscript_metadata"),
        # fp16: converted graph; int8: static PTQ to Q/DQ (fuse_export.exporters.onnx_precision).
        Format("onnx", "ONNX", "model.onnx", "onnxruntime", True, True, ("fp32", "fp16", "int8"),
               frozenset({"opset", "static_batch", "precision", "embed_preprocessing"}),
               metadata_reader="fuse_export.exporters.metadata:read_onnx_metadata"),  # torch-free
        # torch.export + AOTInductor package, compiled for CPU (compiling needs a C++ compiler).
        Format("pt2", "AOTInductor (pt2)", "model.pt2", "pt2", True, False, ("fp32",), frozenset({"static_batch"}),
               metadata_reader="fuse_export.exporters.to_pt2:read_pt2_metadata"),
        # torch.export lowered to ExecuTorch's XNNPACK delegate: a .pte program for phones and boards
        # (fuse_export.exporters.to_executorch); its package needs numpy >= 2, an environment of its own.
        Format("executorch", "ExecuTorch (XNNPACK)", "model.pte", "executorch", True, False, ("fp32", "int8"),
               frozenset({"static_batch", "precision"}),
               metadata_reader="fuse_export.exporters.to_executorch:read_executorch_metadata", extra="executorch"),
        # A raw TensorRT plan built from the ONNX of the same precision (fuse_export.exporters.trt_build); GPU only.
        Format("tensorrt", "TensorRT", "model.engine", "tensorrt", False, True, ("fp32", "fp16", "int8"),
               frozenset({"opset", "static_batch", "precision", "embed_preprocessing"})),
        # OpenVINO IR (.xml + .bin) converted from the verified ONNX of the same precision by OpenVINO's own API.
        Format("openvino", "OpenVINO IR", "model.xml", "openvino", True, False, ("fp32", "int8"),
               frozenset({"opset", "static_batch", "precision", "embed_preprocessing"}), source="onnx",
               converter="fuse_export.exporters.to_openvino:export_openvino",
               metadata_reader="fuse_export.exporters.to_openvino:read_openvino_metadata", extra="openvino"),
    )
}

ALIASES = {"ts": "torchscript", "jit": "torchscript", "ort": "onnx", "onnxruntime": "onnx"}
ALIASES.update({"aoti": "pt2", "aotinductor": "pt2"})
ALIASES.update({"trt": "tensorrt", "engine": "tensorrt"})
ALIASES.update({"ov": "openvino", "ir": "openvino"})
ALIASES.update({"et": "executorch", "pte": "executorch", "xnnpack": "executorch"})


def resolve(ref: str) -> Callable[..., Any]:
    """The function a table entry names as "module:function" (imported only when used)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def parse_formats(text: str) -> list[Format]:
    """Comma-separated format names (or aliases) -> table rows; unknown names get a suggestion."""
    out: list[Format] = []
    for raw in (t.strip().lower() for t in text.split(",")):
        if not raw:
            continue
        key = ALIASES.get(raw, raw)
        if key not in FORMATS:
            close = difflib.get_close_matches(key, list(FORMATS) + list(ALIASES), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"--format: unknown format {raw!r}{hint} Choose from {', '.join(FORMATS)}")
        if FORMATS[key] not in out:
            out.append(FORMATS[key])
    if not out:
        raise UserError(f"--format: no format given; choose from {', '.join(FORMATS)}")
    return out


def parse_precisions(text: str) -> list[str]:
    """Comma-separated precisions, each offered by at least one format (which formats take it: check_options)."""
    known = list(dict.fromkeys(p for f in FORMATS.values() for p in f.precisions))
    out = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [p for p in out if p not in known]
    if bad or not out:
        raise UserError(f"--precision {text!r}: choose from {', '.join(known)} (comma-separated)")
    return out


def artifact_file(fmt: Format, precision: str = "fp32", embed_preprocessing: bool = False) -> str:
    """File name of one variant, unique per (format, precision, input contract): model.uint8.int8.onnx."""
    stem, dot, suffix = fmt.file_name.rpartition(".")
    parts = [stem] + (["uint8"] if embed_preprocessing else []) + ([precision] if precision != "fp32" else [])
    return ".".join(parts) + dot + suffix


def check_options(fmt: Format, given: dict[str, object]) -> None:
    """Refuse options a format does not take (only non-default values are passed in `given`)."""
    for name, value in given.items():
        if name == "precision":  # a list of non-fp32 precisions, checked against the row
            wrong = [p for p in str(value).split(",") if p not in fmt.precisions]
            if wrong:
                raise UserError(f"--precision {wrong[0]} does not apply to format {fmt.key!r} (it offers: "
                                f"{', '.join(fmt.precisions)}); drop the precision or the format")
            continue
        if name not in fmt.options:
            accepted = ", ".join(sorted(fmt.options)) or "none"
            raise UserError(f"--{name.replace('_', '-')} {value} does not apply to format {fmt.key!r} "
                            f"(it accepts: {accepted}); drop the option or the format")
