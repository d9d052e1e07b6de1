"""Option groups of `export` (and of the verification every exporter and `build-engine` runs), as dataclasses.

The CLI builds these from its flags and the library takes them, so no function carries a dozen loose
arguments. Plain data, no heavy imports.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from fuse_export.contract import MAX_BATCH
from fuse_export.errors import UserError

DEFAULT_OPSET = 18  # the same as export/to_onnx.DEFAULT_OPSET (kept here so this module stays torch-free)
DEFAULT_VERIFY_SAMPLES = 64
VERIFY_NOISE_SAMPLES = 16


@dataclass(frozen=True)
class ExportOptions:
    """How to export: graph options, precisions, int8 calibration, ONNX graph passes, where GPU formats run."""

    opset: int = DEFAULT_OPSET
    static_batch: bool = False
    batch: int = 1  # the fixed batch of a static_batch export
    precisions: tuple[str, ...] = ("fp32",)
    embed_preprocessing: bool = False  # uint8 NHWC input, normalization inside the graph
    calibration_data: str | os.PathLike | None = None
    calibration_samples: int = 512
    calibration_method: str = "minmax"
    int8_scheme: str = "auto"
    int8_weights: str = "auto"  # 8, 7 or auto: 7-bit when this x86 CPU lacks VNNI (export/int8_weights.py)
    simplify: bool = False  # onnxslim on every ONNX file (the `simplify` extra)
    optimize: bool = True  # torch.onnx.export(optimize=...): turn off when the exporter's optimizer breaks a graph
    device: str | None = None  # where GPU formats (TensorRT) are built and verified: "cuda" or "cuda:N"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", tuple(self.precisions))
        # Checked before anything is loaded: --static-batch --batch 100000 was killed for memory after a minute.
        # A dynamic export uses `batch` too (its example input), so the bound holds either way.
        if not 1 <= self.batch <= MAX_BATCH:
            raise UserError(f"--batch {self.batch}: must be 1..{MAX_BATCH} (the exported batch axis' range)")


@dataclass(frozen=True)
class VerifyOptions:
    """How exported artifacts are verified against eager PyTorch, and what happens to one that fails.

    `atol` / `rtol` override the precision's default bound on probabilities and confidence
    (compare/parity.TOLERANCES); the overrides are recorded in the manifest. Verification images are, in order:
    `data` (with `data_format`, default by path: a .csv is FER-2013, a folder is read as images), the
    calibration data's held-out images, the data set the checkpoint was trained on (its recipe's format and
    path), and only then seeded noise, with a warning.
    """

    atol: float | None = None
    rtol: float | None = None
    keep_failed: bool = False  # keep a failing artifact on disk (renamed *.failed.*), out of the manifest
    data: str | os.PathLike | None = None
    data_format: str | None = None
    samples: int = DEFAULT_VERIFY_SAMPLES
    reference: bool = True  # write reference.npz (inputs + eager outputs) beside manifest.json

    def __post_init__(self) -> None:
        check_tolerances(self.atol, self.rtol)

    def overrides(self) -> dict[str, Any]:
        """The tolerance overrides the user gave (recorded in the manifest)."""
        return {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol)) if v is not None}


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """Refuse a parity bound that cannot fail: probabilities and confidence lie in [0, 1], so an --atol or --rtol
    above 1 (or inf, or nan) passes anything, and "PASSED" over it would be a lie."""
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and 0 <= number <= 1):
            raise UserError(f"{option} {value}: must be a finite number in 0..1 (probabilities and confidence lie "
                            "in [0, 1]: a larger bound passes anything)")


def failed_name(name: str) -> str:
    """Where --keep-failed keeps a failing artifact, out of the manifest: model.onnx -> model.failed.onnx."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}.failed.{suffix}" if dot else f"{name}.failed"


def parse_device(text: str | None, option: str = "--device") -> str | None:
    """'cpu', 'cuda' or 'cuda:N' (None stays None); anything else is a UserError."""
    if text is None or text == "":
        return None
    t = text.strip().lower()
    if t in ("cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise UserError(f"{option} {text!r}: expected cpu, cuda or cuda:N (e.g. cuda:1)")


def default_options(**fields: Any) -> ExportOptions:
    """ExportOptions from keyword fields (unknown names are a TypeError naming them)."""
    known = set(ExportOptions.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown export option(s) {', '.join(unknown)}; ExportOptions has {', '.join(sorted(known))}")
    return ExportOptions(**fields)

