"""`predict`: run an exported artifact on photos (whole images, or each face found in them).

MODEL is an export folder or one artifact file. Preprocessing and class names come from the folder's
manifest.json, or, for a file copied away from its folder, from the metadata embedded in the file. Each
image (or face crop) goes through the recipe's eval transform (resize, center crop, normalize; or only the
geometry for graphs that take uint8 pixels) and then through the backend's runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, DataError, UserError
from fuse_export.export.formats import FORMATS
from fuse_export.export.manifest import MANIFEST, read_manifest
from fuse_export.runners.registry import BACKENDS, REFERENCE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PREFERENCE = ("onnxruntime", "pt2", "torchscript")  # default backend order: fastest on CPU first
BATCH = 32


@dataclass
class Selected:
    """The artifact (or the eager checkpoint) that will run, with its contracts."""

    backend: str
    path: Path | None
    checkpoint: Path
    pre: Preprocessing
    embed: bool
    static_batch: bool = False


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


def _artifact_file_format(path: Path) -> str:
    for fmt in FORMATS.values():
        if path.suffix == Path(fmt.file_name).suffix:
            return fmt.key
    raise UserError(f"{path}: not an artifact fuse-export knows (suffixes: "
                    f"{', '.join(Path(f.file_name).suffix for f in FORMATS.values())})")


def _embedded_metadata(path: Path, fmt: str) -> dict[str, Any]:
    """The metadata every exporter writes into its file (for an artifact without its manifest)."""
    if fmt == "onnx":
        from fuse_export.export.to_onnx import read_onnx_metadata

        return read_onnx_metadata(path)
    if fmt == "torchscript":
        from fuse_export.export.to_torchscript import load_torchscript

        return load_torchscript(path)[1]
    if fmt == "pt2":
        from fuse_export.export.to_pt2 import load_pt2

        return load_pt2(path)[1]
    raise UserError(f"{path}: no {MANIFEST} beside it, and its format {fmt!r} carries no readable metadata")


def _pick(manifest: dict[str, Any], backend: str | None, file: str | None) -> dict[str, Any]:
    arts = [a for a in manifest["artifacts"] if file is None or a["file"] == file]
    if backend:
        arts = [a for a in arts if a.get("backend") == backend]
        if not arts:
            raise UserError(f"--backend {backend}: the export has no artifact for it "
                            f"(has: {', '.join(sorted({a.get('backend', '?') for a in manifest['artifacts']}))})")
    order = {k: i for i, k in enumerate(PREFERENCE)}
    # fp32 and dynamic-batch first, then the preferred backends; unavailable ones drop out.
    arts = sorted(arts, key=lambda a: (a.get("precision", "fp32") != "fp32", bool(a.get("static_batch")),
                                       order.get(a.get("backend"), len(order))))
    reasons = []
    for a in arts:
        b = BACKENDS.get(a.get("backend", ""))
        ok, why = b.available() if b else (False, f"unknown backend {a.get('backend')!r}")
        if ok:
            return a
        reasons.append(f"{a['file']}: {why}")
    raise BackendUnavailable(f"no artifact can run here ({'; '.join(reasons) or 'the manifest lists none'})")


def select(model: str | os.PathLike, backend: str | None = None) -> Selected:
    """Resolve MODEL (+ --backend) to what runs: a manifest artifact, a bare artifact, or the eager checkpoint."""
    model = Path(model)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend: unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not model.exists():
        raise UserError(f"{model}: no such export folder or artifact file")
    folder = model if model.is_dir() else model.parent
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if manifest is not None and not model.is_dir() and all(a.get("file") != model.name for a in manifest["artifacts"]):
        manifest = None  # a file its folder's manifest does not list: trust only what the file itself says
    if manifest is not None:
        pre = Preprocessing.from_dict(manifest["preprocessing"])
        ckpt = Path(manifest["source_checkpoint"]["path"])
        if backend == REFERENCE:
            if not ckpt.is_file():
                raise UserError(f"--backend {REFERENCE}: the source checkpoint {ckpt} is gone")
            return Selected(REFERENCE, None, ckpt, pre, False)
        art = _pick(manifest, backend, None if model.is_dir() else model.name)
        return Selected(art["backend"], folder / art["file"], ckpt, pre, bool(art.get("embed_preprocessing")),
                        bool(art.get("static_batch")))
    if model.is_dir():
        raise UserError(f"{model}: no {MANIFEST}; point at a folder written by `fuse-export export` or an artifact")
    fmt = _artifact_file_format(model)
    meta = _embedded_metadata(model, fmt)
    if "preprocessing" not in meta:
        raise UserError(f"{model}: no {MANIFEST} beside it and no fuse-export metadata inside it")
    key = backend or FORMATS[fmt].backend
    if BACKENDS[key].format != fmt:
        raise UserError(f"--backend {key} does not run {fmt} files")
    return Selected(key, model, Path(), Preprocessing.from_dict(meta["preprocessing"]),
                    meta.get("input_layout") == "uint8-nhwc")


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


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"not an image Pillow can read ({exc.__class__.__name__})") from None


def predict_photos(model: str | os.PathLike, images: list[str | os.PathLike], backend: str | None = None,
                   detect_faces: bool = False, margin: float | None = None,
                   threads: int | None = None) -> tuple[Selected, list[PhotoResult]]:
    """Predict the emotion of each photo, or of each face in it."""
    from fuse_export.data import faces as facelib
    from fuse_export.data.transforms import eval_pixels_transform, eval_transform

    sel = select(model, backend)
    paths = collect_images(images)
    finder = facelib.FaceFinder() if detect_faces else None
    margin = facelib.DEFAULT_MARGIN if margin is None else margin
    pre = sel.pre
    tf = eval_pixels_transform(pre) if sel.embed else eval_transform(pre)
    results, inputs, owners = [], [], []  # owners[i]: (result index, box) of inputs[i]
    for path in paths:
        img = open_rgb(path)
        result = PhotoResult(str(path), detected_faces=None)
        if finder is not None:
            boxes = finder.find(img)
            result.detected_faces = bool(boxes)
            crops = [facelib.crop(img, b, margin) for b in boxes]
        else:
            crops = [(img, None)]
        for im, box in crops:
            x = tf(im).numpy()
            inputs.append(np.ascontiguousarray(x.transpose(1, 2, 0)) if sel.embed else x)
            owners.append((len(results), box))
        results.append(result)
    if inputs:
        outs = _run(sel, np.stack(inputs), threads)
        for i, (owner, box) in enumerate(owners):
            probs = outs["probabilities"][i]
            k = int(probs.argmax())
            results[owner].predictions.append(FacePrediction(
                None if box is None else box.as_list(), pre.class_names[k], float(probs[k]),
                float(outs["confidence"][i].reshape(-1)[0]),
                {c: float(p) for c, p in zip(pre.class_names, probs)}))
    return sel, results


def _run(sel: Selected, x: np.ndarray, threads: int | None) -> dict[str, np.ndarray]:
    from fuse_export.compare.bench import run_all

    b = BACKENDS[sel.backend]
    ok, why = b.available()
    if not ok:
        raise BackendUnavailable(f"backend {sel.backend}: {why}")
    with b.factory(sel.path, sel.checkpoint, sel.pre, threads, sel.embed) as runner:
        # A static-batch export takes exactly its batch; feed such files one image at a time.
        return run_all(runner, x.astype(np.uint8 if sel.embed else np.float32), 1 if sel.static_batch else BATCH)


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
