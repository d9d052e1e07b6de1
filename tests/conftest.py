"""Shared fixtures: a tiny synthetic data set, a model trained on it, and its export folder (built once)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small FER-2013-format CSV of synthetic faces (7 x 40 rows)."""
    from fuse_export.data.synthetic import SyntheticSpec, write_fer2013_csv

    path = tmp_path_factory.mktemp("data") / "fer2013.csv"
    write_fer2013_csv(path, SyntheticSpec(samples_per_class=40, seed=3))
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """A fused model trained for 2 epochs at 40x40 on `tiny_csv` (seconds on CPU)."""
    from fuse_export.train.recipe import load_recipe
    from fuse_export.train.trainer import run_training

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 40}, train={"epochs": 2, "batch_size": 32}, scn={"relabel_epoch": 2})
    return run_training(recipe, str(tiny_csv), tmp_path_factory.mktemp("run"), device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchScript + ONNX exports of `tiny_run`'s best checkpoint, with manifest.json."""
    from fuse_export.export.formats import FORMATS
    from fuse_export.workflow import export_checkpoint

    out = tmp_path_factory.mktemp("export")
    export_checkpoint(tiny_run.best, [FORMATS["torchscript"], FORMATS["onnx"]], out)
    return out


@pytest.fixture()
def export_copy(tiny_export: Path, tmp_path: Path) -> Path:
    """A private copy of the export folder that a test may modify."""
    dst = tmp_path / "export"
    shutil.copytree(tiny_export, dst)
    return dst
