"""Shared fixtures: a tiny synthetic data set, a model trained on it, and its export folder (built once)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small FER-2013-format CSV of synthetic faces (7 x 40 rows)."""
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv

    path = tmp_path_factory.mktemp("data") / "fer2013.csv"
    write_fer2013_csv(path, SyntheticSpec(samples_per_class=40, seed=3))
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """A fused model trained for 2 epochs at 40x40 on `tiny_csv` (seconds on CPU)."""
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 40}, train={"epochs": 2, "batch_size": 32}, scn={"relabel_epoch": 2})
    return run_training(recipe, str(tiny_csv), tmp_path_factory.mktemp("run"), device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchScript + ONNX exports of `tiny_run`'s best checkpoint, with manifest.json."""
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.app.export_verify import export_checkpoint

    out = tmp_path_factory.mktemp("export")
    export_checkpoint(tiny_run.best, [FORMATS["torchscript"], FORMATS["onnx"]], out)
    return out


@pytest.fixture(scope="session")
def et_export(tiny_run, tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported to ExecuTorch and ONNX, fp32 and int8, in one folder (each verified against eager by
    export; int8 calibrated on the tiny data set). Needs the executorch extra: tests/test_executorch.py skips, or
    fails under FUSE_EXPORT_REQUIRE_EXECUTORCH, without it; tests/test_executorch_cpp.py shares this export."""
    from fuse_export.app.export_verify import export_checkpoint
    from fuse_export.exporters.formats import FORMATS

    out = tmp_path_factory.mktemp("et") / "export"
    export_checkpoint(tiny_run.best, [FORMATS["executorch"], FORMATS["onnx"]], out, precisions=("fp32", "int8"),
                      calibration_data=tiny_csv, calibration_samples=128, calibration_method="percentile")
    return out


@pytest.fixture(scope="session")
def pt2_export(tiny_export: Path, tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_export` plus an AOTInductor package (model.pt2) in one folder: the one pt2 compile of a session."""
    from fuse_export.errors import BackendUnavailable
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.exporters.to_pt2 import find_cpp_compiler
    from fuse_export.app.export_verify import export_checkpoint

    try:
        find_cpp_compiler()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("export_pt2") / "export"
    shutil.copytree(tiny_export, out)
    export_checkpoint(tiny_run.best, [FORMATS["pt2"]], out)
    return out


@pytest.fixture()
def export_copy(tiny_export: Path, tmp_path: Path) -> Path:
    """A private copy of the export folder that a test may modify."""
    dst = tmp_path / "export"
    shutil.copytree(tiny_export, dst)
    return dst


@pytest.fixture(scope="session")
def noisy_bars(tmp_path_factory: pytest.TempPathFactory):
    """An easy FER-2013-format CSV with planted label noise, for relabeling tests.

    Four classes, each a bright horizontal band at its own height in 48x48 noise (flip-invariant, so the
    train transform keeps the class), 50 per class; 12% of the Training rows carry a wrong label. Returns
    (path, clean labels, noisy labels, usage) per CSV row.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    classes, per_class = 4, 50
    clean = np.repeat(np.arange(classes), per_class)
    rng.shuffle(clean)
    usage = np.full(clean.size, "Training", dtype=object)
    for c in range(classes):
        idx = np.flatnonzero(clean == c)
        usage[idx[:6]], usage[idx[6:12]] = "PublicTest", "PrivateTest"
    noisy = clean.copy()
    train = np.flatnonzero(usage == "Training")
    flipped = rng.choice(train, int(0.12 * train.size), replace=False)
    noisy[flipped] = (clean[flipped] + rng.integers(1, classes, flipped.size)) % classes
    lines = ["emotion,pixels,Usage"]
    for i in range(clean.size):
        img = rng.normal(40, 20, (48, 48))
        img[8 + 8 * clean[i]: 14 + 8 * clean[i], :] += 160
        lines.append(f"{noisy[i]},{' '.join(map(str, np.clip(img, 0, 255).astype(np.uint8).ravel()))},{usage[i]}")
    path = tmp_path_factory.mktemp("bars") / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, clean, noisy, usage


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests without a CUDA device and `tensorrt`-marked ones without TensorRT (+ CUDA),
    saying which is missing (checked only when such tests were collected)."""
    marked = [i for i in items if i.get_closest_marker("cuda") or i.get_closest_marker("tensorrt")]
    if not marked:
        return
    from fuse_export.runners.cuda_base import cuda_status
    from fuse_export.runners.gpu_backends import tensorrt_status

    cuda_ok, cuda_why = cuda_status()
    trt_ok, trt_why = tensorrt_status()
    for item in marked:
        if not cuda_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs CUDA: {cuda_why}"))
        elif item.get_closest_marker("tensorrt") and not trt_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs TensorRT: {trt_why}"))
