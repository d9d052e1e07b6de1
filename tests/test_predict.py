"""`predict` on generated photos: whole images, a copied-away artifact, and faces found by the Haar cascade."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.data.synthetic import SyntheticSpec, generate_faces
from fuse_export.data.transforms import eval_transform
from fuse_export.errors import BackendUnavailable
from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model

# Faces without occluders: index 0 is found by the cascade once drawn 200 px wide (checked below, and the
# cascade found 66 of 70 such faces when this test was written).
SPEC = SyntheticSpec(samples_per_class=2, seed=5, occlusion_fraction=0.0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    """48x48 face PNGs, a 480x360 scene with one face, one with two faces, a blank and a noise photo."""
    folder = tmp_path_factory.mktemp("photos")
    faces, _, _ = generate_faces(SPEC)
    for i in range(3):
        Image.fromarray(faces[i]).save(folder / f"face{i}.png")
    big = [Image.fromarray(faces[i]).resize((200, 200), Image.BICUBIC) for i in (0, 1)]
    scene = Image.new("L", (480, 360), 120)
    scene.paste(big[0], (140, 80))
    scene.convert("RGB").save(folder / "scene.jpg", quality=95)
    two = Image.new("L", (640, 320), 110)
    two.paste(big[0], (40, 60))
    two.paste(big[1], (380, 60))
    two.convert("RGB").save(folder / "two.png")
    Image.new("RGB", (300, 300), (90, 90, 90)).save(folder / "blank.png")
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return folder


def run_json(*args: str) -> dict:
    r = CliRunner().invoke(app, ["predict", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # stdout alone: a warning goes to stderr


def eager_probs(checkpoint, images: list[Image.Image]) -> np.ndarray:
    loaded = load_model(checkpoint)
    tf = eval_transform(loaded.preprocessing)
    x = torch.stack([tf(im.convert("RGB")) for im in images])
    with torch.inference_mode():
        return ExportView(loaded.model).eval()(x)[1].numpy()


def test_whole_images_match_the_eager_pipeline_on_every_backend(tiny_export, tiny_run, photos):
    files = [photos / f"face{i}.png" for i in range(3)]
    want = eager_probs(tiny_run.best, [Image.open(f) for f in files])
    classes = load_model(tiny_run.best).preprocessing.class_names
    for backend in ("onnxruntime", "torchscript", "pytorch"):
        doc = run_json(str(tiny_export), *map(str, files), "--backend", backend)
        assert doc["backend"] == backend and doc["class_names"] == list(classes)
        assert [r["image"] for r in doc["results"]] == list(map(str, files))
        for r, p in zip(doc["results"], want):
            (pred,) = r["predictions"]
            assert pred["box"] is None and r["detected_faces"] is None
            got = np.array([pred["probabilities"][c] for c in classes])
            assert np.abs(got - p).max() <= 1e-4
            assert pred["emotion"] == classes[int(p.argmax())]
            assert pred["probability"] == pytest.approx(p.max(), abs=1e-4)
            assert 0.0 < pred["confidence"] < 1.0


def test_a_folder_and_an_artifact_copied_away_from_its_manifest(tiny_export, photos, tmp_path):
    doc = run_json(str(tiny_export), str(photos))  # the default backend, every image of the folder
    assert doc["backend"] == "onnxruntime"
    assert sorted(r["image"] for r in doc["results"]) == sorted(str(p) for p in photos.iterdir())
    shutil.copy(tiny_export / "model.onnx", tmp_path / "alone.onnx")  # no manifest beside it: embedded metadata
    alone = run_json(str(tmp_path / "alone.onnx"), str(photos))
    for a, b in zip(alone["results"], doc["results"]):
        assert a["predictions"][0]["probabilities"] == pytest.approx(b["predictions"][0]["probabilities"], abs=1e-6)


def test_a_lone_artifact_warns_and_one_its_folder_does_not_list_is_refused(tiny_export, photos, tmp_path):
    """Issue 24: `cp E/model.onnx E/evil.onnx` (a byte flipped) ran without a word. A file beside a manifest that
    does not list it is refused (exit 1, --no-verify named); a lone file runs, with one line saying it is unverified."""
    face = str(photos / "face0.png")
    shutil.copy(tiny_export / "model.onnx", tmp_path / "alone.onnx")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "alone.onnx"), face, "--json"])
    assert r.exit_code == 0, r.output
    warning = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "unverified" in warning[0], r.stderr
    assert json.loads(r.stdout)["results"][0]["predictions"]

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    evil = bytearray((export / "model.onnx").read_bytes())
    evil[len(evil) // 2] ^= 0xFF  # a weight changed: the file still loads and runs
    (export / "evil.onnx").write_bytes(bytes(evil))
    r = CliRunner().invoke(app, ["predict", str(export / "evil.onnx"), face])
    assert r.exit_code == 1, r.output
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and "evil.onnx: not listed in" in line and "--no-verify" in line
    assert not r.stdout.strip()  # nothing predicted

    shutil.copy(export / "model.onnx", export / "copy.onnx")  # --no-verify: runs as a lone file would, and says so
    r = CliRunner().invoke(app, ["predict", str(export / "copy.onnx"), face, "--json", "--no-verify"])
    assert r.exit_code == 0, r.output
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("warning: ") and "copy.onnx: not listed in" in line and "unverified" in line


def test_detect_faces_finds_the_face_and_says_when_there_is_none(tiny_export, tiny_run, photos):
    files = ["scene.jpg", "two.png", "blank.png", "noise.png"]
    doc = run_json(str(tiny_export), *(str(photos / f) for f in files), "--detect-faces")
    scene, two, blank, noise = doc["results"]
    (face,) = scene["predictions"]
    x, y, w, h = face["box"]
    # The crop (face box + 20% margin) covers the 200x200 face drawn at (140, 80), and not much more.
    assert x <= 160 and y <= 100 and x + w >= 320 and y + h >= 260 and w <= 300 and h <= 300
    want = eager_probs(tiny_run.best, [Image.open(photos / "scene.jpg").crop((x, y, x + w, y + h))])[0]
    classes = doc["class_names"]
    assert np.abs(np.array([face["probabilities"][c] for c in classes]) - want).max() <= 1e-4
    assert two["detected_faces"] and len(two["predictions"]) == 2
    assert sorted(p["box"][0] < 320 for p in two["predictions"]) == [False, True]  # one face on each side
    for r in (blank, noise):
        assert r["detected_faces"] is False and r["predictions"] == [] and r["note"] == "no face found"
    table = CliRunner().invoke(app, ["predict", str(tiny_export), str(photos / "blank.png"), "--detect-faces"])
    assert table.exit_code == 0 and "no face found" in table.output


def test_missing_opencv_is_a_clear_error(tiny_export, photos, monkeypatch):
    from fuse_export.data.faces import FaceFinder

    monkeypatch.setitem(sys.modules, "cv2", None)  # what an environment without OpenCV looks like to import
    with pytest.raises(BackendUnavailable, match=r"pip install 'fuse-export\[faces\]'"):
        FaceFinder()
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(photos / "scene.jpg"), "--detect-faces"])
    assert r.exit_code == 2 and "--detect-faces needs opencv-python-headless" in r.output
    assert "pip install 'fuse-export[faces]'" in r.output  # the extra, found before the artifact was selected


def test_bad_inputs_exit_2_with_the_file_named(tiny_export, photos, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for args, message in (([str(photos / "nope.png")], "no such image file or folder"),
                          ([str(tmp_path / "broken.png")], "not an image Pillow can read"),
                          ([str(tmp_path / "empty")], "no such image file or folder"),
                          ([str(photos), "--backend", "trt"], "unknown backend 'trt'"),
                          ([str(photos), "--backend", "pt2"], "the export has no artifact for it")):
        r = CliRunner().invoke(app, ["predict", str(tiny_export), *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)


def _stderr_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def test_on_bad_skip_leaves_unreadable_images_out_and_predicts_the_rest(tiny_export, photos, tmp_path):
    """Issue 26: one truncated JPEG in a folder aborted the whole `predict`. --on-bad fail (the default) still ends
    the command at the first bad file, naming it and the fix; --on-bad skip lists each bad file on stderr (and in
    --json's "skipped") and predicts the others exactly as it predicts them alone."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("face0.png", "face1.png"):
        shutil.copy(photos / name, folder / name)
    jpeg = (photos / "scene.jpg").read_bytes()
    (folder / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a JPEG cut in half
    (folder / "notes.png").write_bytes(b"not a png")
    bad = [str(folder / "half.jpg"), str(folder / "notes.png")]

    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(folder)])  # --on-bad fail
    assert r.exit_code == 2, r.output
    (line,) = _stderr_lines(r)
    assert line.startswith(f"error: {bad[0]}: ") and "truncated" in line and "--on-bad skip" in line, line
    assert not r.stdout.strip()  # nothing predicted

    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(folder), "--on-bad", "skip", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [s["image"] for s in doc["skipped"]] == bad
    assert "truncated" in doc["skipped"][0]["reason"] and "not an image" in doc["skipped"][1]["reason"]
    lines = _stderr_lines(r)
    assert lines == [f"skipped {s['image']}: {s['reason']}" for s in doc["skipped"]], lines
    alone = run_json(str(tiny_export), str(folder / "face0.png"), str(folder / "face1.png"))
    assert alone["skipped"] == []
    assert [x["image"] for x in doc["results"]] == [x["image"] for x in alone["results"]]
    for got, want in zip(doc["results"], alone["results"]):
        assert got["predictions"][0]["probabilities"] == pytest.approx(want["predictions"][0]["probabilities"],
                                                                       abs=1e-6)

    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(folder), "--on-bad", "skip"])  # the table
    assert r.exit_code == 0 and len(_stderr_lines(r)) == 2 and "face0.png" in r.stdout, r.output

    r = CliRunner().invoke(app, ["predict", str(tiny_export), *bad, "--on-bad", "skip"])  # nothing left
    assert r.exit_code == 2 and "no readable image left" in r.output and "Traceback" not in r.output, r.output
