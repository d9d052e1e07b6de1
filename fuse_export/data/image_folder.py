"""A generic image folder: `<root>/<split>/<class>/<image>`, with a class list, for users' own data.

Split folders: train (also training, Training), val (valid, validation, PublicTest, optional: carved from
train when absent), test (testing, PrivateTest). The class list comes from the `classes` option, else
`<root>/classes.txt` (one name a line), else the sorted class folder names under train; its order is the
label order the model carries. Class folders match names case-insensitively. Every image is opened and
decoded at load time; a bad one fails the load (or is skipped and listed, with on_bad = "skip").
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fuse_export.data import options as opt
from fuse_export.data.badfiles import IMAGE_SUFFIXES, BadFiles, keep_good_images
from fuse_export.data.base import SPLITS, FerDataset, Split
from fuse_export.data.splitting import carve_val
from fuse_export.errors import DataError

SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "publictest"),
    "test": ("test", "testing", "privatetest"),
}


def _visible_entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(folder, f"cannot list folder ({exc.strerror or exc})") from None


def find_split_dirs(root: Path) -> dict[str, Path]:
    """The split folders present under `root`, by split name (folder names match case-insensitively)."""
    if not root.is_dir():
        raise DataError(root, "folder not found; expected <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg")
    found: dict[str, Path] = {}
    for p in _visible_entries(root):
        for split, names in SPLIT_DIRS.items():
            if p.is_dir() and p.name.lower() in names:
                if split in found:
                    raise DataError(p, f"two folders for split {split!r}: {found[split].name} and {p.name}")
                found[split] = p
    return found


def scan_split(folder: Path, class_index: Mapping[str, int], bad: BadFiles) -> tuple[list[Path], list[int]]:
    """Image paths and labels of one split folder; stray files, unknown class folders and non-images are bad."""
    paths: list[Path] = []
    labels: list[int] = []
    expected = ", ".join(sorted(class_index))
    for entry in _visible_entries(folder):
        if not entry.is_dir():
            bad.report(entry, "file outside the class folders (expected <split>/<class>/<image>)")
            continue
        label = class_index.get(entry.name.lower())
        if label is None:
            count = sum(1 for _ in entry.rglob("*"))
            bad.report(entry, f"unknown class folder {entry.name!r} ({count} entries); expected one of: {expected}")
            continue
        for f in _visible_entries(entry):
            if f.is_dir():
                bad.report(f, "unexpected folder inside a class folder (expected image files)")
            elif f.suffix.lower() not in IMAGE_SUFFIXES:
                bad.report(f, f"not an image file (suffix {f.suffix or 'none'!r}; expected one of "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            else:
                paths.append(f)
                labels.append(label)
    good = keep_good_images(paths, bad)
    return [paths[i] for i in good], [labels[i] for i in good]


def read_class_list(root: Path, classes: object, train_dir: Path) -> list[str]:
    """The class names in label order: the option, else classes.txt, else sorted train class folders."""
    if classes is not None:
        return opt.name_list("classes", classes)
    listing = root / "classes.txt"
    if listing.is_file():
        try:
            names = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(listing, f"cannot read the class list ({exc})") from None
        if not names or len({n.lower() for n in names}) != len(names):
            raise DataError(listing, "class list must name at least one class, each once")
        return names
    names = [p.name for p in _visible_entries(train_dir) if p.is_dir()]
    if not names:
        raise DataError(train_dir, "no class folders; expected train/<class>/<image>")
    return names


def build_folder_dataset(name: str, root: Path, class_names: Sequence[str], class_index: Mapping[str, int],
                         val_fraction: float, seed: int, bad: BadFiles) -> FerDataset:
    """Scan every split folder, carve val from train when there is no val folder, and check no split is empty."""
    dirs = find_split_dirs(root)
    for split in ("train", "test"):
        if split not in dirs:
            raise DataError(root, f"no {split} folder; expected one of {', '.join(SPLIT_DIRS[split])} "
                                  f"holding <class>/<image> folders")
    ds = FerDataset(name=name, class_names=tuple(class_names), source=str(root))
    for split, folder in dirs.items():
        paths, labels = scan_split(folder, class_index, bad)
        if not paths:
            raise DataError(folder, f"split {split!r} has no usable images")
        ds.splits[split] = Split(labels=np.asarray(labels, np.int64), paths=paths,
                                 names=[str(p.relative_to(root)) for p in paths])
    if "val" not in ds.splits:
        ds.splits["train"], ds.splits["val"] = carve_val(ds.splits["train"], val_fraction, seed)
    missing = [class_names[c] for c in range(len(class_names)) if not np.any(ds.splits["train"].labels == c)]
    if missing:
        raise DataError(dirs["train"], f"class(es) {', '.join(missing)} have no training images")
    for split in SPLITS:
        if len(ds.splits[split]) == 0:
            raise DataError(root, f"split {split!r} is empty")
    ds.bad_files = bad.lines()
    return ds


def load_image_folder(path: str | os.PathLike, classes: object = None, val_fraction: float = 0.1, seed: int = 0,
                      on_bad: str = "fail") -> FerDataset:
    """Load `<path>/<split>/<class>/<image>` with the class list from `classes`, classes.txt or the folders."""
    root = Path(path)
    bad = BadFiles(on_bad)
    val_fraction = opt.fraction("val_fraction", val_fraction, 0.0, 0.5, open_low=True)
    seed = opt.integer("seed", seed)
    train_dir = find_split_dirs(root).get("train")
    if train_dir is None:
        raise DataError(root, f"no train folder; expected one of {', '.join(SPLIT_DIRS['train'])}")
    names = read_class_list(root, classes, train_dir)
    index = {n.lower(): i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise DataError(root, f"class names {names} repeat (names match case-insensitively)")
    return build_folder_dataset("image-folder", root, names, index, val_fraction, seed, bad)
