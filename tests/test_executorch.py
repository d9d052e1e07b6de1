"""The executorch format (a `.pte` program, XNNPACK delegate) and backend, against ONNX Runtime on the same export.

executorch needs numpy >= 2 and the serve extra numpy < 2, so these tests run in an environment of their own:
.ci/run installs `.[train,executorch]` with constraints/executorch.txt and sets FUSE_EXPORT_REQUIRE_EXECUTORCH,
which turns the skip below into a failure. Elsewhere (the main test environment) they skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("executorch") is None:
    reason = "executorch is not installed (pip install 'fuse-export[executorch]' in an environment of its own)"
    if os.environ.get("FUSE_EXPORT_REQUIRE_EXECUTORCH"):
        pytest.fail(f"{reason}; FUSE_EXPORT_REQUIRE_EXECUTORCH is set", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from fuse_export.errors import IntegrityError  # noqa: E402


def faces(n: int, size: int) -> list:
    """`n` generated faces as PIL images (what `predict` takes)."""
    from PIL import Image

    from fuse_export.data.synthetic import SyntheticSpec, generate_faces

    pixels = generate_faces(SyntheticSpec(samples_per_class=-(-n // 7), image_size=size, seed=21))[0][:n]
    return [Image.fromarray(p) for p in pixels]


def test_export_lists_a_verified_pte_with_its_hash(et_export: Path) -> None:
    from fuse_export.fileio import sha256_file

    manifest = json.loads((et_export / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a["file"] == "model.pte"]
    assert art["file"] == "model.pte" and art["backend"] == "executorch" and art["precision"] == "fp32"
    assert art["sha256"] == sha256_file(et_export / "model.pte")
    assert art["verification"]["passed"] and art["verification"]["max_abs_prob"] <= 1e-4


def test_executorch_answers_as_onnx_runtime_on_batches_above_its_planned_bound(et_export: Path) -> None:
    """Two runtimes on the same images: ExecuTorch's answers equal ONNX Runtime's; 19 images exceed the
    program's planned batch (8), so the runner's pieces are exercised too."""
    import fuse_export
    from fuse_export.exporters.to_executorch import MAX_BATCH_ET

    with fuse_export.load(et_export, backend="onnxruntime") as ort_model:
        size = ort_model.preprocessing.image_size
        images = faces(19, size)
        expected = ort_model.predict(images)
    assert len(images) > MAX_BATCH_ET
    with fuse_export.load(et_export, backend="executorch") as et_model:
        got = et_model.predict(images)
        one = et_model.predict(images[:1])
    assert np.abs(got.probabilities - expected.probabilities).max() <= 1e-4
    assert (got.probabilities.argmax(1) == expected.probabilities.argmax(1)).all()
    assert np.abs(one.probabilities[0] - expected.probabilities[0]).max() <= 1e-4


def test_the_int8_program_is_verified_and_answers_near_the_int8_onnx(et_export: Path) -> None:
    import fuse_export

    manifest = json.loads((et_export / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a["file"] == "model.int8.pte"]
    assert art["backend"] == "executorch-int8" and art["verification"]["passed"]
    assert art["calibration"]["images"] == 128 and art["size_bytes"] < 0.5 * (et_export / "model.pte").stat().st_size
    with fuse_export.load(et_export, backend="onnxruntime") as fp32:
        images = faces(12, fp32.preprocessing.image_size)
        reference = fp32.predict(images).probabilities
    with fuse_export.load(et_export, backend="executorch-int8") as int8:
        got = int8.predict(images).probabilities
    assert np.abs(got - reference).max() <= 0.15  # the int8 parity bound export verified with


def test_a_lone_pte_describes_itself(et_export: Path, tmp_path: Path) -> None:
    """Copied away from its manifest, the program still carries its class names and preprocessing."""
    import fuse_export
    from fuse_export.exporters.to_executorch import read_executorch_metadata

    manifest = json.loads((et_export / "manifest.json").read_text())
    meta = read_executorch_metadata(et_export / "model.pte")
    assert meta["preprocessing"]["class_names"] == manifest["preprocessing"]["class_names"]
    assert meta["max_batch"] == 8
    lone = tmp_path / "model.pte"
    shutil.copy(et_export / "model.pte", lone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UnverifiedArtifactWarning: no manifest beside it, as intended
        with fuse_export.load(lone) as model:
            out = model.predict(faces(3, model.preprocessing.image_size))
    assert out.probabilities.shape == (3, len(manifest["preprocessing"]["class_names"]))


def test_a_changed_pte_is_refused(et_export: Path, tmp_path: Path) -> None:
    import fuse_export

    copy = tmp_path / "export"
    shutil.copytree(et_export, copy)
    data = bytearray((copy / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.pte").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        fuse_export.load(copy, backend="executorch")


def test_predict_cli_runs_the_executorch_backend(et_export: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fuse_export.cli import app

    faces(1, 64)[0].save(tmp_path / "face.png")
    r = CliRunner().invoke(app, ["predict", str(et_export), str(tmp_path / "face.png"), "--backend", "executorch",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert "executorch" in r.output and "face.png" in r.output
