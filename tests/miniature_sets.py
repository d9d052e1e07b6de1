"""Writers of miniature data sets in the exact on-disk layouts of the real ones (facts: shared/reference).

Every image is a flat gray square whose value encodes its sample, so a test can check that the loader
returned the right picture with the right label (JPEG keeps flat blocks within a level or two).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FER_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # the release's folder names
KDEF_CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")
FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                  "contempt", "unknown", "NF"]


def save_flat(path: Path, value: int, size: tuple[int, int] = (48, 48), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(path)
    return path


def gray(path: Path | str) -> int:
    with Image.open(path) as im:
        return int(np.asarray(im.convert("L")).mean().round())


def write_fer_folders(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict[str, int]:
    """`train/<class>/Training_<n>.jpg` and `test/<class>/PrivateTest_<n>.jpg`; value = 20 + 30*label(FER) + k."""
    fer_order = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    values = {}
    n = 10000
    for split, prefix, count in (("train", "Training", train_per_class), ("test", "PrivateTest", test_per_class)):
        for folder in FER_FOLDERS:
            label = fer_order.index(folder)
            for k in range(count):
                n += 1
                name = f"{split}/{folder}/{prefix}_{n}.jpg"
                save_flat(root / name, 20 + 30 * label + k)
                values[name] = label
    return values


def ferplus_rows() -> list[tuple[str, str, list[int], int]]:
    """(Usage, Image name, ten votes, expected majority label or -1) rows in fer2013 order, incl. the odd cases."""
    rows = []
    i = 0
    for usage, per_class in (("Training", 3), ("PublicTest", 1), ("PrivateTest", 1)):
        for label in range(8):
            for _ in range(per_class):
                votes = [0] * 10
                votes[label] = 7
                votes[(label + 1) % 8] = 2
                votes[(label + 2) % 8] = 1  # a single vote: dropped by Microsoft's rule
                rows.append((usage, f"fer{i:07d}.png", votes, label))
                i += 1
        # The real file's odd rows: an empty name (skipped), unknown and NF winners, no majority (all discarded).
        rows.append((usage, "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0], -1))
        i += 1
        rows.append((usage, f"fer{i:07d}.png", [2, 0, 0, 0, 0, 0, 0, 0, 8, 0], -1))
        i += 1
        rows.append((usage, f"fer{i:07d}.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], -1))
        i += 1
        rows.append((usage, f"fer{i:07d}.png", [4, 3, 3, 0, 0, 0, 0, 0, 0, 0], -1))
        i += 1
    return rows


def write_ferplus(root: Path, pixels: str = "csv") -> list[tuple[str, str, list[int], int]]:
    """fer2013new.csv plus fer2013.csv (pixels="csv") or FER2013Train/Valid/Test PNGs (pixels="folders").
    Image value of row i is i*3 % 250 + 3."""
    rows = ferplus_rows()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(FERPLUS_HEADER)
        for usage, name, votes, _ in rows:
            w.writerow([usage, name, *votes])
    if pixels == "csv":
        with open(root / "fer2013.csv", "w", newline="") as fh:
            fh.write("emotion,pixels,Usage\n")
            for i, (usage, _, _, _) in enumerate(rows):
                fh.write(f"{i % 7},{' '.join([str(i * 3 % 250 + 3)] * 2304)},{usage}\n")
    else:
        folder = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
        for i, (usage, name, _, _) in enumerate(rows):
            if name:
                save_flat(root / "data" / folder[usage] / name, i * 3 % 250 + 3, mode="RGB")
    return rows


def kdef_name(session: str, identity: str, code: str, angle: str) -> str:
    return f"{session}{identity}{code}{angle}.JPG"


def write_kdef(root: Path, identities: tuple[str, ...] = ("F01", "F02", "F03", "M01", "M02", "M03"),
               sessions: tuple[str, ...] = ("A",), angles: tuple[str, ...] = KDEF_ANGLES) -> list[str]:
    """`<session><identity>/<session><identity><expr><angle>.JPG`, e.g. AF01/AF01ANFL.JPG and AF01/AF01ANS.JPG."""
    names = []
    for session in sessions:
        for ident in identities:
            for label, code in enumerate(KDEF_CODES):
                for angle in angles:
                    name = kdef_name(session, ident, code, angle)
                    save_flat(root / f"{session}{ident}" / name, 10 + 30 * label, size=(36, 48), mode="RGB")
                    names.append(name)
    return names


def write_rafdb(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict[str, int]:
    """EmoLabel/list_patition_label.txt (1-based labels) and Image/aligned/<stem>_aligned.jpg; value = 15 + 30*label."""
    lines, labels = [], {}
    for split, count, width in (("train", train_per_class, 5), ("test", test_per_class, 4)):
        n = 0
        for file_label in range(1, 8):
            for _ in range(count):
                n += 1
                name = f"{split}_{n:0{width}d}.jpg"
                lines.append(f"{name} {file_label}")
                labels[name] = file_label - 1
                save_flat(root / "Image" / "aligned" / f"{split}_{n:0{width}d}_aligned.jpg", 15 + 30 * (file_label - 1),
                          size=(40, 40), mode="RGB")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return labels


def write_image_folder(root: Path, classes: tuple[str, ...] = ("calm", "joy", "anger"), per_class: int = 4,
                       with_val: bool = False) -> None:
    """`<root>/train|test[/val]/<class>/<n>.png`; value = 40 + 60*label."""
    for split, count in (("train", per_class), ("test", 2), *((("val", 2),) if with_val else ())):
        for label, c in enumerate(classes):
            for k in range(count):
                save_flat(root / split / c / f"{k}.png", 40 + 60 * label, mode="RGB")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def recipe_copy(name: str, dst: Path, image_size: int = 32) -> Path:
    """A copy of recipes/<name>.toml sized for CPU tests (input size, workers); everything else as shipped."""
    text = (Path(__file__).parents[1] / "recipes" / f"{name}.toml").read_text()
    for old, new in (("image_size = 224", f"image_size = {image_size}"), ("num_workers = 4", "num_workers = 0")):
        assert old in text, f"recipes/{name}.toml no longer has {old!r}"
        text = text.replace(old, new)
    dst.write_text(text)
    return dst
