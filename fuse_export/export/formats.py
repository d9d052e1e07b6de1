"""The format table: one row per export format. CLI choices, file names, per-format option checks and the
benchmark rows all derive from it (after Ultralytics' `export_formats()`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

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


FORMATS: dict[str, Format] = {
    f.key: f
    for f in (
        Format("torchscript", "TorchScript", "model.torchscript", "torchscript", True, True, ("fp32",),
               frozenset({"static_batch"})),
        Format("onnx", "ONNX", "model.onnx", "onnxruntime", True, True, ("fp32",),
               frozenset({"opset", "static_batch"})),
    )
}

ALIASES = {"ts": "torchscript", "jit": "torchscript", "ort": "onnx", "onnxruntime": "onnx"}


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


def check_options(fmt: Format, given: dict[str, object]) -> None:
    """Refuse options a format does not take (only non-default values are passed in `given`)."""
    for name, value in given.items():
        if name not in fmt.options:
            accepted = ", ".join(sorted(fmt.options)) or "none"
            raise UserError(f"--{name.replace('_', '-')} {value} does not apply to format {fmt.key!r} "
                            f"(it accepts: {accepted}); drop the option or the format")
