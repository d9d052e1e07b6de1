"""`fuse-export train recipes/<dataset>.toml --data PATH --epochs 1` on a miniature copy of every data set.

The recipes run as shipped except for the input size (32 instead of 224) and data-loader workers (0), which
only make them fit a CPU test; the checkpoint must carry the data set's own class names in its own order.
"""

import json
from pathlib import Path

import pytest
import torch
from miniature_sets import (
    recipe_copy,
    truncate,
    write_fer_folders,
    write_ferplus,
    write_image_folder,
    write_kdef,
    write_rafdb,
)
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.model.weights_fetch import IMAGENET_FILE, IMAGENET_SHA256_ENV, IMAGENET_URL_ENV, OFFLINE_ENV
from fuse_export.training.checkpoint import read_checkpoint


def train(recipe: Path, data: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["train", str(recipe), "--data", str(data), "--out", str(out), "--epochs", "1",
                                      "--device", "cpu", "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    state = read_checkpoint(out / "best.pt")
    assert state["preprocessing"]["image_size"] == 32
    return state


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A torch hub cache holding a (randomly initialised) ResNet-18 file for `imagenet`, under a mirror name of its
    own with its full sha256 given (the cache check needs a full hash), so nothing is downloaded."""
    import hashlib

    from torchvision.models import resnet18

    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), cache / IMAGENET_FILE)
    digest = hashlib.sha256((cache / IMAGENET_FILE).read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    (cache / IMAGENET_FILE).rename(cache / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(IMAGENET_URL_ENV, f"http://127.0.0.1:9/{name}")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, digest)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return cache


def test_rafdb_recipe_with_imagenet_weights_from_the_hub_cache(tmp_path, hub_cache):
    write_rafdb(tmp_path / "raf", train_per_class=4, test_per_class=1)
    state = train(recipe_copy("rafdb", tmp_path / "rafdb.toml"), tmp_path / "raf", tmp_path / "run")
    assert state["class_names"] == ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    assert state["recipe"]["model"]["pretrained"] == "imagenet"


def test_kdef_recipe_subject_independent_with_angles_flag(tmp_path):
    people = tuple(f"{g}{n:02d}" for g in "FM" for n in range(1, 6))  # 10 identities for the recipe's 10 folds
    write_kdef(tmp_path / "KDEF", people, angles=("S", "HL", "FL"))
    state = train(recipe_copy("kdef", tmp_path / "kdef.toml"), tmp_path / "KDEF", tmp_path / "run",
                  "--pretrained", "", "--angles", "S", "--data-option", "fold=9", "--data-option", "seed=2")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["splits"] == {"train": 8 * 7, "val": 7, "test": 7}  # one identity each for test and val
    assert state["class_names"] == ["afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised"]
    options = state["recipe"]["data"]["options"]
    assert options["angles"] == "S" and options["fold"] == 9 and options["seed"] == 2 and options["folds"] == 10


def test_ferplus_recipe_in_soft_mode(tmp_path):
    write_ferplus(tmp_path / "ferplus", "csv")
    recipe = recipe_copy("ferplus", tmp_path / "ferplus.toml")
    recipe.write_text(recipe.read_text().replace('mode = "majority"', 'mode = "soft"'))
    state = train(recipe, tmp_path / "ferplus", tmp_path / "run", "--pretrained", "")
    assert state["class_names"] == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                    "contempt"]
    assert state["recipe"]["data"]["options"]["mode"] == "soft"


def test_fer2013_folders_recipe_skips_bad_files_with_a_list_and_limits(tmp_path):
    root = tmp_path / "fer"
    write_fer_folders(root, train_per_class=4, test_per_class=2)
    broken = next((root / "train" / "sad").iterdir())
    truncate(broken)
    recipe = recipe_copy("fer2013-folders", tmp_path / "fer2013-folders.toml")
    result = CliRunner().invoke(app, ["train", str(recipe), "--data", str(root), "--out", str(tmp_path / "failed"),
                                      "--epochs", "1", "--device", "cpu", "--no-progress", "--pretrained", ""])
    assert result.exit_code == 2 and f"error: {broken}: corrupt or truncated image" in result.output
    state = train(recipe, root, tmp_path / "run", "--pretrained", "", "--on-bad", "skip", "--limit", "10")
    assert state["class_names"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    listed = (tmp_path / "run" / "bad_files.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{broken}\tcorrupt or truncated image")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["splits"] == {"train": 10, "val": 7, "test": 10}


def test_image_folder_recipe_with_a_class_list(tmp_path):
    root = tmp_path / "mine"
    write_image_folder(root, ("calm", "joy", "anger"), per_class=6)
    (root / "classes.txt").write_text("joy\ncalm\nanger\n")
    state = train(recipe_copy("image-folder", tmp_path / "image-folder.toml"), root, tmp_path / "run",
                  "--pretrained", "")
    assert state["class_names"] == ["joy", "calm", "anger"]


def test_bad_data_options_on_the_command_line_exit_2_with_one_line(tmp_path):
    write_rafdb(tmp_path / "raf", train_per_class=2, test_per_class=1)
    recipe = recipe_copy("rafdb", tmp_path / "rafdb.toml")
    for extra, message in ((["--data-option", "nonsense"], "expected KEY=VALUE"),
                           (["--data-option", "colour=red"], "data.options.colour is not an option of format 'rafdb'"),
                           (["--angles", "S"], "data.options.angles is not an option of format 'rafdb'"),
                           (["--data-option", "val_fraction=0.9"], "data.options.val_fraction is 0.9")):
        result = CliRunner().invoke(app, ["train", str(recipe), "--data", str(tmp_path / "raf"), "--out",
                                          str(tmp_path / "run"), "--no-progress", "--pretrained", "", *extra])
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
