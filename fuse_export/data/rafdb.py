"""RAF-DB basic: `EmoLabel/list_patition_label.txt` (`train_00001.jpg 5`, labels 1..7) and aligned images.

Labels in the file are 1-based: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral;
they become 0..6 in that order (the SCN authors' order). Images are `Image/aligned/<stem>_aligned.jpg`
(or `Image/original/<name>` with aligned = false). RAF-DB has no validation split: a stratified, seeded
one is carved from train. (The file name's misspelling "patition" is RAF-DB's own.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fuse_export.data import options as opt
from fuse_export.data.badfiles import BadFiles, keep_good_images
from fuse_export.data.base import FerDataset, Split
from fuse_export.data.splitting import carve_val
from fuse_export.errors import DataError, RecipeError

RAFDB_CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
LIST_FILE = Path("EmoLabel") / "list_patition_label.txt"


def parse_label_list(path: Path, bad: BadFiles) -> list[tuple[str, str, int]]:
    """(split, image name, 0-based label) for every good line of the list file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not a text file ({exc.reason})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from None
    entries: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            bad.report(path, f"expected '<name> <label>', got {line.strip()[:80]!r}", line_no)
            continue
        name, label_text = fields
        split = "train" if name.startswith("train_") else "test" if name.startswith("test_") else None
        if split is None or Path(name).name != name:
            bad.report(path, f"image name {name[:80]!r} should start with train_ or test_ and be a plain file name",
                       line_no)
            continue
        label = int(label_text) if label_text.isdigit() and len(label_text) < 4 else None
        if label is None or not 1 <= label <= len(RAFDB_CLASSES):
            bad.report(path, f"label {label_text[:20]!r} of {name} is outside 1..7", line_no)
            continue
        if name in seen:
            bad.report(path, f"image name {name!r} is listed twice (first on line {seen[name]})", line_no)
            continue
        seen[name] = line_no
        entries.append((split, name, label - 1))
    return entries


def image_path(root: Path, name: str, aligned: bool) -> Path:
    if aligned:
        return root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
    return root / "Image" / "original" / name


def load_rafdb(path: str | os.PathLike, aligned: bool = True, val_fraction: float = 0.1, seed: int = 0,
               on_bad: str = "fail") -> FerDataset:
    """Load RAF-DB basic from its root folder (the one holding EmoLabel/ and Image/)."""
    root = Path(path)
    bad = BadFiles(on_bad)
    if not isinstance(aligned, bool):
        raise RecipeError(f"data.options.aligned is {aligned!r}; expected true or false")
    val_fraction = opt.fraction("val_fraction", val_fraction, 0.0, 0.5, open_low=True)
    seed = opt.integer("seed", seed)
    listing = root / LIST_FILE
    if not listing.is_file():
        raise DataError(listing, "label list not found; pass the RAF-DB basic folder (holding EmoLabel/ and Image/)")
    entries = parse_label_list(listing, bad)
    ds = FerDataset(name="rafdb", class_names=RAFDB_CLASSES, source=str(root))
    for split in ("train", "test"):
        chosen = [(n, y) for s, n, y in entries if s == split]
        paths = [image_path(root, n, aligned) for n, _ in chosen]
        good = keep_good_images(paths, bad)
        if not good:
            raise DataError(listing, f"split {split!r} is empty: no usable {split}_* image")
        ds.splits[split] = Split(labels=np.asarray([chosen[i][1] for i in good], np.int64),
                                 paths=[paths[i] for i in good], names=[chosen[i][0] for i in good])
    ds.splits["train"], ds.splits["val"] = carve_val(ds.splits["train"], val_fraction, seed)
    if len(ds.splits["val"]) == 0:
        raise DataError(listing, "split 'val' is empty: too few training images to carve a validation split")
    ds.bad_files = bad.lines()
    return ds
