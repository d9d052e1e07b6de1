"""KDEF (Karolinska Directed Emotional Faces): `AF01ANFL.JPG`-style files, split by identity.

A name is session (A/B), gender (F/M), identity number (01-35), expression (AF AN DI HA NE SA SU) and angle
(FL HL S HR FR; straight is the single letter S, e.g. `AF01ANS.JPG`). A person is gender + number (F01):
both sessions of F01 are the same person. Splits are subject-independent: identities are dealt into
`folds` folds (genders spread evenly, seeded), fold `fold` is test, and a validation share of the other
identities is held out, so no person appears in two splits. Run folds 0..k-1 for the papers' k-fold
protocol. Image files whose names do not parse are reported (an error, or skipped and listed).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from fuse_export.data import options as opt
from fuse_export.data.badfiles import BadFiles, keep_good_images
from fuse_export.data.base import FerDataset, Split
from fuse_export.data.splitting import group_splits
from fuse_export.errors import DataError, RecipeError

KDEF_CODES: tuple[str, ...] = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
KDEF_CLASSES: tuple[str, ...] = ("afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised")
ANGLES: tuple[str, ...] = ("FL", "HL", "S", "HR", "FR")
NAME_PATTERN = re.compile(r"([AB])([FM])(\d\d)(AF|AN|DI|HA|NE|SA|SU)(FL|FR|HL|HR|S)\.jpe?g", re.IGNORECASE)
# Suffixes of files that are meant to be pictures; anything else in the tree (ReadMe files) is not ours.
_PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def parse_kdef_name(name: str) -> tuple[str, str, int, str] | None:
    """(session, identity e.g. 'F01', label, angle) from a file name, or None when it is not a KDEF name."""
    m = NAME_PATTERN.fullmatch(name)
    if m is None:
        return None
    session, gender, number, expression, angle = (g.upper() for g in m.groups())
    if number == "00":
        return None
    return session, gender + number, KDEF_CODES.index(expression), angle


def parse_angles(value: object) -> list[str]:
    angles = [a.upper() for a in opt.name_list("angles", value)]
    unknown = [a for a in angles if a not in ANGLES]
    if unknown:
        raise RecipeError(f"data.options.angles: unknown angle(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(ANGLES)} (S is straight)")
    return angles


def scan_kdef(root: Path, angles: list[str], bad: BadFiles) -> tuple[list[Path], list[int], list[str]]:
    """Paths, labels and identities of the KDEF pictures under `root` with one of `angles`."""
    if not root.is_dir():
        raise DataError(root, "folder not found; pass the KDEF folder (the one holding AF01/, AM01/, ...)")
    paths: list[Path] = []
    labels: list[int] = []
    identities: list[str] = []
    seen: dict[str, Path] = {}
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(root, f"cannot list folder ({exc.strerror or exc})") from None
    for p in files:
        if p.suffix.lower() not in _PICTURE_SUFFIXES:
            continue
        parsed = parse_kdef_name(p.name)
        if parsed is None:
            bad.report(p, "file name does not parse as KDEF <session A|B><gender F|M><01-35><AF|AN|DI|HA|NE|SA|SU>"
                          "<FL|HL|S|HR|FR>.JPG (e.g. AF01ANFL.JPG)")
            continue
        key = p.stem.upper()
        if key in seen:
            bad.report(p, f"duplicate picture: {seen[key]} has the same name")
            continue
        seen[key] = p
        _, identity, label, angle = parsed
        if angle in angles:
            paths.append(p)
            labels.append(label)
            identities.append(identity)
    good = keep_good_images(paths, bad)
    return [paths[i] for i in good], [labels[i] for i in good], [identities[i] for i in good]


def load_kdef(path: str | os.PathLike, angles: object = ANGLES, folds: int = 5, fold: int = 0,
              val_fraction: float = 0.1, seed: int = 0, on_bad: str = "fail") -> FerDataset:
    """Load KDEF with subject-independent train/val/test splits (test = fold `fold` of `folds` by identity)."""
    root = Path(path)
    bad = BadFiles(on_bad)
    wanted = parse_angles(angles)
    folds, fold, seed = opt.integer("folds", folds, 2), opt.integer("fold", fold), opt.integer("seed", seed)
    val_fraction = opt.fraction("val_fraction", val_fraction, 0.0, 0.5, open_low=True)
    paths, labels, identities = scan_kdef(root, wanted, bad)
    people = sorted(set(identities))
    if len(people) < 3:
        raise DataError(root, f"{len(paths)} usable pictures of {len(people)} identities at angles "
                              f"{','.join(wanted)}; need at least 3 identities for train, val and test")
    if folds <= len(people) and len(people) - len(people[fold::folds]) < 2:
        raise DataError(root, f"{len(people)} identities are too few for {folds} folds plus a validation split; "
                              "lower data.options.folds or add identities")
    index = group_splits(identities, folds, fold, val_fraction, seed, strata={p: p[0] for p in people})
    all_split = Split(labels=np.asarray(labels, np.int64), paths=paths, groups=np.asarray(identities),
                      names=[str(p.relative_to(root)) for p in paths])
    ds = FerDataset(name="kdef", class_names=KDEF_CLASSES, source=str(root))
    for split, idx in index.items():
        if len(idx) == 0:
            raise DataError(root, f"split {split!r} is empty")
        ds.splits[split] = all_split.subset(idx)
    ds.bad_files = bad.lines()
    return ds
