"""Writing the synthetic faces to disk as a data set: Kaggle's FER-2013 CSV (``emotion,pixels,Usage``).

`write_fer2013_csv` draws faces with `fuse_export.data.synthetic.generate_faces`, splits them per class into
Training / PublicTest / PrivateTest, and writes the file atomically (a temporary file renamed into place), so the
default data takes the same loader path (`fuse_export.data.fer2013`) as the real fer2013.csv would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fuse_export.data.synthetic import NUM_CLASSES, SyntheticSpec, generate_faces

USAGES = ("Training", "PublicTest", "PrivateTest")


def _split_usage(labels: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Usage index (0 Training, 1 PublicTest, 2 PrivateTest) per sample, stratified per class."""
    usage = np.empty(labels.size, dtype=np.int64)
    cum = np.cumsum(fractions)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)  # already shuffled, so taking them in order is a random split
        k = idx.size
        bounds = np.rint(cum * k).astype(int)
        # Every split gets at least one sample of every class, taken from the largest split.
        sizes = np.diff(np.concatenate([[0], bounds]))
        sizes[-1] = k - sizes[:-1].sum()
        for i in range(3):
            while sizes[i] < 1:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] += 1
        usage[idx] = np.repeat(np.arange(3), sizes)
    return usage


def write_fer2013_csv(path: str | os.PathLike, spec: SyntheticSpec,
                      fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, int]:
    """Generate faces and write them in the Kaggle FER-2013 CSV format. Returns counts per Usage.

    Rows are grouped Training, PublicTest, PrivateTest as in Kaggle's file. The file is written to a
    temporary name in the same directory and renamed into place, so it is either complete or absent.
    """
    if spec.image_size != 48:
        raise ValueError(f"FER-2013 CSV holds 48x48 images; spec.image_size is {spec.image_size}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    if spec.samples_per_class < 3:
        raise ValueError("samples_per_class must be >= 3 so every split has every class")

    images, labels, _ = generate_faces(spec)
    usage = _split_usage(labels, fractions)
    order = np.argsort(usage, kind="stable")
    tokens = [str(i) for i in range(256)]  # lookup beats str() per pixel by a wide margin
    lines = ["emotion,pixels,Usage\n"]
    flat = images.reshape(len(images), -1)
    for i in order.tolist():
        pixels = " ".join(map(tokens.__getitem__, flat[i].tolist()))
        lines.append(f"{labels[i]},{pixels},{USAGES[usage[i]]}\n")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                      delete=False, encoding="utf-8", newline="")
    try:
        with tmp:
            tmp.writelines(lines)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; a data file should be readable
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.unlink(tmp.name)
        except FileNotFoundError:
            pass
        raise
    return {name: int((usage == i).sum()) for i, name in enumerate(USAGES)}
