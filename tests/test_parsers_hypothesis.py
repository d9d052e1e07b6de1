"""Property tests: malformed rows, names and files thrown at every parser end in the project's own error
(DataError, or CheckpointError for weights) or in a correct load, never in an unhandled exception."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from miniature_sets import FERPLUS_HEADER, save_flat
from PIL import Image

from fuse_export.data.badfiles import image_problem
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.data.ferplus import load_ferplus
from fuse_export.data.image_folder import load_image_folder
from fuse_export.data.kdef import load_kdef, parse_kdef_name
from fuse_export.data.rafdb import load_rafdb
from fuse_export.errors import CheckpointError, DataError
from fuse_export.model.backbone import ResNet18Trunk
from fuse_export.model.weights import load_backbone_weights

# 60 examples each keeps the file at seconds; FUSE_HYPOTHESIS_EXAMPLES=1000 digs deeper.
SETTINGS = settings(max_examples=int(os.environ.get("FUSE_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow], database=None)

# Text that looks almost right: the characters real files are made of, plus a few that break things.
csv_chars = st.sampled_from(list("0123456789 ,\"\n\r\t-+.xé\x00"))
csv_words = st.lists(st.one_of(st.text(csv_chars, max_size=6), st.sampled_from(["Training", "PublicTest", "PrivateTest",
                                                                                "emotion,pixels,Usage\n"])),
                     max_size=40).map("".join)
fields = st.one_of(st.text(max_size=12), st.integers(-3, 300).map(str), st.sampled_from(["", " ", "Training", "7"]))


def in_tmp(fn: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as d:
        fn(Path(d))


def load_or_data_error(load: Callable[[], object]) -> object | None:
    try:
        return load()
    except DataError as exc:
        assert str(exc) and exc.path  # the message names the file
        return None


def pixels_field(draw) -> str:
    kind = draw(st.sampled_from(["good", "short", "junk", "range", "spaces"]))
    values = draw(st.lists(st.integers(0, 255), min_size=1, max_size=4))
    good = " ".join(str(values[i % len(values)]) for i in range(2304))
    return {"good": good, "short": good.rsplit(" ", draw(st.integers(1, 5)))[0],
            "junk": good.replace(" ", draw(st.sampled_from([" x", "  ", "+", "-", "\t", ".5 ", "é"])), 1),
            "range": good.replace(str(values[0]), draw(st.sampled_from(["256", "-1", "99999999999999999999999", "1e3",
                                                                         "4294967301", "0005", "0256"])), 1),
            "spaces": f" {good} "}[kind]


@st.composite
def fer_rows(draw) -> str:
    header = draw(st.sampled_from(["emotion,pixels,Usage", "emotion, Usage, pixels", "emotion,pixels", "Usage,pixels,emotion"]))
    cols = [c.strip() for c in header.split(",")]
    lines = [header]
    for _ in range(draw(st.integers(0, 6))):
        row = {"emotion": draw(st.one_of(st.integers(-2, 9).map(str), fields)),
               "pixels": pixels_field(draw), "Usage": draw(st.one_of(st.sampled_from(["Training", "PublicTest",
                                                                                      "PrivateTest"]), fields))}
        values = [row.get(c, "") for c in cols]
        if draw(st.booleans()):
            values = values[: draw(st.integers(0, len(values)))]
        lines.append(",".join(f'"{v}"' if draw(st.booleans()) and '"' not in v else v for v in values))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n", "\r\n"]))


def fer_oracle(text: str) -> tuple[dict[str, list[tuple[int, list[int]]]], int] | None:
    """An independent reading of Kaggle's format: good rows by split, the count of bad rows; None: bad header."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or any(c not in [h.strip() for h in rows[0]] for c in ("emotion", "pixels", "Usage")):
        return None
    cols = [h.strip() for h in rows[0]]
    good: dict[str, list[tuple[int, list[int]]]] = {"Training": [], "PublicTest": [], "PrivateTest": []}
    bad = 0
    for row in rows[1:]:
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(cols):
            bad += 1
            continue
        emotion, pixels, usage = (row[cols.index(c)] for c in ("emotion", "pixels", "Usage"))
        tokens = pixels.split()
        ok = (emotion.strip().isascii() and emotion.strip().isdigit() and int(emotion.strip()) < 7
              and usage.strip() in good and len(tokens) == 2304
              and all(t.isascii() and t.isdigit() and int(t) <= 255 for t in tokens))
        if ok:
            good[usage.strip()].append((int(emotion.strip()), [int(t) for t in tokens]))
        else:
            bad += 1
    return good, bad


@SETTINGS
@given(text=fer_rows(), on_bad=st.sampled_from(["fail", "skip"]))
def test_fer2013_csv_rows(text, on_bad):
    expected = fer_oracle(text)

    def check(d: Path) -> None:
        (d / "f.csv").write_text(text)
        ds = load_or_data_error(lambda: load_fer2013_csv(d / "f.csv", require_splits=(), on_bad=on_bad))
        if expected is None or (on_bad == "fail" and expected[1]):
            assert ds is None  # a bad header, or a bad row under "fail": an error, never a load
            return
        assert ds is not None
        assert len(ds.bad_files) == expected[1]
        for usage, split in (("Training", "train"), ("PublicTest", "val"), ("PrivateTest", "test")):
            s = ds.splits[split]
            assert s.labels.tolist() == [label for label, _ in expected[0][usage]]
            assert s.images.reshape(len(s), 2304).tolist() == [px for _, px in expected[0][usage]]
    in_tmp(check)


@SETTINGS
@given(data=st.binary(max_size=300) | csv_words.map(str.encode))
def test_fer2013_csv_arbitrary_bytes(data):
    def check(d: Path) -> None:
        (d / "f.csv").write_bytes(data)
        load_or_data_error(lambda: load_fer2013_csv(d / "f.csv", require_splits=()))
    in_tmp(check)


@st.composite
def ferplus_files(draw) -> tuple[str, int]:
    header = ",".join(FERPLUS_HEADER if draw(st.integers(0, 9)) else FERPLUS_HEADER[:-1])
    lines = [header]
    n = draw(st.integers(0, 9))
    usages = ["Training", "PublicTest", "PrivateTest"]
    for i in range(n):
        odd = draw(st.integers(0, 5)) == 0  # most rows well formed, so that loads succeed too
        usage = draw(fields) if odd and draw(st.booleans()) else usages[i % 3]
        name = draw(st.sampled_from(["", "fer0000000.png", "x"]) | fields) if odd else f"fer{i:07d}.png"
        votes = [str(v) for v in draw(st.lists(st.integers(0, 10), min_size=10, max_size=10))]
        if odd and draw(st.booleans()):
            votes = draw(st.lists(st.one_of(st.integers(-1, 10).map(str), fields), min_size=8, max_size=11))
        lines.append(",".join([usage, name, *votes]))
    return "\n".join(lines) + "\n", n + draw(st.sampled_from([0, 0, 0, -1, 1]))


@SETTINGS
@given(spec=ferplus_files(), on_bad=st.sampled_from(["fail", "skip"]), mode=st.sampled_from(["majority", "soft"]))
def test_ferplus_votes_rows(spec, on_bad, mode):
    text, pixel_rows = spec

    def check(d: Path) -> None:
        (d / "fer2013new.csv").write_text(text)
        usages = ["Training", "PublicTest", "PrivateTest"]
        rows = [f"{i % 7},{' '.join(['9'] * 2304)},{usages[i % 3]}" for i in range(max(pixel_rows, 0))]
        (d / "fer2013.csv").write_text("\n".join(["emotion,pixels,Usage", *rows]) + "\n")
        ds = load_or_data_error(lambda: load_ferplus(d, mode=mode, on_bad=on_bad))
        if ds is not None:
            for s in ds.splits.values():
                assert np.all((s.labels >= 0) & (s.labels < 8)) and len(s) > 0
                if mode == "soft":
                    assert np.allclose(s.soft_targets.sum(1), 1.0)
    in_tmp(check)


@st.composite
def raf_lists(draw) -> str:
    good = ["train_00001.jpg", "train_00002.jpg", "train_00003.jpg", "test_0001.jpg", "test_0002.jpg"]
    odd_names = ["val_0001.jpg", "train_9.jpg", "../train_00001.jpg", "train_00001.jpg", "test_0003.jpg"]
    lines = [f"{name} {draw(st.sampled_from(['1', '1', '2']))}" for name in draw(st.permutations(good))]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):  # a few odd lines among good ones
        name = draw(st.one_of(st.sampled_from(odd_names), fields))
        label = draw(st.one_of(st.integers(-1, 9).map(str), fields))
        sep = draw(st.sampled_from([" ", "\t", "  ", ",", ""]))
        lines.insert(draw(st.integers(0, len(lines))), f"{name}{sep}{label}")
    return "\n".join(lines)


@SETTINGS
@given(listing=raf_lists() | st.text(max_size=80), on_bad=st.sampled_from(["fail", "skip"]))
def test_rafdb_label_lists(listing, on_bad):
    def check(d: Path) -> None:
        (d / "EmoLabel").mkdir()
        (d / "EmoLabel" / "list_patition_label.txt").write_text(listing)
        for stem in ("train_00001", "train_00002", "train_00003", "test_0001", "test_0002"):  # not test_0003
            save_flat(d / "Image" / "aligned" / f"{stem}_aligned.jpg", 100, size=(8, 8))
        ds = load_or_data_error(lambda: load_rafdb(d, on_bad=on_bad))
        if ds is not None:
            assert all(len(s) > 0 and np.all((s.labels >= 0) & (s.labels < 7)) for s in ds.splits.values())
    in_tmp(check)


kdef_valid = st.builds(lambda *parts: "".join(parts), st.sampled_from(["A", "B"]), st.sampled_from(["F", "M"]),
                       st.sampled_from(["01", "02", "03"]), st.sampled_from(["AF", "AN", "HA"]),
                       st.sampled_from(["S", "HL"]), st.sampled_from([".JPG", ".jpg"]))
kdef_like = st.builds(lambda *parts: "".join(parts), st.sampled_from(["A", "B", "C", "a", ""]),
                      st.sampled_from(["F", "M", "X", "f"]), st.sampled_from(["01", "02", "03", "04", "1", "00", "35"]),
                      st.sampled_from(["AF", "AN", "DI", "HA", "NE", "SA", "SU", "XX", "ha"]),
                      st.sampled_from(["FL", "HL", "S", "HR", "FR", "V", "H", ""]),
                      st.sampled_from([".JPG", ".jpg", ".jpeg", ".png", ".txt", ""]))
odd_name = st.text(st.characters(blacklist_characters="/\x00", codec="utf-8"), min_size=1, max_size=12)


@SETTINGS
@given(names=st.lists(kdef_valid, min_size=4, max_size=24, unique_by=str.lower).flatmap(
           lambda good: st.lists(kdef_like | odd_name, max_size=2).map(lambda odd: good + odd)),
       on_bad=st.sampled_from(["fail", "skip"]))
def test_kdef_names(names, on_bad):
    def check(d: Path) -> None:
        for name in names:
            if name.startswith("."):
                continue
            parse_kdef_name(name)  # total: a tuple or None
            folder = d / "K" / (name[:4] if len(name) >= 4 else "X")
            try:
                if name.lower().endswith((".jpg", ".jpeg", ".png")):
                    save_flat(folder / name, 50, size=(8, 8), mode="RGB")
                else:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / name).write_bytes(b"not a picture")
            except (OSError, ValueError, KeyError):
                pass  # a name the file system or PIL refuses to create: nothing to load
        (d / "K").mkdir(exist_ok=True)
        ds = load_or_data_error(lambda: load_kdef(d / "K", folds=2, on_bad=on_bad))
        if ds is not None:
            groups = [set(s.groups.tolist()) for s in ds.splits.values()]
            assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    in_tmp(check)


def image_bytes(draw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (draw(st.integers(1, 12)), draw(st.integers(1, 12))), (10, 20, 30)).save(
        buf, format=draw(st.sampled_from(["JPEG", "PNG", "BMP", "GIF"])))
    data = buf.getvalue()
    how = draw(st.sampled_from(["intact"] * 6 + ["cut", "flip", "garbage", "empty"]))
    if how == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    if how == "garbage":
        return draw(st.binary(max_size=64))
    return b"" if how == "empty" else data


@st.composite
def image_files(draw) -> list[tuple[str, str, bytes]]:
    files = [("train", "a", image_bytes(draw)), ("train", "a", image_bytes(draw)), ("train", "b", image_bytes(draw)),
             ("test", "b", image_bytes(draw))]
    for _ in range(draw(st.integers(0, 3))):
        files.append((draw(st.sampled_from(["train", "test"])), draw(st.sampled_from(["a", "b", "zz"])),
                      image_bytes(draw)))
    return files


@SETTINGS
@given(files=image_files(), on_bad=st.sampled_from(["fail", "skip"]),
       suffix=st.sampled_from([".jpg", ".png", ".jpeg", ".png", ".dat"]))
def test_image_files(files, on_bad, suffix):
    def check(d: Path) -> None:
        for i, (split, cls, data) in enumerate(files):
            (d / split / cls).mkdir(parents=True, exist_ok=True)
            (d / split / cls / f"{i}{suffix}").write_bytes(data)
            image_problem(d / split / cls / f"{i}{suffix}")  # total: a string or None
        ds = load_or_data_error(lambda: load_image_folder(d, classes=["a", "b"], val_fraction=0.3, on_bad=on_bad))
        if ds is not None:
            for s in ds.splits.values():
                for i in range(len(s)):
                    assert s.load(i).mode == "RGB"  # every image that loaded decodes
    in_tmp(check)


@settings(max_examples=25, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_weights_files(data):
    def check(d: Path) -> None:
        (d / "w.pth").write_bytes(data)
        with pytest.raises(CheckpointError):
            load_backbone_weights(ResNet18Trunk(), d / "w.pth")
    in_tmp(check)
