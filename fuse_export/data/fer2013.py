"""FER-2013 in Kaggle's CSV layout: `emotion,pixels,Usage`, 48x48 grayscale, labels 0 angry .. 6 neutral."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse_export.contract import FER2013_CLASSES
from fuse_export.data.badfiles import BadFiles
from fuse_export.data.base import FerDataset, Split, csv_errors
from fuse_export.errors import DataError

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
PIXELS = 48 * 48
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")


class RowError(ValueError):
    """A problem with one row (reported under the bad-input policy)."""


def _parse_pixels(text: str) -> np.ndarray:
    """2304 integers 0..255 separated by whitespace -> uint8 [2304]; anything else is a RowError."""
    # np.fromstring in text mode is C-speed. int64, because it clamps an overlong token rather than wrapping it
    # into 0..255. On text it cannot read to the end it warns (older NumPy) or raises (newer); either way, and
    # for signs (which it would accept), the careful path decides and explains.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:
            values = None
    if values is None or caught or values.size != PIXELS or not text.isascii() or "+" in text or "-" in text:
        return _parse_pixels_careful(text)
    if values.min() < 0 or values.max() > 255:
        raise RowError("field 'pixels' has values outside 0..255")
    return values.astype(np.uint8)


def _parse_pixels_careful(text: str) -> np.ndarray:
    """Any whitespace between tokens is accepted here; each token must be 1-3 ASCII digits."""
    tokens = text.split()
    if len(tokens) != PIXELS:
        raise RowError(f"field 'pixels' has {len(tokens)} values, expected {PIXELS} (48x48 grayscale)")
    if not all(t.isascii() and t.isdigit() for t in tokens):
        raise RowError(f"field 'pixels' must be {PIXELS} integers 0..255 separated by spaces")
    if any(len(t.lstrip("0")) > 3 for t in tokens):  # also keeps int() away from huge digit strings
        raise RowError("field 'pixels' has values outside 0..255")
    values = np.array([int(t) for t in tokens], dtype=np.int64)
    if values.max() > 255:
        raise RowError("field 'pixels' has values outside 0..255")
    return values.astype(np.uint8)


@dataclass
class Fer2013Rows:
    """The file's rows in file order (rows that were skipped as bad are absent; `lines` says which remain)."""

    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N]
    usages: np.ndarray  # str [N]
    lines: np.ndarray  # int64 [N], 1-based line numbers in the file


def _parse_row(row: list[str], ncols: int, ie: int, ip: int, iu: int) -> tuple[int, np.ndarray, str]:
    if len(row) != ncols:
        raise RowError(f"row has {len(row)} fields, header has {ncols}")
    text = row[ie].strip()
    # int() alone would also take "0_3" or non-ASCII digits; a label is plain ASCII digits.
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise RowError(f"field 'emotion' is {row[ie][:20]!r}, expected an integer 0..6")
    label = int(text)
    if not 0 <= label < len(FER2013_CLASSES):
        raise RowError(f"field 'emotion' is {label}, outside 0..6")
    usage = row[iu].strip()
    if usage not in USAGE_TO_SPLIT:
        raise RowError(f"field 'Usage' is {usage!r}, expected Training, PublicTest or PrivateTest")
    return label, _parse_pixels(row[ip]), usage


def read_fer2013_rows(path: str | os.PathLike, bad: BadFiles | None = None) -> Fer2013Rows:
    """Parse every row of a Kaggle fer2013.csv (header names are matched with surrounding spaces stripped)."""
    path = Path(path)
    bad = bad or BadFiles("fail")
    if not path.is_file():
        raise DataError(path, "file not found; pass the Kaggle fer2013.csv (columns emotion,pixels,Usage)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    images: list[np.ndarray] = []
    labels: list[int] = []
    usages: list[str] = []
    lines: list[int] = []
    with csv_errors(path):
        # utf-8-sig: Excel writes a byte-order mark before the header; it is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(path, "file is empty; expected header emotion,pixels,Usage", 1)
            columns = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}; header is {','.join(columns)!r}, "
                                "expected emotion,pixels,Usage", 1)
            twice = [c for c in REQUIRED_COLUMNS if columns.count(c) > 1]
            if twice:  # which one holds the data would be a guess
                raise DataError(path, f"column {twice[0]!r} appears {columns.count(twice[0])} times in the header "
                                f"{','.join(columns)!r}; keep one", 1)
            ie, ip, iu = (columns.index(c) for c in REQUIRED_COLUMNS)
            for row in reader:
                line = reader.line_num
                if not row or all(not f.strip() for f in row):
                    continue
                try:
                    label, pixels, usage = _parse_row(row, len(columns), ie, ip, iu)
                except RowError as exc:
                    bad.report(path, str(exc), line)
                    continue
                images.append(pixels)
                labels.append(label)
                usages.append(usage)
                lines.append(line)
    return Fer2013Rows(
        images=np.stack(images).reshape(-1, 48, 48) if images else np.zeros((0, 48, 48), np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        usages=np.asarray(usages, dtype=str),
        lines=np.asarray(lines, dtype=np.int64),
    )


def load_fer2013_csv(path: str | os.PathLike, require_splits: tuple[str, ...] = ("train", "val", "test"),
                     on_bad: str = "fail") -> FerDataset:
    """Load Kaggle's fer2013.csv: Training -> train, PublicTest -> val, PrivateTest -> test."""
    bad = BadFiles(on_bad)
    rows = read_fer2013_rows(path, bad)
    ds = FerDataset(name="fer2013", class_names=FER2013_CLASSES, source=str(path), color_mode="gray")  # 48x48 gray
    for usage, split in USAGE_TO_SPLIT.items():
        idx = np.flatnonzero(rows.usages == usage)
        ds.splits[split] = Split(labels=rows.labels[idx], images=rows.images[idx],
                                 names=[f"row{line}" for line in rows.lines[idx].tolist()])
    for split in require_splits:
        if len(ds.splits[split]) == 0:
            usage = next(u for u, s in USAGE_TO_SPLIT.items() if s == split)
            raise DataError(path, f"split {split!r} is empty: no row has Usage {usage}")
    ds.bad_files = bad.lines()
    return ds
