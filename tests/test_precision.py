"""Reduced-precision ONNX (fp16, int8 Q/DQ) through the CLI, on the tiny trained model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare.parity import TOLERANCES, compare_outputs
from fuse_export.cpuinfo import parse_cpuinfo
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.data.transforms import eval_transform
from fuse_export.errors import DataError, UserError
from fuse_export.exporters.formats import FORMATS, artifact_file
from fuse_export.exporters.calibration import load_calibration
from fuse_export.exporters.int8_weights import WEIGHT_RANGES, int8_weight_range
from fuse_export.exporters.onnx_precision import head_nodes, quantize_int8
from fuse_export.fileio import sha256_file
from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model

CALIBRATION_SAMPLES = 96


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def precision_export(tiny_run, tiny_csv, tmp_path_factory) -> tuple[Path, str]:
    """fp32, fp16 and int8 ONNX of the tiny model in one folder (int8 calibrated on the tiny CSV)."""
    out = tmp_path_factory.mktemp("precision")
    res = cli("export", tiny_run.best, "--format", "onnx", "--precision", "fp32,fp16,int8", "--out", out,
              "--calibration-data", tiny_csv, "--calibration-samples", CALIBRATION_SAMPLES)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_each_precision_has_its_own_file_and_manifest_entry(precision_export, tiny_csv):
    out, output = precision_export
    assert f"only {CALIBRATION_SAMPLES} calibration images" in output  # below ~300: the user is warned
    m = json.loads((out / "manifest.json").read_text())
    entries = {a["file"]: a for a in m["artifacts"]}
    assert set(entries) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for file, precision, backend in (("model.onnx", "fp32", "onnxruntime"),
                                     ("model.fp16.onnx", "fp16", "onnxruntime-fp16"),
                                     ("model.int8.onnx", "int8", "onnxruntime-int8")):
        a = entries[file]
        assert (a["format"], a["precision"], a["backend"], a["embed_preprocessing"]) == ("onnx", precision, backend,
                                                                                          False)
        assert a["sha256"] == sha256_file(out / file)
        v = a["verification"]
        atol, agreement = TOLERANCES[precision]
        assert v["passed"] and v["max_abs_prob"] <= atol and v["top1_agreement"] >= agreement
        # Verified on the CSV's held-out (test) rows, not on noise, and the accuracy on them is recorded.
        assert "held-out" in a["verified_on"] and v["samples"] == 28
        assert set(a["heldout_accuracy"]) == {"eager_fp32", "artifact"}
        meta = {p.key: p.value for p in onnx.load(str(out / file), load_external_data=False).metadata_props}
        assert meta["precision"] == precision and meta["input_layout"] == "float-nchw"
    calib = entries["model.int8.onnx"]["calibration"]
    assert calib["images"] == CALIBRATION_SAMPLES and calib["method"] == "minmax" and str(tiny_csv) in calib["source"]
    # int8 and fp16 are smaller than fp32 by roughly their width.
    sizes = {f: entries[f]["size_bytes"] for f in entries}
    assert sizes["model.int8.onnx"] < 0.3 * sizes["model.onnx"]
    assert sizes["model.fp16.onnx"] < 0.55 * sizes["model.onnx"]


def _test_split(tiny_run, tiny_csv) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_model(tiny_run.best)
    split = load_fer2013_csv(tiny_csv).splits["test"]
    tf = eval_transform(loaded.preprocessing)
    x = torch.stack([tf(split.load(i)) for i in range(len(split))])
    with torch.inference_mode():
        _, prob, _ = ExportView(loaded.model).eval()(x)
    return x.numpy(), prob.numpy()


def test_reduced_precision_files_match_eager_within_the_stated_bounds(precision_export, tiny_run, tiny_csv):
    """Independent of export's own verification: plain ONNX Runtime on the test split vs eager fp32."""
    import onnxruntime as ort

    out, _ = precision_export
    x, ref = _test_split(tiny_run, tiny_csv)
    for precision in ("fp16", "int8"):
        sess = ort.InferenceSession(str(out / f"model.{precision}.onnx"), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[1].type == "tensor(float)"
        prob = sess.run(["probabilities"], {"image": x})[0]
        parity = compare_outputs(precision, {"probabilities": ref}, {"probabilities": prob}, precision)
        assert parity and parity.max_abs_prob <= TOLERANCES[precision][0], parity.explain()
        # A different batch size than any used in export still runs (dynamic batch survives conversion).
        assert sess.run(["probabilities"], {"image": x[:3]})[0].shape == (3, 7)


def _zero_points(model) -> dict[str, list[np.ndarray]]:
    """Zero points of activation QuantizeLinear nodes and of weight DequantizeLinear nodes."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, list[np.ndarray]] = {"activations": [], "weights": []}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = onnx.numpy_helper.to_array(inits[n.input[2]])
            if n.op_type == "QuantizeLinear":
                out["activations"].append(zp)
            elif n.input[0] in inits and zp.dtype != np.int32:  # int32: biases
                out["weights"].append(zp)
    return out


def test_int8_is_qdq_with_per_channel_weights_and_float_heads(precision_export):
    out, _ = precision_export
    model = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 20
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    per_channel = 0
    for conv in convs:
        dq = producers[conv.input[1]]  # the weight arrives through DequantizeLinear
        assert dq.op_type == "DequantizeLinear"
        w = onnx.numpy_helper.to_array(inits[dq.input[0]])
        assert w.dtype == np.int8
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        per_channel += scale.size == w.shape[0] > 1
    assert per_channel == len(convs) == 20
    # The default scheme is u8s8: uint8 asymmetric activations, int8 symmetric weights (ORT's fast x86 path).
    zps = _zero_points(model)
    assert all(z.dtype == np.uint8 for z in zps["activations"]) and any(z.any() for z in zps["activations"])
    assert all(z.dtype == np.int8 and not z.any() for z in zps["weights"]) and zps["weights"]
    # The heads stay fp32: no Q/DQ after the global pooling, float Gemm weights, fp32 sigmoid and softmax.
    heads = [n for n in model.graph.node if n.name in set(head_nodes(model))]
    assert {"Sigmoid", "Softmax", "Gemm", "Mul"} <= {n.op_type for n in heads}
    for n in heads:
        assert n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        assert all(producers[i].op_type != "DequantizeLinear" for i in n.input if i in producers), n.name
    gemm_weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Gemm" and n.input[1] in inits]
    assert gemm_weights and all(t.data_type == onnx.TensorProto.FLOAT for t in gemm_weights)


def _conv_weight_codes(model) -> list[np.ndarray]:
    """The int8 codes of every Conv weight (the initializer its DequantizeLinear reads)."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return [onnx.numpy_helper.to_array(inits[producers[n.input[1]].input[0]])
            for n in model.graph.node if n.op_type == "Conv"]


def _assert_weight_bits(model, bits: int) -> None:
    """Per-channel symmetric: each output channel's largest code is the range's end (7-bit: 64, 8-bit: 127)."""
    lo, hi = WEIGHT_RANGES[bits]
    codes = _conv_weight_codes(model)
    assert len(codes) == 20
    for c in codes:
        assert c.dtype == np.int8 and c.min() >= lo and c.max() <= hi
        per_channel = np.abs(c.reshape(len(c), -1).astype(np.int32)).max(1)
        assert set(per_channel.tolist()) <= {0, hi}, sorted(set(per_channel.tolist()))


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_auto_int8_weights_follow_the_cpu_flags():
    """7-bit weights exactly where u8 x s8 pair sums saturate: x86 without VNNI."""
    def cpu(flags: str):
        return parse_cpuinfo(f"model name\t: Test CPU\nflags\t\t: {flags}\n")

    zen3, zen4 = cpu("sse4_2 avx avx2 fma"), cpu("avx2 avx512f avx512bw avx512_vnni avx512_bf16")
    alder_lake, skylake_x = cpu("avx2 avx_vnni"), cpu("avx2 avx512f avx512bw")
    assert int8_weight_range("auto", zen3, "x86_64").bits == 7
    assert int8_weight_range("auto", skylake_x, "x86_64").bits == 7  # AVX-512 without VNNI saturates too
    assert int8_weight_range("auto", zen4, "x86_64").bits == 8
    assert int8_weight_range("auto", alder_lake, "AMD64").bits == 8
    assert int8_weight_range("auto", cpu("fp asimd asimddp"), "aarch64").bits == 8  # no vpmaddubsw off x86
    why = int8_weight_range("auto", zen3, "x86_64")
    assert "no VNNI" in why.reason and "Test CPU" in why.reason and why.to_dict()["range"] == [-64, 64]
    for choice, bits in (("8", 8), ("7", 7)):  # an explicit choice wins over the flags
        for flags in (zen3, zen4):
            w = int8_weight_range(choice, flags, "x86_64")
            assert (w.bits, w.choice, w.reduce_range) == (bits, choice, bits == 7)
    with pytest.raises(UserError, match="--int8-weights '6': choose from auto, 8, 7"):
        int8_weight_range("6", zen3, "x86_64")


def test_auto_int8_weights_of_an_export_are_this_cpus_and_recorded(precision_export):
    out, output = precision_export
    expected = int8_weight_range("auto").to_dict()  # the machine running the tests
    (entry,) = [a for a in json.loads((out / "manifest.json").read_text())["artifacts"]
                if a["file"] == "model.int8.onnx"]
    assert entry["calibration"]["int8_weights"] == expected and expected["choice"] == "auto"
    assert f"{expected['bits']}-bit range" in entry["calibration"]["weights"]
    assert json.loads(_metadata(out / "model.int8.onnx")["int8_weights"]) == expected
    assert f"int8 weights: {expected['bits']}-bit" in output
    _assert_weight_bits(onnx.load(str(out / "model.int8.onnx")), expected["bits"])


@pytest.mark.parametrize("weights", ["8", "7"])
def test_int8_weights_choice_reaches_quantize_static(weights, tiny_export, tiny_run, tiny_csv, tmp_path):
    pre = load_model(tiny_run.best).preprocessing
    dst = tmp_path / "model.int8.onnx"
    extra = quantize_int8(tiny_export / "model.onnx", dst, {"precision": "int8"},
                          load_calibration(tiny_csv, pre, 32), pre, weights=weights)
    _assert_weight_bits(onnx.load(str(dst)), int(weights))
    assert extra["calibration"]["int8_weights"]["choice"] == weights
    assert json.loads(_metadata(dst)["int8_weights"])["bits"] == int(weights)


def test_int8_weights_from_the_cli_are_recorded_for_onnx_and_openvino(tiny_run, tiny_csv, tmp_path):
    """`--int8-weights 7` through the installed CLI (its own process: OpenVINO stays out of the test process);
    the int8 IR converted from the Q/DQ file carries the same record. Without openvino: the ONNX file only."""
    with_ir = importlib.util.find_spec("openvino") is not None
    out = tmp_path / "export"
    res = subprocess.run([sys.executable, "-m", "fuse_export", "export", str(tiny_run.best), "--format",
                          "onnx,openvino" if with_ir else "onnx", "--precision", "int8", "--int8-weights", "7",
                          "--calibration-data", str(tiny_csv), "--calibration-samples", "32", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "int8 weights: 7-bit (--int8-weights 7)" in res.stderr  # progress and notes go to stderr
    entries = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    record = entries["model.int8.onnx"]["calibration"]["int8_weights"]
    assert record == {"bits": 7, "range": [-64, 64], "choice": "7", "reason": "--int8-weights 7"}
    _assert_weight_bits(onnx.load(str(out / "model.int8.onnx")), 7)
    if with_ir:
        assert entries["model.int8.xml"]["calibration"] == entries["model.int8.onnx"]["calibration"]
        rt = ET.parse(out / "model.int8.xml").getroot().find("rt_info/fuse_export/int8_weights")
        assert rt is not None and json.loads(rt.get("value")) == record


def test_fp16_converts_the_backbone_and_keeps_io_and_heads_fp32(precision_export):
    out, _ = precision_export
    model = onnx.load(str(out / "model.fp16.onnx"))
    onnx.checker.check_model(model)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert all(o.type.tensor_type.elem_type == f32 for o in model.graph.output)
    inits = {t.name: t for t in model.graph.initializer}
    conv_w = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert len(conv_w) == 20 and all(t.data_type == f16 for t in conv_w)
    gemm_w = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Gemm" and n.input[1] in inits]
    assert gemm_w and all(t.data_type == f32 for t in gemm_w)


def test_bench_shows_each_precision_as_its_own_row(precision_export, tiny_csv, tmp_path):
    out, _ = precision_export
    res = cli("bench", out, "--backends", "pytorch,onnxruntime,onnxruntime-fp16,onnxruntime-int8", "--batch-sizes",
              "1", "--warmup", "1", "--iterations", "2", "--data", tiny_csv, "--no-progress", "--json",
              tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    rows = {r["backend"]: r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
    assert {k: rows[k]["precision"] for k in rows} == {"pytorch": "fp32", "onnxruntime": "fp32",
                                                       "onnxruntime-fp16": "fp16", "onnxruntime-int8": "int8"}
    for key in ("onnxruntime-fp16", "onnxruntime-int8"):
        r = rows[key]
        assert r["status"] == "ok" and r["file"] == f"model.{rows[key]['precision']}.onnx"
        assert r["parity"]["passed"] and r["accuracy"] is not None
        assert r["parity"]["atol"] == TOLERANCES[r["precision"]][0]


def _image_folder(tiny_csv: Path, root: Path, per_class: int = 6) -> Path:
    """An ImageFolder layout (one sub-folder per class) written from the CSV's training rows as PNGs."""
    ds = load_fer2013_csv(tiny_csv)
    train = ds.splits["train"]
    for c, name in enumerate(ds.class_names):
        (root / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(train.labels == c)[:per_class]):
            train.load(int(i)).save(root / name / f"{k}.png")
    return root


def test_calibration_from_an_image_folder_holds_out_labelled_images(tiny_csv, tiny_run, tmp_path):
    pre = load_model(tiny_run.best).preprocessing
    folder = _image_folder(tiny_csv, tmp_path / "images")
    calib = load_calibration(folder, pre, samples=20)
    assert calib.pixels.shape == (20, 40, 40, 3) and calib.pixels.dtype == np.uint8
    assert len(calib.held_out) == 42 // 5 and calib.held_out_labels is not None
    (folder / "angry" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg: cannot be read as an image"):
        load_calibration(folder, pre, samples=100)
    with pytest.raises(DataError, match="expected a FER-2013 CSV"):
        load_calibration(tmp_path / "images" / "angry" / "0.png", pre)  # a file that is neither CSV nor folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_calibration(tmp_path / "empty", pre)


def test_int8_percentile_calibration_from_a_folder_with_a_static_batch(tiny_run, tiny_csv, tmp_path):
    folder = _image_folder(tiny_csv, tmp_path / "images")
    Image.new("RGB", (97, 61), (120, 90, 60)).save(folder / "neutral" / "odd-size.jpg")  # resized by the transform
    out = tmp_path / "export"
    res = cli("export", tiny_run.best, "--format", "onnx", "--precision", "int8", "--out", out, "--static-batch",
              "--batch", "4", "--calibration-data", folder, "--calibration-method", "percentile", "--int8-scheme",
              "s8s8")
    assert res.exit_code == 0, res.output
    (a,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert a["file"] == "model.int8.onnx" and a["static_batch"] and a["calibration"]["method"] == "percentile"
    assert a["calibration"]["scheme"] == "s8s8" and a["verification"]["passed"]
    # s8s8: signed int8 with zero points of 0 everywhere, as TensorRT's explicit quantization requires.
    zps = _zero_points(onnx.load(str(out / "model.int8.onnx")))
    assert zps["activations"] and all(z.dtype == np.int8 and not z.any() for v in zps.values() for z in v)
    assert a["verification"]["samples"] % 4 == 0 and "held-out" in a["verified_on"]
    dims = onnx.load(str(out / "model.int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 40, 40]


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "torchscript", "--precision", "int8"], "--precision int8 does not apply to format 'torchscript'"),
    (["--format", "onnx", "--precision", "int4"], "--precision 'int4': choose from fp32, fp16, int8"),
    (["--format", "onnx", "--precision", "int8"], "--precision int8 needs --calibration-data"),
    (["--format", "onnx", "--precision", "int8", "--calibration-data", "/nonexistent/calib.csv"],
     "/nonexistent/calib.csv: not found"),
    (["--format", "onnx", "--precision", "int8", "--calibration-method", "kl"], "Invalid value"),
    (["--format", "onnx", "--precision", "int8", "--int8-weights", "6"], "Invalid value"),
])
def test_bad_precision_options_exit_2_with_one_line(args, message, tiny_run, tmp_path):
    out = tmp_path / "out"
    res = cli("export", tiny_run.best, "--out", out, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    if "Invalid value" not in message:  # typer's own usage errors are boxed; ours are one line
        assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_artifact_file_names_never_collide():
    names = [artifact_file(f, p, e) for f in FORMATS.values() for p in f.precisions for e in (False, True)]
    assert len(names) == len(set(names))
    assert artifact_file(FORMATS["onnx"], "int8", True) == "model.uint8.int8.onnx"
    assert artifact_file(FORMATS["torchscript"], "fp32", True) == "model.uint8.torchscript"
