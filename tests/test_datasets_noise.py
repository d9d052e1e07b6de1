"""Symmetric and asymmetric label noise (seeded, recorded), the registry's shared options, and the reports left
beside a run."""

import json

import numpy as np
import pytest
from miniature_sets import truncate, write_rafdb

from fuse_export.data.base import Split
from fuse_export.data.noise import confusable_partner, inject_asymmetric_noise, inject_symmetric_noise
from fuse_export.data.registry import LOADERS, format_options, load_dataset
from fuse_export.data.reports import write_data_reports
from fuse_export.errors import RecipeError


def clean_split(n: int = 400, classes: int = 7) -> Split:
    labels = np.arange(n) % classes
    return Split(labels=labels, images=np.zeros((n, 4, 4), np.uint8), names=[f"s{i}" for i in range(n)],
                 soft_targets=np.eye(classes, dtype=np.float32)[labels])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_flips_exactly_the_rate_to_other_classes_and_records_them(rate):
    split = clean_split()
    noisy, record = inject_symmetric_noise(split, rate, seed=4, num_classes=7)
    changed = np.flatnonzero(noisy.labels != split.labels)
    assert changed.tolist() == record.flipped.tolist() and len(changed) == round(rate * 400)
    assert np.array_equal(record.original, split.labels[changed]) and np.array_equal(record.noisy, noisy.labels[changed])
    assert np.all(record.noisy != record.original) and np.all((record.noisy >= 0) & (record.noisy < 7))
    assert record.names == [f"s{i}" for i in changed]
    assert np.array_equal(record.flipped_mask(400), noisy.labels != split.labels)
    assert np.array_equal(split.labels, np.arange(400) % 7)  # the clean split is untouched
    assert np.array_equal(noisy.soft_targets.argmax(1), noisy.labels)  # soft targets follow the flip
    assert noisy.images is split.images  # images are shared, not copied


def test_noise_is_seeded_and_spread_over_all_other_classes():
    split = clean_split(n=7000)
    a = inject_symmetric_noise(split, 0.2, seed=1, num_classes=7)[1]
    b = inject_symmetric_noise(split, 0.2, seed=1, num_classes=7)[1]
    c = inject_symmetric_noise(split, 0.2, seed=2, num_classes=7)[1]
    assert np.array_equal(a.flipped, b.flipped) and np.array_equal(a.noisy, b.noisy)
    assert not np.array_equal(a.flipped, c.flipped)
    offsets = (a.noisy - a.original) % 7
    counts = np.bincount(offsets, minlength=7)
    assert counts[0] == 0 and counts[1:].min() > 0.7 * counts[1:].mean()  # uniform over the six other classes
    with pytest.raises(RecipeError, match="noise_rate"):
        inject_symmetric_noise(split, 1.0, 0, 7)


def test_registry_options_noise_and_reports(tmp_path):
    root = tmp_path / "raf"
    write_rafdb(root, train_per_class=6, test_per_class=1)
    truncate(root / "Image" / "aligned" / "test_0002_aligned.jpg")
    ds = load_dataset("rafdb", root, noise_rate=0.25, noise_seed=3, on_bad="skip")
    assert ds.label_noise is not None and ds.label_noise.flipped.size == round(0.25 * len(ds.splits["train"]))
    out = tmp_path / "run"
    lines = write_data_reports(ds, out)
    assert any("skipped 1 bad file(s)" in ln for ln in lines) and any("flipped" in ln for ln in lines)
    bad = (out / "bad_files.txt").read_text().splitlines()
    assert len(bad) == 1 and bad[0].startswith(str(root / "Image" / "aligned" / "test_0002_aligned.jpg") + "\t")
    noise = json.loads((out / "label_noise.json").read_text())
    assert noise["count"] == ds.label_noise.flipped.size and noise["rate"] == 0.25 and noise["seed"] == 3
    assert {f["name"] for f in noise["flipped"]} <= set(ds.splits["train"].names)
    clean = load_dataset("rafdb", root, on_bad="skip")
    write_data_reports(clean, tmp_path / "clean-run")
    assert not (tmp_path / "clean-run" / "label_noise.json").exists()


def test_every_format_takes_the_shared_options():
    for fmt in LOADERS:
        assert {"on_bad", "noise_rate", "noise_seed", "noise_kind"} <= set(format_options(fmt)), fmt
    with pytest.raises(RecipeError, match="data.format 'affectnet' is unknown"):
        load_dataset("affectnet", "x")


FER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_asymmetric_noise_flips_each_confusable_class_to_its_partner():
    split = clean_split(n=700)
    noisy, record = inject_asymmetric_noise(split, 0.3, seed=2, class_names=FER)
    assert record.kind == "asymmetric" and record.to_dict()["kind"] == "asymmetric"
    pairs = {(FER[o], FER[y]) for o, y in zip(record.original, record.noisy)}
    assert pairs == {("fear", "surprise"), ("surprise", "fear"), ("sad", "neutral"), ("neutral", "sad"),
                     ("angry", "disgust"), ("disgust", "angry")}
    per_class = np.bincount(record.original, minlength=7)
    assert per_class[FER.index("happy")] == 0  # no confusable partner: never flipped
    assert all(per_class[c] == 30 for c in range(7) if FER[c] != "happy")  # exactly 30% of each of the 100
    assert np.array_equal(np.flatnonzero(noisy.labels != split.labels), record.flipped)
    again = inject_asymmetric_noise(split, 0.3, seed=2, class_names=FER)[1]
    assert np.array_equal(again.flipped, record.flipped)
    # Other data sets' spellings (KDEF's afraid/disgusted/surprised) pair up the same way.
    kdef = ("afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised")
    partner = confusable_partner(kdef)
    assert kdef[partner[0]] == "surprised" and kdef[partner[4]] == "sad" and partner[3] == -1
    with pytest.raises(RecipeError, match="confusable"):
        inject_asymmetric_noise(clean_split(n=40, classes=2), 0.2, 0, ("cat", "dog"))


def test_registry_takes_the_noise_kind(tmp_path):
    root = tmp_path / "raf"
    write_rafdb(root, train_per_class=10, test_per_class=1)
    ds = load_dataset("rafdb", root, noise_rate=0.2, noise_seed=1, noise_kind="asymmetric")
    assert ds.label_noise.kind == "asymmetric"
    with pytest.raises(RecipeError, match="noise_kind"):
        load_dataset("rafdb", root, noise_rate=0.2, noise_kind="diagonal")
