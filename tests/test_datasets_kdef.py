"""KDEF: name parsing (straight view `S`), angle filter, subject-independent splits and k-fold by identity."""

from pathlib import Path

import pytest
from miniature_sets import KDEF_CODES, gray, save_flat, write_kdef

from fuse_export.data.kdef import load_kdef, parse_kdef_name
from fuse_export.data.registry import load_dataset
from fuse_export.errors import DataError, RecipeError

IDENTITIES = tuple(f"{g}{n:02d}" for g in "FM" for n in range(1, 6))  # 10 people, 5 women and 5 men


@pytest.fixture(scope="module")
def kdef_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kdef") / "KDEF"
    write_kdef(root, IDENTITIES, sessions=("A", "B"))
    (root / "ReadMe.txt").write_text("KDEF read me: not a picture, ignored")
    return root


def test_names_parse_including_the_one_letter_straight_view():
    assert parse_kdef_name("AF01ANFL.JPG") == ("A", "F01", 1, "FL")
    assert parse_kdef_name("BM35SUS.JPG") == ("B", "M35", 6, "S")
    assert parse_kdef_name("af12hahr.jpg") == ("A", "F12", 3, "HR")
    for bad in ("AF31V.JPG", "AM31H.JPG", "CF01ANS.JPG", "AF01XXS.JPG", "AF1ANS.JPG", "AF01ANS.png", "AF00ANS.JPG"):
        assert parse_kdef_name(bad) is None, bad


def test_loads_classes_images_and_subject_independent_splits(kdef_root):
    ds = load_dataset("kdef", kdef_root, folds=5, fold=0)
    assert ds.class_names == ("afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised")
    assert sum(ds.counts().values()) == 10 * 2 * 7 * 5
    people = {split: set(s.groups.tolist()) for split, s in ds.splits.items()}
    assert not people["train"] & people["val"] and not people["train"] & people["test"]
    assert not people["val"] & people["test"]
    assert len(people["test"]) == 2 and {p[0] for p in people["test"]} == {"F", "M"}  # genders spread over folds
    assert len(people["val"]) == 1 and len(people["train"]) == 7
    s = ds.splits["train"]
    for i in range(0, len(s), 37):
        name = Path(s.names[i]).name
        _, identity, label, _ = parse_kdef_name(name)
        assert s.labels[i] == label == KDEF_CODES.index(name[4:6]) and s.groups[i] == identity
        assert abs(gray(s.paths[i]) - (10 + 30 * label)) <= 3
    # both sessions of a person are one identity: same split
    assert {n.split("/")[0][0] for n in ds.splits["test"].names} == {"A", "B"}


def test_k_folds_cover_every_identity_once_as_test(kdef_root):
    seen = []
    for fold in range(5):
        ds = load_kdef(kdef_root, folds=5, fold=fold, angles="S")
        test = set(ds.splits["test"].groups.tolist())
        assert not test & set(ds.splits["train"].groups.tolist())
        seen += sorted(test)
    assert sorted(seen) == sorted(IDENTITIES)
    again = load_kdef(kdef_root, folds=5, fold=3, angles="S")
    assert set(again.splits["test"].groups.tolist()) == set(seen[6:8])  # deterministic for a seed


def test_angle_filter(kdef_root):
    straight = load_kdef(kdef_root, angles=["S"])
    assert {parse_kdef_name(Path(n).name)[3] for s in straight.splits.values() for n in s.names} == {"S"}
    assert sum(straight.counts().values()) == 10 * 2 * 7
    three = load_kdef(kdef_root, angles="S,HL,HR")
    assert sum(three.counts().values()) == 10 * 2 * 7 * 3
    with pytest.raises(RecipeError, match="unknown angle\\(s\\) XX"):
        load_kdef(kdef_root, angles="S,XX")
    with pytest.raises(RecipeError, match="folds"):
        load_kdef(kdef_root, folds=11)
    with pytest.raises(RecipeError, match="fold is 5"):
        load_kdef(kdef_root, folds=5, fold=5)


def test_unparsable_names_and_duplicates_are_reported(tmp_path):
    root = tmp_path / "KDEF"
    write_kdef(root, ("F01", "F02", "M01"), angles=("S",))
    save_flat(root / "AF31" / "AF31V.JPG", 0, mode="RGB")
    with pytest.raises(DataError, match=r"AF31V.JPG: file name does not parse as KDEF"):
        load_kdef(root, folds=3)
    save_flat(root / "extra" / "AF01ANS.jpg", 0, mode="RGB")
    ds = load_kdef(root, folds=3, on_bad="skip")
    assert len(ds.bad_files) == 2
    assert any("AF31V.JPG" in b for b in ds.bad_files) and any("duplicate picture" in b for b in ds.bad_files)
    assert sum(ds.counts().values()) == 3 * 7


def test_too_few_identities_is_an_error(tmp_path):
    write_kdef(tmp_path / "K", ("F01", "M01"), angles=("S",))
    with pytest.raises(DataError, match="need at least 3 identities"):
        load_kdef(tmp_path / "K")
