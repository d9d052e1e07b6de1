"""FERPlus: fer2013new.csv votes joined with fer2013.csv pixels or the FER2013Train/Valid/Test folders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from miniature_sets import gray, write_ferplus

from fuse_export.data.ferplus import load_ferplus, majority_labels, soft_targets
from fuse_export.data.registry import load_dataset
from fuse_export.errors import DataError
from fuse_export.training.loop import LabelState

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


def expected(rows, usage):
    return [(i, name, label) for i, (u, name, _, label) in enumerate(rows) if u == usage and label >= 0]


@pytest.mark.parametrize("pixels", ["csv", "folders"])
def test_majority_mode_joins_pixels_and_drops_unknown_nf_and_empty_names(tmp_path, pixels):
    rows = write_ferplus(tmp_path / "ferplus", pixels)
    ds = load_dataset("ferplus", tmp_path / "ferplus")
    assert ds.class_names == CLASSES
    assert ds.skipped == {"empty image name": 3, "unknown or not a face": 9}
    for usage, split in (("Training", "train"), ("PublicTest", "val"), ("PrivateTest", "test")):
        want = expected(rows, usage)
        s = ds.splits[split]
        assert s.names == [name for _, name, _ in want]
        assert s.labels.tolist() == [label for _, _, label in want]
        assert s.soft_targets is None
        for k, (i, _, _) in enumerate(want):
            value = int(s.images[k].mean()) if s.images is not None else gray(s.paths[k])
            assert value == i * 3 % 250 + 3  # the pixels of the same row / the file of the same name
    assert ds.counts() == {"train": 24, "val": 8, "test": 8}
    assert set(ds.splits["train"].labels.tolist()) == set(range(8))  # contempt included


def test_microsoft_majority_rule_cases():
    votes = np.array([
        [6, 3, 1, 0, 0, 0, 0, 0, 0, 0],  # single vote dropped: 6 of 9 > half -> neutral
        [4, 3, 3, 0, 0, 0, 0, 0, 0, 0],  # 4 of 10: no majority -> discarded
        [5, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # singles dropped: 5 of 5 -> neutral
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # nothing left -> discarded
        [2, 0, 0, 0, 0, 0, 0, 0, 6, 2],  # unknown wins -> discarded
        [0, 0, 0, 0, 0, 0, 0, 9, 1, 0],  # contempt
    ])
    assert majority_labels(votes).tolist() == [0, -1, 0, -1, -1, 7]
    dist, hard = soft_targets(votes)
    assert hard.tolist() == [0, 0, 0, -1, -1, 7]
    assert np.allclose(dist[0], [6 / 9, 3 / 9, 0, 0, 0, 0, 0, 0]) and np.allclose(dist[1][:3], [0.4, 0.3, 0.3])
    assert np.allclose(dist[hard >= 0].sum(1), 1.0)


def test_soft_mode_gives_vote_distributions_the_trainer_accepts(tmp_path):
    write_ferplus(tmp_path / "ferplus", "csv")
    ds = load_ferplus(tmp_path / "ferplus", mode="soft")
    s = ds.splits["train"]
    assert ds.counts() == {"train": 25, "val": 9, "test": 9}  # the 4/3/3 rows have no majority but a distribution
    assert s.soft_targets.shape == (25, 8) and s.soft_targets.dtype == np.float32
    assert np.allclose(s.soft_targets.sum(1), 1.0)
    assert np.array_equal(s.soft_targets.argmax(1), s.labels)
    first = s.soft_targets[0]
    assert np.allclose(first[[0, 1]], [7 / 9, 2 / 9])  # label 0's row: 7 votes, 2 votes, the single vote dropped
    # The trainer's LabelState feeds soft targets to cross-entropy, and relabeling turns a row one-hot.
    state = LabelState(torch.from_numpy(s.labels.copy()), torch.from_numpy(s.labels.copy()),
                       torch.from_numpy(s.soft_targets.copy()))
    idx = torch.arange(4)
    loss = F.cross_entropy(torch.zeros(4, 8), state.targets(idx))
    assert torch.isclose(loss, torch.tensor(np.log(8.0), dtype=torch.float32))
    state.assign(torch.tensor([0]), torch.tensor([5]))
    assert state.soft[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0] and state.relabeled == 1


def test_row_order_mismatch_and_missing_pixels_are_errors(tmp_path):
    root = tmp_path / "ferplus"
    write_ferplus(root, "csv")
    lines = (root / "fer2013.csv").read_text().splitlines()
    (root / "fer2013.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="the files must be the same release"):
        load_ferplus(root)
    lines[1] = lines[1].replace("Training", "PublicTest")
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="not in the same row order"):
        load_ferplus(root)
    (root / "fer2013.csv").unlink()
    with pytest.raises(DataError, match="no pixels"):
        load_ferplus(root)
    with pytest.raises(DataError, match="fer2013new.csv"):
        load_ferplus(tmp_path / "elsewhere")


def test_bad_votes_header_duplicates_and_missing_images(tmp_path):
    root = tmp_path / "ferplus"
    rows = write_ferplus(root, "folders")
    text = (root / "fer2013new.csv").read_text().splitlines()
    (root / "fer2013new.csv").write_text("\n".join([text[0].replace("contempt", "contemp")] + text[1:]) + "\n")
    with pytest.raises(DataError, match="header is"):
        load_ferplus(root)
    text[2] = text[1]  # a duplicated image name
    (root / "fer2013new.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"fer2013new.csv:3: image name 'fer0000000.png' appears twice"):
        load_ferplus(root)
    text[3] = text[3].replace(",7,", ",x,", 1)  # a vote that is not a number
    (root / "fer2013new.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"fer2013new.csv:4: vote counts must be integers"):
        load_ferplus(root)
    first_test = next(name for u, name, _, label in rows if u == "PrivateTest" and label >= 0)
    (root / "data" / "FER2013Test" / first_test).unlink()
    ds = load_ferplus(root, on_bad="skip")
    assert len(ds.bad_files) == 3
    assert "integers" in ds.bad_files[0] and "appears twice" in ds.bad_files[1] and "file not found" in ds.bad_files[2]
    assert first_test not in ds.splits["test"].names and len(ds.splits["train"]) == 22
