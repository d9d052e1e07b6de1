"""`predict`: run an exported artifact on photos (whole images, or each face found in them).

Each image (or face crop) goes through the torch-free deployed preprocessing (`fuse_export.preprocess`) and then
through the selected backend's runner (`fuse_export.inference.predictor.Predictor`); `selection` picks the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_export.data.badfiles import POLICIES
from fuse_export.errors import DataError, UserError
from fuse_export.extras import require
from fuse_export.inference.selection import Selected, select_for
from fuse_export.preprocess import IMAGE_SUFFIXES

FAST_STARTUP_MAX = 32  # up to this many images, runners start fast rather than optimize for throughput
SKIP_HINT = "pass --on-bad skip to leave unreadable images out (each listed) and predict the rest"

@dataclass
class FacePrediction:
    box: list[int] | None  # [x, y, w, h] of the crop in the photo; None = the whole photo
    emotion: str
    probability: float
    confidence: float  # the SCN importance weight of the input, in (0, 1)
    probabilities: dict[str, float]


@dataclass
class PhotoResult:
    image: str
    predictions: list[FacePrediction] = field(default_factory=list)
    detected_faces: bool | None = None  # None: detection was not asked for

    @property
    def note(self) -> str:
        return "no face found" if self.detected_faces is False and not self.predictions else ""

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "detected_faces": self.detected_faces, "note": self.note,
                "predictions": [vars(p) for p in self.predictions]}


@dataclass
class SkippedImage:
    """An image left out under `on_bad="skip"`, and why (the decoder's DataError, without the path)."""

    image: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"image": self.image, "reason": self.reason}


def collect_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders: recursively, by suffix, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(p, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(p, "no such image file or folder")
    return out


def predict_photos(model: str | os.PathLike, images: list[str | os.PathLike], backend: str | None = None,
                   detect_faces: bool = False, margin: float | None = None,
                   threads: int | None = None, verify: bool = True,
                   device: str | None = None,
                   on_bad: str = "fail") -> tuple[Selected, list[PhotoResult], list[SkippedImage]]:
    """Predict the emotion of each photo, or of each face in it (`verify`: see `select`; `device`: cpu,
    cuda or cuda:N, see `select_for`). An image that cannot be decoded (truncated, corrupt, not an image) ends
    the call with a DataError naming it under `on_bad="fail"`; under "skip" it is left out and returned in the
    third list, and the rest are predicted (a DataError when none is left)."""
    import numpy as np

    from fuse_export.inference.predictor import Predictor
    from fuse_export.data import faces as facelib
    from fuse_export.preprocess import model_pixel, open_image

    if on_bad not in POLICIES:  # the data sets' bad-input policies: end at the first (default), or skip and list
        raise UserError(f"--on-bad {on_bad!r}: choose one of {', '.join(POLICIES)}")
    if detect_faces:
        require("faces", "--detect-faces")  # before the artifact is selected and hashed
    sel = select_for(model, backend, device, verify)
    paths = collect_images(images)
    finder = facelib.FaceFinder() if detect_faces else None
    margin = facelib.DEFAULT_MARGIN if margin is None else margin
    pre = sel.pre
    results, inputs, owners = [], [], []  # owners[i]: (result index, box) of inputs[i]
    skipped: list[SkippedImage] = []
    for path in paths:
        try:
            img = open_image(path)  # the one decoder: EXIF, colour, bounds; every failure a DataError
        except DataError as exc:
            if on_bad == "fail":
                raise DataError(exc.path, f"{exc.problem}; {SKIP_HINT}") from None
            skipped.append(SkippedImage(str(path), exc.problem))
            continue
        result = PhotoResult(str(path), detected_faces=None)
        if finder is not None:
            boxes = finder.find(img)
            result.detected_faces = bool(boxes)
            crops = [facelib.crop(img, b, margin) for b in boxes]
        else:
            crops = [(img, None)]
        for im, box in crops:
            inputs.append(model_pixel(im, pre))  # only the small model-size pixels are kept, not the photo
            owners.append((len(results), box))
        results.append(result)
    if skipped and not results:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more unreadable images)" if len(skipped) > 1 else ""
        raise DataError(first.image, f"{first.reason}{more}; no readable image left to predict")
    if inputs:
        # A few images: a session that starts fast beats one optimized for throughput (see Runner.fast_startup).
        with Predictor(sel, threads, fast_startup=len(inputs) <= FAST_STARTUP_MAX, device=device) as predictor:
            out = predictor.predict_pixels(np.stack(inputs))
        for i, (owner, box) in enumerate(owners):
            probs = out.probabilities[i]
            k = int(probs.argmax())
            results[owner].predictions.append(FacePrediction(
                None if box is None else box.as_list(), pre.class_names[k], float(probs[k]),
                float(out.confidence[i]), {c: float(p) for c, p in zip(pre.class_names, probs)}))
    return sel, results, skipped


def predictions_console():
    """A console wide enough for the table when stdout is a pipe (as the bench's `table_console`, without importing
    the bench: predict's cold start pays for every import)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=170)


def predictions_table(sel: Selected, results: list[PhotoResult]):
    """A rich table: one row per face (or photo), and a row saying so for a photo without a face."""
    from rich.table import Table

    table = Table(title=f"fuse-export predict ({sel.backend}: {sel.path or sel.checkpoint})")
    for col, justify in (("Image", "left"), ("Face box", "left"), ("Emotion", "left"), ("Probability", "right"),
                         ("SCN confidence", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        if not r.predictions:
            table.add_row(r.image, "-", r.note, "-", "-")
        for p in r.predictions:
            box = "whole image" if p.box is None else "x{} y{} {}x{}".format(*p.box)
            table.add_row(r.image, box, p.emotion, f"{p.probability:.1%}", f"{p.confidence:.3f}")
    return table
