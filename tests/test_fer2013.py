from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.errors import DataError


def write_csv(path: Path, rows: list[tuple], header: str = "emotion,pixels,Usage") -> Path:
    with open(path, "w") as fh:
        fh.write(header + "\n")
        for r in rows:
            fh.write(",".join(str(x) for x in r) + "\n")
    return path


def pixels(value: int, n: int = 2304) -> str:
    return " ".join([str(value)] * n)


def good_rows() -> list[tuple]:
    rows = []
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for label in range(7):
            rows.append((label, pixels(label * 30), usage))
    return rows


def test_loads_kaggle_layout(tmp_path):
    ds = load_fer2013_csv(write_csv(tmp_path / "f.csv", good_rows()))
    assert ds.class_names == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert ds.counts() == {"train": 7, "val": 7, "test": 7}
    tr = ds.splits["train"]
    assert tr.images.shape == (7, 48, 48) and tr.images.dtype == np.uint8
    assert list(tr.labels) == list(range(7))
    assert int(tr.images[3, 10, 10]) == 90
    im = tr.load(2)
    assert im.mode == "RGB" and im.size == (48, 48) and im.getpixel((0, 0)) == (60, 60, 60)


def test_header_with_spaces_and_other_column_order(tmp_path):
    rows = [(r[0], r[2], r[1]) for r in good_rows()]
    ds = load_fer2013_csv(write_csv(tmp_path / "f.csv", rows, header="emotion, Usage, pixels"))
    assert ds.counts()["val"] == 7


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda rows: rows.__setitem__(3, (3, pixels(1, 2303), "Training")), "2303 values, expected 2304"),
        (lambda rows: rows.__setitem__(3, (9, pixels(1), "Training")), "outside 0..6"),
        (lambda rows: rows.__setitem__(3, ("x", pixels(1), "Training")), "expected an integer"),
        (lambda rows: rows.__setitem__(3, (3, pixels(300), "Training")), "outside 0..255"),
        (lambda rows: rows.__setitem__(3, (3, pixels(1), "Validation")), "field 'Usage'"),
    ],
)
def test_bad_rows_name_file_line_and_problem(tmp_path, mutate, message):
    rows = good_rows()
    mutate(rows)
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as err:
        load_fer2013_csv(path)
    assert message in str(err.value)
    assert f"{path}:5" in str(err.value)  # header is line 1, the 4th data row is line 5


def test_missing_column_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="missing column"):
        load_fer2013_csv(write_csv(tmp_path / "a.csv", [(0, "1 2")], header="emotion,pixels"))
    rows = [r for r in good_rows() if r[2] != "PrivateTest"]
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_fer2013_csv(write_csv(tmp_path / "b.csv", rows))
    with pytest.raises(DataError, match="file not found"):
        load_fer2013_csv(tmp_path / "nope.csv")


def test_cli_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path):
    rows = good_rows()
    rows[0] = (0, pixels(1, 100), "Training")
    path = write_csv(tmp_path / "bad.csv", rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "synthetic-quick", "--data", str(path), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.csv:2" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
