"""Inference without PyTorch: `predict` and `fuse_export.load()` never import torch on ONNX Runtime, give the
same outputs, check the output contract, and the commands that need torch say so in one line without it.

With FUSE_EXPORT_SLIM_PYTHON set to the interpreter of a slim install (`pip install -e .`, no torch; .ci/run
builds one), the last test runs `predict` and `load().predict()` there on an export made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fuse_export
from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, IntegrityError, UserError

SLIM_PYTHON = os.environ.get("FUSE_EXPORT_SLIM_PYTHON")
# Runs the CLI in a process where torch and torchvision cannot be imported at all (what the slim install is).
BLOCKED = ("import sys; sys.modules.update(dict.fromkeys(('torch', 'torchvision'), None)); "
           "sys.argv = ['fuse-export'] + sys.argv[1:]; from fuse_export.cli import main; main()")


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three generated faces: a gray PNG, an RGB JPEG at another size, an RGBA PNG."""
    from fuse_export.data.synthetic import SyntheticSpec, generate_faces

    folder = tmp_path_factory.mktemp("faces")
    arrays, _, _ = generate_faces(SyntheticSpec(samples_per_class=1, seed=11))
    paths = [folder / "a.png", folder / "b.jpg", folder / "c.png"]
    Image.fromarray(arrays[0]).save(paths[0])
    Image.fromarray(arrays[1]).convert("RGB").resize((61, 75)).save(paths[1], quality=95)
    Image.fromarray(arrays[2]).convert("RGBA").save(paths[2])
    return paths


def _cli_json(python: str, export: Path, images: list[Path], *extra: str) -> dict:
    r = subprocess.run([python, "-c", BLOCKED, "predict", str(export), *map(str, images), "--json", *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _probs(doc: dict) -> np.ndarray:
    return np.array([[p["predictions"][0]["probabilities"][c] for c in doc["class_names"]] for p in doc["results"]])


def test_predict_imports_neither_torch_nor_torchvision(tiny_export, faces):
    """`python -X importtime` lists every module the predict process imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "fuse_export", "predict", str(tiny_export),
                        *map(str, faces), "--backend", "onnxruntime", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and "PIL.Image" in imported  # the listing is real
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "torchvision"))
    assert heavy == [], f"predict imported {heavy[:5]}"
    assert len(json.loads(r.stdout)["results"]) == 3


def test_load_predict_equals_the_cli_and_takes_paths_bytes_and_images(tiny_export, faces):
    doc = _cli_json(sys.executable, tiny_export, faces)  # torch blocked in that process
    with fuse_export.load(tiny_export) as model:
        assert model.backend == "onnxruntime" and model.runner.active
        out = model.predict(faces)
        assert np.abs(out.probabilities - _probs(doc)).max() <= 1e-5  # fast-startup session vs full optimization
        assert out.labels == [r["predictions"][0]["emotion"] for r in doc["results"]]
        assert out.probabilities.shape == (3, len(out.class_names)) and out.confidence.shape == (3,)
        assert np.allclose(out.probabilities.sum(axis=1), 1, atol=1e-5) and ((0 < out.confidence) & (out.confidence < 1)).all()
        same = model.predict([faces[0].read_bytes(), Image.open(faces[1]), str(faces[2])])
        assert np.array_equal(same.probabilities, out.probabilities)
        one = model.predict(faces[0])
        assert len(one) == 1 and np.array_equal(one.probabilities[0], out.probabilities[0])
        rows = out.to_dicts()
        assert rows[0]["label"] == out.labels[0] and set(rows[0]["probabilities"]) == set(out.class_names)
        assert len(model.predict([])) == 0
    assert not model.runner.active  # the context manager closed the session


def test_load_chooses_by_device_and_explains(tiny_export):
    with fuse_export.load(tiny_export, device="cpu") as model:
        assert model.backend == "onnxruntime"
    with pytest.raises(UserError, match="runs on cpu, not on 'cuda'"):
        fuse_export.load(tiny_export, backend="onnxruntime", device="cuda")
    from fuse_export.runners.cuda_base import cuda_status

    if not cuda_status()[0]:
        with pytest.raises(BackendUnavailable, match="nothing runs on cuda here"):
            fuse_export.load(tiny_export, device="cuda")
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        fuse_export.load(tiny_export, backend="nope")


def _toy_onnx(path: Path, softmax: bool, size: int = 32) -> Preprocessing:
    """A tiny graph with the contract's names and shapes, built with the onnx package (no torch), carrying
    fuse-export metadata; with softmax=False its 'probabilities' are raw logits, which the contract rules out."""
    import onnx
    from onnx import TensorProto, helper

    from fuse_export.exporters.metadata import artifact_metadata

    pre = Preprocessing(image_size=size, color_mode="gray", geometry="squash")
    w = np.random.default_rng(0).normal(0, 3, (3, 7)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image", "hw"], ["feat"], keepdims=0),
        helper.make_node("MatMul", ["feat", "w"], ["logits"]),
        helper.make_node("Softmax" if softmax else "Identity", ["logits"], ["probabilities"], **({"axis": 1} if softmax else {})),
        helper.make_node("ReduceMean", ["feat", "one"], ["m"], keepdims=1),
        helper.make_node("Sigmoid", ["m"], ["confidence"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 7]),
         helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch", 1])],
        [onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "one"), onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in artifact_metadata(pre).items()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return pre


def test_a_bare_onnx_file_runs_from_its_metadata_and_bad_outputs_are_refused(tmp_path, faces, monkeypatch):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    pre = _toy_onnx(good, softmax=True)
    _toy_onnx(bad, softmax=False)
    with fuse_export.load(good) as model:
        assert model.preprocessing == pre  # gray + squash, from the file's own metadata
        out = model.predict(faces)
        assert out.probabilities.shape == (3, 7)
    # The metadata is read from the protobuf wire format: what onnx.load finds, without onnx (the slim install).
    import onnx

    from fuse_export.exporters.metadata import read_onnx_metadata

    props = {p.key: json.loads(p.value) for p in onnx.load(str(good)).metadata_props}
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert read_onnx_metadata(good) == props and props["preprocessing"] == pre.to_dict()
    with fuse_export.load(good) as model:
        assert np.array_equal(model.predict(faces).probabilities, out.probabilities)
    with pytest.raises(IntegrityError, match="break the output contract.*do not sum to 1"):
        fuse_export.load(bad).predict(faces)
    data = good.read_bytes()
    for name, junk in (("junk.onnx", b"not onnx"), ("empty.onnx", b""), ("cut.onnx", data[: len(data) // 2])):
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(UserError, match=f"{name}: not a readable ONNX file"):
            fuse_export.load(tmp_path / name)


def test_commands_that_need_torch_say_so_in_one_line(tiny_run, tmp_path):
    for args in (["train", "synthetic-quick"], ["export", str(tiny_run.best), "--out", str(tmp_path / "x")]):
        r = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
        assert f"`fuse-export {args[0]}` needs torch" in r.stderr and "pip install 'fuse-export[train]'" in r.stderr


def test_import_fuse_export_stays_light():
    code = ("import sys, fuse_export; light = 'numpy' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "fuse_export.load; print(light, 'onnxruntime' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "False", "False"], r.stdout + r.stderr


@pytest.mark.skipif(not SLIM_PYTHON, reason="FUSE_EXPORT_SLIM_PYTHON (a slim install's python) not set; .ci/run sets it")
def test_slim_install_runs_an_export_made_here(tiny_export, faces):
    listed = subprocess.run([SLIM_PYTHON, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert not names & {"torch", "torchvision"}, "the slim install pulled torch"
    assert "onnxruntime" in names
    with fuse_export.load(tiny_export, fast_startup=True) as model:
        want = model.predict(faces)
    doc = _cli_json(SLIM_PYTHON, tiny_export, faces)
    assert np.abs(_probs(doc) - want.probabilities).max() <= 1e-5
    code = ("import json, sys, fuse_export; m = fuse_export.load(sys.argv[1]); o = m.predict(sys.argv[2:]); "
            "print(json.dumps({'p': o.probabilities.tolist(), 'c': o.confidence.tolist(), 'l': o.labels, "
            "'torch': 'torch' in sys.modules}))")
    r = subprocess.run([SLIM_PYTHON, "-c", code, str(tiny_export), *map(str, faces)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert not got["torch"] and got["l"] == want.labels
    with fuse_export.load(tiny_export) as model:  # load() defaults to the fully optimized session, both sides
        full = model.predict(faces)
    assert np.abs(np.array(got["p"]) - full.probabilities).max() <= 1e-5
    assert np.abs(np.array(got["c"]) - full.confidence).max() <= 1e-5
