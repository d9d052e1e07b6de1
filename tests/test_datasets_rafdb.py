"""RAF-DB basic: the list file's 1-based labels, aligned image names, the carved validation split."""

from pathlib import Path

import pytest
from miniature_sets import gray, truncate, write_rafdb

from fuse_export.data.rafdb import load_rafdb
from fuse_export.data.registry import load_dataset
from fuse_export.errors import DataError, RecipeError

CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


@pytest.fixture()
def raf_root(tmp_path: Path) -> Path:
    write_rafdb(tmp_path / "basic", train_per_class=4, test_per_class=2)
    return tmp_path / "basic"


def test_labels_one_based_in_the_file_zero_based_loaded(raf_root):
    listing = (raf_root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert listing[0] == "train_00001.jpg 1" and listing[-1] == "test_0014.jpg 7"
    ds = load_dataset("rafdb", raf_root)
    assert ds.class_names == CLASSES
    assert ds.counts() == {"train": 21, "val": 7, "test": 14}
    test = ds.splits["test"]
    assert test.names[0] == "test_0001.jpg" and test.labels[0] == 0  # file label 1 = surprise = index 0
    assert test.names[-1] == "test_0014.jpg" and test.labels[-1] == 6  # file label 7 = neutral
    assert test.paths[0] == raf_root / "Image" / "aligned" / "test_0001_aligned.jpg"
    for split in ds.splits.values():
        for i in range(len(split)):
            assert abs(gray(split.paths[i]) - (15 + 30 * split.labels[i])) <= 3
    assert sorted(ds.splits["val"].labels.tolist()) == list(range(7))  # stratified: one per class
    assert not set(ds.splits["val"].names) & set(ds.splits["train"].names)


@pytest.mark.parametrize("line, message", [
    ("train_00002.jpg 8", "label '8' of train_00002.jpg is outside 1..7"),
    ("train_00002.jpg 0", "outside 1..7"),
    ("train_00002.jpg five", "outside 1..7"),
    ("train_00001.jpg 1", "is listed twice (first on line 1)"),
    ("val_00002.jpg 3", "should start with train_ or test_"),
    ("train_00002.jpg", "expected '<name> <label>'"),
])
def test_bad_lines_fail_with_file_and_line_or_are_skipped(raf_root, line, message):
    listing = raf_root / "EmoLabel" / "list_patition_label.txt"
    lines = listing.read_text().splitlines()
    lines[1] = line
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_rafdb(raf_root)
    assert "list_patition_label.txt:2: " in str(err.value) and message in str(err.value)
    ds = load_rafdb(raf_root, on_bad="skip")
    assert len(ds.bad_files) == 1 and message in ds.bad_files[0]
    assert sum(ds.counts().values()) == 41


def test_missing_and_corrupt_images(raf_root):
    (raf_root / "Image" / "aligned" / "test_0003_aligned.jpg").unlink()
    truncate(raf_root / "Image" / "aligned" / "train_00005_aligned.jpg", 0.3)
    with pytest.raises(DataError, match="train_00005_aligned.jpg: corrupt or truncated image"):
        load_rafdb(raf_root)
    ds = load_rafdb(raf_root, on_bad="skip")
    assert len(ds.bad_files) == 2
    assert ds.bad_files[0].startswith(f"{raf_root}/Image/aligned/train_00005_aligned.jpg\tcorrupt or truncated image")
    assert ds.bad_files[1] == f"{raf_root}/Image/aligned/test_0003_aligned.jpg\tfile not found"
    assert sum(ds.counts().values()) == 40


def test_missing_list_and_options(tmp_path, raf_root):
    with pytest.raises(DataError, match="label list not found"):
        load_rafdb(tmp_path)
    with pytest.raises(RecipeError, match="aligned"):
        load_rafdb(raf_root, aligned="yes")
    for f in (raf_root / "Image" / "aligned").glob("test_*"):
        f.unlink()
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_rafdb(raf_root, on_bad="skip")
