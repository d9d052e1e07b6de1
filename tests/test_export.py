import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare import parity
from fuse_export.exporters.formats import FORMATS, parse_formats, resolve
from fuse_export.errors import ExportError, UserError
from fuse_export.fileio import sha256_file
from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model
from fuse_export.app.export_verify import export_checkpoint


def test_manifest_lists_every_artifact_with_hash_and_contract(tiny_export, tiny_run):
    m = json.loads((tiny_export / "manifest.json").read_text())
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "onnx"}
    for a in m["artifacts"]:
        f = tiny_export / a["file"]
        assert a["sha256"] == sha256_file(f) and a["size_bytes"] == f.stat().st_size
        assert a["precision"] == "fp32" and a["io"]["inputs"][0]["shape"] == ["batch", 3, 40, 40]
        assert [o["name"] for o in a["io"]["outputs"]] == ["logits", "probabilities", "confidence"]
        assert a["verification"]["passed"] and a["verification"]["max_abs_prob"] <= 1e-4
    assert m["source_checkpoint"]["sha256"] == sha256_file(tiny_run.best)
    assert m["class_names"][0] == "angry" and m["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert {"torch", "onnx", "onnxruntime"} <= set(m["tool_versions"])


def test_onnx_is_single_file_checked_dynamic_with_metadata(tiny_export):
    model = onnx.load(str(tiny_export / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not list(tiny_export.glob("*.data"))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities", "confidence"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch, not frozen to 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"])[6] == "neutral"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["image_size"]) == 40
    assert meta["fuse_export_version"]


PLAIN_LOADER = r"""
import sys, json
sys.modules["fuse_export"] = None  # prove the artifacts need no fuse_export
import numpy as np, torch, onnxruntime as ort
folder, x_path = sys.argv[1], sys.argv[2]
x = np.load(x_path)
files = {"fuse_export.json": ""}
ts = torch.jit.load(folder + "/model.torchscript", _extra_files=files)
with torch.no_grad():
    t_out = [o.numpy() for o in ts(torch.from_numpy(x))]
sess = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
o_out = sess.run(["logits", "probabilities", "confidence"], {"image": x})
np.savez(x_path + ".out.npz", ts_prob=t_out[1], ort_prob=o_out[1], ts_conf=t_out[2], ort_conf=o_out[2])
print(json.loads(files["fuse_export.json"])["class_names"][0])
"""


def test_artifacts_load_without_fuse_export_and_match_eager(tiny_export, tiny_run, tmp_path):
    loaded = load_model(tiny_run.best)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 40, 40)).astype(np.float32)  # batch 5: not the export's example batch
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(tiny_export), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "angry"
    out = np.load(tmp_path / "x.npy.out.npz")
    with torch.no_grad():
        _, prob, conf = ExportView(loaded.model)(torch.from_numpy(x))
    for key in ("ts_prob", "ort_prob"):
        assert np.abs(out[key] - prob.numpy()).max() <= 1e-4
    for key in ("ts_conf", "ort_conf"):
        assert np.abs(out[key] - conf.numpy()).max() <= 1e-4


def test_verification_failure_is_an_error_and_removes_the_file(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCES, "fp32", (0.0, 1.0))  # nothing but bit-exact passes
    with pytest.raises(ExportError, match="does not match eager PyTorch"):
        export_checkpoint(tiny_run.best, [FORMATS["onnx"]], tmp_path)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "manifest.json").exists()


def test_static_batch_onnx(tiny_run, tmp_path):
    export_checkpoint(tiny_run.best, [FORMATS["onnx"]], tmp_path, static_batch=True, batch=4)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_each_format_that_stands_alone_names_its_metadata_reader(tiny_export):
    """A lone artifact is described by the metadata inside it: the format table names the reader of every format
    but a raw TensorRT plan, and the readers of this export's files give what its manifest records."""
    assert {k for k, f in FORMATS.items() if f.metadata_reader is None} == {"tensorrt"}
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    for key in ("torchscript", "onnx"):
        meta = resolve(FORMATS[key].metadata_reader)(tiny_export / FORMATS[key].file_name)
        assert meta["class_names"] == manifest["class_names"] and meta["preprocessing"] == manifest["preprocessing"]


def test_format_table_validation():
    assert [f.key for f in parse_formats("ts, onnx")] == ["torchscript", "onnx"]
    with pytest.raises(UserError, match="did you mean 'onnx'"):
        parse_formats("onxx")


def test_cli_export_errors_exit_2(tmp_path, tiny_run):
    r = CliRunner().invoke(app, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "torchscript", "--opset", "17",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--opset 17 does not apply to format 'torchscript'" in r.output
    assert not (tmp_path / "o" / "model.torchscript").exists()
