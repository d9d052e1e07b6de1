"""The public Python API: train, export, load, predict and bench through `import fuse_export` only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def faces_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test input: a small FER-2013-layout CSV of generated faces (10 per class)."""
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv

    path = tmp_path_factory.mktemp("api-data") / "faces.csv"
    write_fer2013_csv(path, SyntheticSpec(samples_per_class=10, seed=5))
    return path


def test_train_export_load_predict_bench_through_the_public_api(faces_csv: Path, tmp_path: Path):
    import fuse_export as fx
    from PIL import Image

    run = fx.train("synthetic-quick", faces_csv, tmp_path / "run", epochs=1, device="cpu",
                   overrides={"data": {"image_size": 32}, "train": {"batch_size": 16}, "scn": {"relabel_epoch": 0}})
    assert Path(run.best).is_file()

    manifest = fx.export(run.best, "onnx", "fp32", tmp_path / "export", fx.ExportOptions(),
                         fx.VerifyOptions(atol=1e-4))
    assert isinstance(manifest, fx.Manifest)
    onnx_file = manifest.file("onnx")
    assert onnx_file.is_file() and manifest.parity["model.onnx"] and manifest.reference.is_file()
    # Verified on the data the checkpoint was trained on, not on noise.
    assert str(faces_csv) in manifest.artifacts[0]["verified_on"]

    with np.load(manifest.reference) as ref:
        pixels, eager = ref["input_uint8_nhwc"], ref["output_probabilities"]
    with fx.load(tmp_path / "export", backend="onnxruntime") as model:
        assert model.backend == "onnxruntime"
        out = model.predict_pixels(pixels)  # the export's verification images: the eager answers
        images = [Image.fromarray(p) for p in pixels[:3]]
        from_images = model.predict(images)
    np.testing.assert_allclose(out.probabilities, eager, atol=1e-4)
    assert len(from_images) == 3 and set(from_images.labels) <= set(model.class_names)
    np.testing.assert_allclose(from_images.probabilities.sum(1), 1.0, atol=1e-5)
    assert ((from_images.confidence > 0) & (from_images.confidence < 1)).all()

    result = fx.bench(tmp_path / "export", fx.BenchOptions(backends=("pytorch", "onnxruntime"), batch_sizes=(1,),
                                                           warmup=0, iterations=2, min_time_s=0, rounds=1))
    assert isinstance(result, fx.BenchResult) and result.passed
    assert {r.backend for r in result.rows if r.status == "ok"} == {"pytorch", "onnxruntime"}


def test_import_is_light_and_options_are_dataclasses():
    code = ("import sys, dataclasses, fuse_export as fx; "
            "names = [fx.ExportOptions, fx.VerifyOptions, fx.BenchOptions]; "
            "assert all(dataclasses.is_dataclass(n) for n in names); "
            "assert callable(fx.train) and callable(fx.export) and callable(fx.bench) and callable(fx.load); "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_api_errors_are_user_errors(tmp_path: Path):
    import fuse_export as fx

    with pytest.raises(fx.UserError, match="checkpoint not found"):
        fx.export(tmp_path / "missing.pt", "onnx", out=tmp_path / "o")
    with pytest.raises(fx.UserError, match="no manifest"):
        fx.bench(tmp_path)
    with pytest.raises(TypeError):
        fx.bench(tmp_path, no_such_option=1)


def test_predict_names_what_it_takes_and_a_closed_predictor_says_so(tiny_export: Path, tmp_path: Path):
    """Issue 24: `predict(42)` said "'int' object is not iterable", and predict after close() "runner used before
    activate()"; a lone artifact ran without a word."""
    import shutil

    import fuse_export as fx
    from PIL import Image

    face = Image.new("RGB", (48, 48), (128, 128, 128))
    with fx.load(tiny_export) as model:
        with pytest.raises(fx.UserError, match=r"^images: got int; pass a path, encoded bytes or a PIL image"):
            model.predict(42)
        with pytest.raises(fx.UserError, match=r"^images\[1\]: got NoneType; each image is a path"):
            model.predict([face, None])
        assert len(model.predict(face)) == 1  # still usable after refusing bad input
    for call in (lambda: model.predict(face), lambda: model.predict_pixels(np.zeros((1, 40, 40, 3), np.uint8))):
        with pytest.raises(fx.UserError, match=r"^Predictor\(onnxruntime: .*model\.onnx\) was closed"):
            call()

    shutil.copy(tiny_export / "model.onnx", tmp_path / "alone.onnx")  # no manifest beside it
    with pytest.warns(fx.UnverifiedArtifactWarning, match="alone.onnx: unverified"):
        lone = fx.load(tmp_path / "alone.onnx")
    with lone:
        assert len(lone.predict(face)) == 1


def test_pil_images_get_their_exif_orientation_as_paths_and_bytes_do(tiny_export: Path, tmp_path: Path):
    """Issue 26: `predict(Image.open("exif6.jpg"))` ran on the stored, sideways pixels, while the same file as a
    path or as bytes ran upright. A JPEG stored sideways with EXIF orientation 6 must give the same pixels and
    the same predictions whichever way it is passed, and they must be the upright ones."""
    import io

    import fuse_export as fx
    from PIL import Image

    from fuse_export.data.synthetic import SyntheticSpec, generate_faces
    from fuse_export.preprocess import model_pixels

    faces, _, _ = generate_faces(SyntheticSpec(samples_per_class=1, seed=5))
    upright = Image.fromarray(np.asarray(faces[2], np.uint8)).convert("RGB").resize((60, 96))  # portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "exif6.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())  # stored sideways
    with Image.open(path) as raw:
        assert raw.size == (96, 60) and raw.getexif()[0x0112] == 6
        stored = np.asarray(raw.convert("RGB"))
    shown = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)  # turned by hand, no EXIF left
    sideways = Image.fromarray(stored)

    with fx.load(tiny_export) as model:
        pre = model.preprocessing
        with Image.open(path) as pil:
            inputs = {"path": path, "bytes": path.read_bytes(), "PIL": pil, "BytesIO PIL": Image.open(io.BytesIO(
                path.read_bytes())), "turned by hand": shown}
            pixels = {name: model_pixels(im, pre) for name, im in inputs.items()}
            probs = {name: model.predict([im]).probabilities for name, im in inputs.items()}
    for name in inputs:
        assert np.array_equal(pixels[name], pixels["path"]), name
        assert np.array_equal(probs[name], probs["path"]), name
    assert not np.array_equal(model_pixels(sideways, pre), pixels["path"])  # the test can tell the two apart
