"""--embed-preprocessing: TorchScript and ONNX that take raw uint8 RGB pixels and equal the float pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.data.transforms import eval_pixels_transform, eval_transform
from fuse_export.errors import InputError
from fuse_export.exporters.to_torchscript import load_torchscript
from fuse_export.model.fused import ExportView
from fuse_export.runners.ort_runner import OnnxRuntimeRunner
from fuse_export.training.checkpoint import load_model


@pytest.fixture(scope="module")
def embedded_export(tiny_run, tiny_csv, tmp_path_factory) -> Path:
    """uint8-input TorchScript + ONNX (fp32), and a uint8-input int8 ONNX, next to the float-input ONNX."""
    out = tmp_path_factory.mktemp("embedded")
    for args in (["--format", "onnx"],
                 ["--format", "torchscript,onnx", "--embed-preprocessing"],
                 ["--format", "onnx", "--embed-preprocessing", "--precision", "int8", "--calibration-data", tiny_csv,
                  "--calibration-samples", "64"]):
        res = CliRunner().invoke(app, ["export", str(tiny_run.best), "--out", str(out), *map(str, args)])
        assert res.exit_code == 0, res.output
    return out


def _pixels_and_float_pipeline(tiny_run, tiny_csv, n: int = 5) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Raw test images after the eval geometry (uint8 NHWC), and eager fp32 on the same images through the
    recipe's float eval transform (ToTensor + Normalize): the reference a uint8 graph must equal."""
    loaded = load_model(tiny_run.best)
    pre = loaded.preprocessing
    split = load_fer2013_csv(tiny_csv).splits["test"]
    images = [split.load(i) for i in range(n)]
    pixels = np.stack([eval_pixels_transform(pre)(im).numpy().transpose(1, 2, 0) for im in images])
    x = torch.stack([eval_transform(pre)(im) for im in images])
    with torch.inference_mode():
        outs = ExportView(loaded.model).eval()(x)
    return pixels, dict(zip(("logits", "probabilities", "confidence"), (o.numpy() for o in outs)))


def test_manifest_and_metadata_say_which_contract_each_file_has(embedded_export):
    m = json.loads((embedded_export / "manifest.json").read_text())
    layouts = {a["file"]: (a["embed_preprocessing"], a["io"]["layout"], a["io"]["inputs"][0]["dtype"],
                           a["io"]["inputs"][0]["shape"]) for a in m["artifacts"]}
    assert layouts == {
        "model.onnx": (False, "float-nchw", "float32", ["batch", 3, 40, 40]),
        "model.uint8.onnx": (True, "uint8-nhwc", "uint8", ["batch", 40, 40, 3]),
        "model.uint8.torchscript": (True, "uint8-nhwc", "uint8", ["batch", 40, 40, 3]),
        "model.uint8.int8.onnx": (True, "uint8-nhwc", "uint8", ["batch", 40, 40, 3]),
    }
    assert all(a["verification"]["passed"] for a in m["artifacts"])
    for file in ("model.uint8.onnx", "model.uint8.int8.onnx"):
        model = onnx.load(str(embedded_export / file))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["input_layout"] == "uint8-nhwc" and json.loads(meta["io"])["inputs"][0]["dtype"] == "uint8"
        (inp,) = model.graph.input
        assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [40, 40, 3]  # dynamic batch, NHWC
    _, meta = load_torchscript(embedded_export / "model.uint8.torchscript")
    assert meta["input_layout"] == "uint8-nhwc" and meta["io"]["inputs"][0]["shape"] == ["batch", 40, 40, 3]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load: deprecated upstream, still what clients call
@pytest.mark.parametrize("batch", [1, 5])
def test_uint8_graphs_equal_the_float_pipeline(embedded_export, tiny_run, tiny_csv, batch):
    """Plain torch.jit / ONNX Runtime fed raw pixels vs eager fed the normalized float images."""
    import onnxruntime as ort

    pixels, ref = _pixels_and_float_pipeline(tiny_run, tiny_csv)
    pixels, ref = pixels[:batch], {k: v[:batch] for k, v in ref.items()}
    ts = torch.jit.load(str(embedded_export / "model.uint8.torchscript"))
    with torch.no_grad():
        got_ts = [o.numpy() for o in ts(torch.from_numpy(pixels))]
    sess = ort.InferenceSession(str(embedded_export / "model.uint8.onnx"), providers=["CPUExecutionProvider"])
    got_ort = sess.run(["logits", "probabilities", "confidence"], {"image": pixels})
    for got in (got_ts, got_ort):
        for name, value in zip(("logits", "probabilities", "confidence"), got):
            assert value.shape == ref[name].shape
            assert np.abs(value - ref[name]).max() <= 1e-4, name


def test_uint8_runner_refuses_float_input(embedded_export, tiny_run):
    pre = load_model(tiny_run.best).preprocessing
    with OnnxRuntimeRunner(embedded_export / "model.uint8.onnx", pre, embed_preprocessing=True) as runner:
        with pytest.raises(InputError, match="dtype float32, expected uint8"):
            runner.infer({"image": np.zeros((1, 40, 40, 3), np.float32)})
        with pytest.raises(InputError, match="shape"):
            runner.infer({"image": np.zeros((1, 3, 40, 40), np.uint8)})  # NCHW given to an NHWC graph


def test_bench_feeds_raw_pixels_to_uint8_artifacts(embedded_export, tiny_csv, tmp_path):
    res = CliRunner().invoke(app, ["bench", str(embedded_export), "--backends",
                                   "pytorch,torchscript,onnxruntime,onnxruntime-int8", "--batch-sizes", "2",
                                   "--warmup", "1", "--iterations", "2", "--data", str(tiny_csv), "--no-progress",
                                   "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    ok = {r["file"]: r for r in rows if r["status"] == "ok"}
    assert set(ok) == {None, "model.onnx", "model.uint8.onnx", "model.uint8.torchscript", "model.uint8.int8.onnx"}
    assert ok["model.uint8.onnx"]["title"].endswith("uint8-in")
    for file in ("model.uint8.onnx", "model.uint8.torchscript"):
        assert ok[file]["parity"]["passed"] and ok[file]["parity"]["max_abs_prob"] <= 1e-4
        assert ok[file]["accuracy"] == ok[None]["accuracy"]
    assert ok["model.uint8.int8.onnx"]["parity"]["passed"]
    # No float-input TorchScript and no float-input int8 ONNX were exported: those rows say so.
    skipped = {r["backend"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert "--precision int8" in skipped["onnxruntime-int8"] and "torchscript" in skipped
