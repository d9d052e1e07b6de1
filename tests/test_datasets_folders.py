"""FER-2013's image-folder release and the generic image folder: layout, class order, splits, bad files."""

from pathlib import Path

import numpy as np
import pytest
from miniature_sets import gray, save_flat, truncate, write_fer_folders, write_image_folder

from fuse_export.data.fer_folders import load_fer2013_folders
from fuse_export.data.image_folder import load_image_folder
from fuse_export.data.registry import load_dataset
from fuse_export.errors import DataError, RecipeError

FER_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.fixture()
def fer_root(tmp_path: Path) -> Path:
    write_fer_folders(tmp_path / "fer", train_per_class=4, test_per_class=2)
    return tmp_path / "fer"


def test_fer_folders_kaggle_order_images_and_carved_val(fer_root):
    ds = load_dataset("fer2013-folders", fer_root)
    assert ds.class_names == FER_ORDER
    assert ds.counts() == {"train": 21, "val": 7, "test": 14}
    for split in ("train", "val", "test"):
        s = ds.splits[split]
        for i in range(len(s)):
            folder = Path(s.names[i]).parent.name
            assert FER_ORDER[s.labels[i]] == folder  # "happy" folder -> label 3 (Kaggle's), not sorted order
            value = gray(s.paths[i])
            assert abs(value - (20 + 30 * s.labels[i])) <= 5
            assert s.load(i).mode == "RGB"
    # val is stratified (one per class here) and disjoint from train; carving is deterministic per seed
    assert sorted(ds.splits["val"].labels.tolist()) == list(range(7))
    assert not set(ds.splits["val"].names) & set(ds.splits["train"].names)
    again = load_dataset("fer2013-folders", fer_root, seed=0)
    assert again.splits["val"].names == ds.splits["val"].names
    other = load_dataset("fer2013-folders", fer_root, seed=5)
    assert other.splits["val"].names != ds.splits["val"].names


def test_fer_folders_val_folder_and_aliases_are_used(fer_root):
    (fer_root / "train" / "happy").rename(fer_root / "train" / "Happiness")  # case and spelling variants
    save_flat(fer_root / "PublicTest" / "angry" / "PublicTest_1.jpg", 20)
    ds = load_fer2013_folders(fer_root)
    assert ds.counts() == {"train": 28, "val": 1, "test": 14}
    assert int((ds.splits["train"].labels == 3).sum()) == 4


@pytest.mark.parametrize("damage, message", [
    (lambda r: truncate(next((r / "train" / "sad").iterdir())), "corrupt or truncated image"),
    (lambda r: (next((r / "train" / "fear").iterdir())).write_bytes(b"not a jpeg"), "not an image file"),
    (lambda r: save_flat(r / "train" / "contempt" / "x.jpg", 9), "unknown class folder 'contempt'"),
    (lambda r: (r / "test" / "angry" / "notes.txt").write_text("hi"), "not an image file (suffix '.txt'"),
])
def test_bad_files_fail_by_default_naming_the_file_and_skip_lists_them(fer_root, tmp_path, damage, message):
    damage(fer_root)
    with pytest.raises(DataError) as err:
        load_fer2013_folders(fer_root)
    assert message in str(err.value) and str(fer_root) in str(err.value)
    assert 'on_bad = "skip"' in str(err.value)
    ds = load_fer2013_folders(fer_root, on_bad="skip")
    assert len(ds.bad_files) == 1 and message in ds.bad_files[0]
    total = sum(ds.counts().values())
    assert total in (41, 42)  # one image fewer, or the same when the bad entry was never an image of a known class


def test_empty_split_and_missing_folders_are_errors(tmp_path, fer_root):
    for f in (fer_root / "test").rglob("*.jpg"):
        f.unlink()
    with pytest.raises(DataError, match="split 'test' has no usable images"):
        load_fer2013_folders(fer_root)
    with pytest.raises(DataError, match="no train folder"):
        load_image_folder(tmp_path / "fer" / "test")
    with pytest.raises(DataError, match="folder not found"):
        load_fer2013_folders(tmp_path / "nowhere")


def test_image_folder_class_list_option_file_and_folders(tmp_path):
    root = tmp_path / "mine"
    write_image_folder(root, ("calm", "joy", "anger"), with_val=True)
    by_folders = load_image_folder(root)
    assert by_folders.class_names == ("anger", "calm", "joy")  # sorted folder names
    assert by_folders.counts() == {"train": 12, "val": 6, "test": 6}
    (root / "classes.txt").write_text("joy\ncalm\nanger\n")
    by_file = load_image_folder(root)
    assert by_file.class_names == ("joy", "calm", "anger")
    s = by_file.splits["test"]
    for i in range(len(s)):
        assert by_file.class_names[s.labels[i]] == Path(s.names[i]).parent.name
        assert gray(s.paths[i]) == 40 + 60 * ("calm", "joy", "anger").index(Path(s.names[i]).parent.name)
    by_option = load_dataset("image-folder", root, classes=["anger", "joy", "calm"])
    assert by_option.class_names == ("anger", "joy", "calm")
    assert np.array_equal(np.bincount(by_option.splits["train"].labels), [4, 4, 4])


def test_image_folder_rejects_unlisted_class_and_bad_options(tmp_path):
    root = tmp_path / "mine"
    write_image_folder(root)
    with pytest.raises(DataError, match="unknown class folder 'anger'"):
        load_image_folder(root, classes="calm,joy")
    with pytest.raises(DataError, match="class\\(es\\) surprise have no training images"):
        load_image_folder(root, classes=["calm", "joy", "anger", "surprise"])
    with pytest.raises(RecipeError, match="val_fraction"):
        load_image_folder(root, val_fraction=0.0)
    with pytest.raises(RecipeError, match="on_bad"):
        load_image_folder(root, on_bad="ignore")
    with pytest.raises(RecipeError, match="not an option of format 'image-folder'; its options are"):
        load_dataset("image-folder", root, angles="S")
