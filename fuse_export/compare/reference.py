"""Reference results (Polygraphy's --save-results / --load-results): inputs and the eager outputs on them, in one
.npz, so parity can be checked later, elsewhere, without the checkpoint.

`export` writes reference.npz beside manifest.json (its verification images and eager fp32 outputs);
`bench --save-results FILE` writes the bench's own; `bench --reference FILE` compares against either.
Plain arrays only (loaded with allow_pickle=False): the metadata travels as one JSON string.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import IO_CONTRACT, Preprocessing
from fuse_export.errors import UserError

REFERENCE_FILE = "reference.npz"
REFERENCE_KIND = "fuse-export-reference"
REFERENCE_VERSION = 1


@dataclass
class ReferenceSet:
    """Inputs (float NCHW normalized, and the uint8 NHWC pixels they came from) with the reference outputs."""

    float_nchw: np.ndarray
    uint8_nhwc: np.ndarray
    labels: np.ndarray | None
    outputs: dict[str, np.ndarray]
    source: str  # what the inputs are, e.g. "64 held-out images of data.csv"
    backend: str  # what produced the outputs, e.g. "pytorch"
    preprocessing: dict[str, Any]
    checkpoint_sha256: str | None = None

    def meta(self) -> dict[str, Any]:
        return {"kind": REFERENCE_KIND, "version": REFERENCE_VERSION, "source": self.source, "backend": self.backend,
                "preprocessing": self.preprocessing, "checkpoint_sha256": self.checkpoint_sha256,
                "samples": int(len(self.float_nchw))}


def save_reference(path: str | os.PathLike, ref: ReferenceSet) -> Path:
    """Write the reference set atomically (uncompressed: the inputs are noise-like, compression buys little)."""
    from fuse_export.fileio import atomic_open

    arrays: dict[str, np.ndarray] = {"input_float_nchw": np.ascontiguousarray(ref.float_nchw, np.float32),
                                     "input_uint8_nhwc": np.ascontiguousarray(ref.uint8_nhwc, np.uint8),
                                     "meta": np.asarray(json.dumps(ref.meta()))}
    if ref.labels is not None:
        arrays["labels"] = np.asarray(ref.labels, np.int64)
    for name, value in ref.outputs.items():
        arrays[f"output_{name}"] = np.asarray(value, np.float32)
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def load_reference(path: str | os.PathLike, pre: Preprocessing | None = None) -> ReferenceSet:
    """Read a reference set; a missing, foreign or mismatched file is a UserError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: reference file not found; `fuse-export export` writes {REFERENCE_FILE} beside "
                        "manifest.json, `fuse-export bench --save-results FILE` writes one")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a reference .npz; write one with "
                        "`fuse-export bench --save-results FILE`")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
    # EOFError: a file that ends early (numpy's "No data left in file"); Click would turn it into "aborted".
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a reference .npz ({type(exc).__name__}); write one with "
                        "`fuse-export bench --save-results FILE`") from None
    if meta.get("kind") != REFERENCE_KIND:
        raise UserError(f"{path}: field 'kind' is {meta.get('kind')!r}, expected {REFERENCE_KIND!r}")
    outputs = {n: arrays[f"output_{n}"] for n in IO_CONTRACT.output_names if f"output_{n}" in arrays}
    missing = [n for n in ("input_float_nchw", "input_uint8_nhwc") if n not in arrays]
    if missing or "probabilities" not in outputs:
        raise UserError(f"{path}: field {(missing or ['output_probabilities'])[0]!r} is missing; re-save it")
    ref = ReferenceSet(arrays["input_float_nchw"], arrays["input_uint8_nhwc"], arrays.get("labels"), outputs,
                       str(meta.get("source", path)), str(meta.get("backend", "?")),
                       dict(meta.get("preprocessing", {})),
                       meta.get("checkpoint_sha256"))
    n = len(ref.float_nchw)
    if any(len(a) != n for a in (ref.uint8_nhwc, *outputs.values())):
        raise UserError(f"{path}: inputs and outputs hold different numbers of samples; re-save it")
    if pre is not None:
        size = pre.image_size
        if ref.float_nchw.shape[1:] != (3, size, size):
            raise UserError(f"{path}: inputs are {tuple(ref.float_nchw.shape[1:])}, the export folder's model takes "
                            f"(3, {size}, {size}); save a reference from this export")
        if outputs["probabilities"].shape[1] != pre.num_classes:
            raise UserError(f"{path}: {outputs['probabilities'].shape[1]} classes, the model has {pre.num_classes}")
    return ref
