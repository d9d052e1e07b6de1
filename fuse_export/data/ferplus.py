"""FERPlus (microsoft/FERPlus): `fer2013new.csv` votes joined with the FER-2013 pixels or the FERPlus folders.

`fer2013new.csv` has one row per FER-2013 row, in the same order: `Usage, Image name`, then ten vote counts
(neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF). Rows with an empty
image name (173 in the real file) are skipped and counted. Pixels come from Kaggle's fer2013.csv (joined
row by row; the Usage of every row must agree) or from the folders FER2013Train/FER2013Valid/FER2013Test
holding `ferXXXXXXX.png` as microsoft's generate_training_data.py writes them.

Modes:
- majority (Microsoft's rule): drop single votes, keep the top emotion only if it has more than half of
  the remaining votes (unknown and NF count); samples that end up unknown or not-a-face are discarded.
- soft: the same outlier removal, then the vote distribution over the 8 emotions as soft targets; the hard
  label is its top class. Samples whose top vote is unknown/NF, or with no emotion votes left, are discarded.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fuse_export.data import options as opt
from fuse_export.data.badfiles import BadFiles, keep_good_images
from fuse_export.data.base import SPLITS, FerDataset, Split, csv_errors
from fuse_export.data.fer2013 import USAGE_TO_SPLIT, read_fer2013_rows
from fuse_export.errors import DataError

FERPLUS_CLASSES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                    "contempt")
VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")
SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
MODES = ("majority", "soft")


def clean_votes(votes: np.ndarray) -> np.ndarray:
    """Microsoft's outlier removal: a category with a single vote gets none. votes: [N, 10]."""
    return np.where(votes <= 1, 0, votes)


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """Microsoft's majority rule per row: the top category if it holds more than half of the cleaned votes, else -1.
    Rows whose winner is unknown or NF are -1 too (discarded)."""
    v = clean_votes(votes).astype(np.float64)
    top = v.argmax(axis=1)
    wins = v.max(axis=1) > 0.5 * v.sum(axis=1)
    return np.where(wins & (top < len(FERPLUS_CLASSES)), top, -1)


def soft_targets(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distribution over the 8 emotions [N, 8] float32, hard label or -1 for discarded rows)."""
    v = clean_votes(votes).astype(np.float64)
    emotions = v[:, : len(FERPLUS_CLASSES)]
    total = emotions.sum(axis=1, keepdims=True)
    dist = np.divide(emotions, total, out=np.zeros_like(emotions), where=total > 0).astype(np.float32)
    # First-max argmax over all ten columns: an unknown/NF tie with an emotion goes to the emotion (earlier column).
    keep = (total[:, 0] > 0) & (v.argmax(axis=1) < len(FERPLUS_CLASSES))
    return dist, np.where(keep, emotions.argmax(axis=1), -1)


def _row_problem(usage: str, name: str, counts: list[int] | None) -> str | None:
    if usage not in USAGE_TO_SPLIT:
        return f"field 'Usage' is {usage[:40]!r}, expected Training, PublicTest or PrivateTest"
    if counts is None or min(counts) < 0:
        return "vote counts must be integers >= 0"
    if Path(name).name != name or name in ("..", "."):
        return f"image name {name[:40]!r} is not a plain file name"
    return None


def read_votes(path: Path, bad: BadFiles) -> tuple[list[str], list[str], np.ndarray, list[int], int]:
    """(usages, image names, votes [N, 10], line numbers, empty-name count) of every row, in file order."""
    usages: list[str] = []
    names: list[str] = []
    votes: list[list[int]] = []
    lines: list[int] = []
    with csv_errors(path):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            expected = ["Usage", "Image name", *VOTE_COLUMNS]
            if header != expected:
                raise DataError(path, f"header is {','.join(header)!r}; expected {','.join(expected)}", 1)
            for row in reader:
                if not row or all(not f.strip() for f in row):
                    continue
                line = reader.line_num
                if len(row) != len(expected):
                    bad.report(path, f"row has {len(row)} fields, header has {len(expected)}", line)
                    usages.append("")  # keep row alignment with fer2013.csv; the row is unusable
                    names.append("")
                    votes.append([0] * len(VOTE_COLUMNS))
                    lines.append(line)
                    continue
                usage, name = row[0].strip(), row[1].strip()
                try:
                    counts = [int(v) for v in row[2:]]
                except ValueError:
                    counts = None
                what = _row_problem(usage, name, counts)
                if what is not None:
                    bad.report(path, what, line)
                    usage, name, counts = "", "", [0] * len(VOTE_COLUMNS)
                usages.append(usage)
                names.append(name)
                votes.append(counts)
                lines.append(line)
    arr = np.asarray(votes, dtype=np.int64).reshape(-1, len(VOTE_COLUMNS))
    empty = sum(1 for u, n in zip(usages, names) if u and not n)
    return usages, names, arr, lines, empty


def _find(root: Path, name: str) -> Path | None:
    for p in (root / name, root / "data" / name):
        if p.exists():
            return p
    return None


def load_ferplus(path: str | os.PathLike, mode: str = "majority", fer2013_csv: str = "", image_root: str = "",
                 on_bad: str = "fail") -> FerDataset:
    """Load FERPlus from `path` (fer2013new.csv, or the folder holding it) with pixels from fer2013.csv or folders."""
    mode = opt.choice("mode", mode, MODES)
    bad = BadFiles(on_bad)
    path = Path(path)
    votes_csv = path / "fer2013new.csv" if path.is_dir() else path
    if not votes_csv.is_file():
        raise DataError(votes_csv, "file not found; pass microsoft/FERPlus' fer2013new.csv or its folder")
    root = votes_csv.parent
    usages, names, votes, lines, empty = read_votes(votes_csv, bad)
    pixels_csv = Path(fer2013_csv) if fer2013_csv else _find(root, "fer2013.csv")
    folders = Path(image_root) if image_root else None
    if folders is None and pixels_csv is None:
        found = _find(root, SPLIT_FOLDERS["train"])
        folders = found.parent if found is not None else None
    if pixels_csv is None and folders is None:
        raise DataError(root, "no pixels: put Kaggle's fer2013.csv or the FER2013Train/FER2013Valid/FER2013Test "
                              "folders next to fer2013new.csv (or set data.options.fer2013_csv / image_root)")

    if mode == "majority":
        hard, dist = majority_labels(votes), None
    else:
        dist, hard = soft_targets(votes)
    named = np.asarray([bool(u and n) for u, n in zip(usages, names)], dtype=bool)
    seen: dict[str, int] = {}
    for i in np.flatnonzero(named):
        if names[i] in seen:
            bad.report(votes_csv, f"image name {names[i]!r} appears twice (first on line {lines[seen[names[i]]]})",
                       lines[i])
            named[i] = False
        else:
            seen[names[i]] = i
    usable = named & (hard >= 0)
    usage_arr = np.asarray(usages)
    split_rows = {split: np.flatnonzero(usable & (usage_arr == usage)) for usage, split in USAGE_TO_SPLIT.items()}
    ds = FerDataset(name="ferplus", class_names=FERPLUS_CLASSES, source=str(votes_csv), color_mode="gray")  # FER-2013's pixels
    ds.skipped = {"empty image name": empty, "unknown or not a face": int((named & (hard < 0)).sum())}

    images: dict[str, np.ndarray] = {}
    paths: dict[str, list[Path]] = {}
    if folders is None:
        assert pixels_csv is not None  # checked above; this narrows the type
        rows = read_fer2013_rows(pixels_csv, BadFiles("fail"))  # a skipped pixel row would break the row join
        if len(rows.labels) != len(usages):
            raise DataError(pixels_csv, f"{len(rows.labels)} rows, but {votes_csv.name} has {len(usages)}; "
                                        "the files must be the same release (35,887 rows, same order)")
        for i in np.flatnonzero((usage_arr != rows.usages) & (usage_arr != "")):
            raise DataError(votes_csv, f"Usage {usages[i]!r} differs from {pixels_csv.name} line {rows.lines[i]} "
                                       f"({rows.usages[i]!r}): the files are not in the same row order", lines[i])
        images = {split: rows.images[idx] for split, idx in split_rows.items()}
    else:
        for split, idx in split_rows.items():
            folder = folders / SPLIT_FOLDERS[split]
            if not folder.is_dir():
                raise DataError(folder, f"folder not found; expected {', '.join(SPLIT_FOLDERS.values())} under "
                                        f"{folders}")
            candidates = [folder / names[i] for i in idx]
            good = keep_good_images(candidates, bad)
            split_rows[split], paths[split] = idx[good], [candidates[g] for g in good]

    for split in SPLITS:
        idx = split_rows[split]
        if len(idx) == 0:
            raise DataError(votes_csv, f"split {split!r} is empty after discarding unknown/not-a-face rows")
        ds.splits[split] = Split(labels=hard[idx], images=images.get(split), paths=paths.get(split),
                                 soft_targets=None if dist is None else dist[idx], names=[names[i] for i in idx])
    ds.bad_files = bad.lines()
    return ds
