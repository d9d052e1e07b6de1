"""FER-2013 in Kaggle's CSV layout: `emotion,pixels,Usage`, 48x48 grayscale, labels 0 angry .. 6 neutral."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from fuse_export.contract import FER2013_CLASSES
from fuse_export.data.base import FerDataset, Split
from fuse_export.errors import DataError

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
PIXELS = 48 * 48
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")


def _parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    # np.fromstring in text mode is C-speed; it stops early on a bad token, which the count check catches.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(text, dtype=np.int32, sep=" ")
    if values.size != PIXELS or len(text.split()) != PIXELS:
        n = len(text.split())
        raise DataError(path, f"field 'pixels' has {n} values, expected {PIXELS} (48x48 grayscale)", line)
    if values.min() < 0 or values.max() > 255:
        raise DataError(path, "field 'pixels' has values outside 0..255", line)
    return values.astype(np.uint8)


def load_fer2013_csv(path: str | os.PathLike, require_splits: tuple[str, ...] = ("train", "val", "test")) -> FerDataset:
    """Load Kaggle's fer2013.csv (header names are matched with surrounding spaces stripped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found; pass the Kaggle fer2013.csv (columns emotion,pixels,Usage)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    images: list[np.ndarray] = []
    labels: list[int] = []
    usages: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(path, "file is empty; expected header emotion,pixels,Usage", 1)
            columns = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)}; header is {','.join(columns)!r}, "
                                "expected emotion,pixels,Usage", 1)
            ie, ip, iu = (columns.index(c) for c in REQUIRED_COLUMNS)
            for row in reader:
                line = reader.line_num
                if not row or all(not f.strip() for f in row):
                    continue
                if len(row) != len(columns):
                    raise DataError(path, f"row has {len(row)} fields, header has {len(columns)}", line)
                try:
                    label = int(row[ie])
                except ValueError:
                    raise DataError(path, f"field 'emotion' is {row[ie]!r}, expected an integer 0..6", line) from None
                if not 0 <= label < len(FER2013_CLASSES):
                    raise DataError(path, f"field 'emotion' is {label}, outside 0..6", line)
                usage = row[iu].strip()
                if usage not in USAGE_TO_SPLIT:
                    raise DataError(path, f"field 'Usage' is {usage!r}, expected Training, PublicTest or PrivateTest", line)
                images.append(_parse_pixels(row[ip], path, line))
                labels.append(label)
                usages.append(usage)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})") from None

    all_images = np.stack(images).reshape(-1, 48, 48) if images else np.zeros((0, 48, 48), np.uint8)
    all_labels = np.asarray(labels, dtype=np.int64)
    usage_arr = np.asarray(usages)
    ds = FerDataset(name="fer2013", class_names=FER2013_CLASSES, source=str(path))
    for usage, split in USAGE_TO_SPLIT.items():
        idx = np.flatnonzero(usage_arr == usage)
        ds.splits[split] = Split(labels=all_labels[idx], images=all_images[idx], names=[f"row{i + 2}" for i in idx])
    for split in require_splits:
        if len(ds.splits[split]) == 0:
            usage = next(u for u, s in USAGE_TO_SPLIT.items() if s == split)
            raise DataError(path, f"split {split!r} is empty: no row has Usage {usage}")
    return ds
