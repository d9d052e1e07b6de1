"""TensorRT engine logic that needs no GPU: version branching, profiles, sidecars, cache keys, ONNX checks."""

import json
from pathlib import Path

import onnx
import pytest

from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.exporters.onnx_inspect import check_onnx_precision, inspect_onnx
from fuse_export.exporters.trt_api import LayerInfo, TrtApi, fp32_layers
from fuse_export.exporters.trt_engine import (BatchProfile, EngineMismatch, GpuIdentity, check_engine, check_profile,
                                           default_profile, engine_path_for, engine_sidecar, ort_trt_cache_dir,
                                           read_sidecar, sidecar_path, timing_cache_path)
from fuse_export.fileio import sha256_file, write_json

TRT10, TRT11 = TrtApi.from_version("10.13.0"), TrtApi.from_version("11.1.0")
H200 = GpuIdentity("NVIDIA H200", "9.0")


@pytest.fixture(scope="module")
def precision_onnx(tiny_export, tmp_path_factory):
    """Real reduced-precision ONNX files from the tiny export: fp16 (heads fp32), naive fp16, Q/DQ int8."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from fuse_export.contract import Preprocessing
    from fuse_export.exporters.calibration import CalibrationSet, random_pixels
    from fuse_export.exporters.onnx_precision import convert_fp16, quantize_int8

    out = tmp_path_factory.mktemp("precision")
    src = tiny_export / "model.onnx"
    convert_fp16(src, out / "model.fp16.onnx", {})
    naive = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)  # sigmoid/softmax in fp16 too
    onnx.save(naive, str(out / "naive.fp16.onnx"))
    pre = Preprocessing.from_dict(json.loads((tiny_export / "manifest.json").read_text())["preprocessing"])
    calib = CalibrationSet(random_pixels(pre, 32), random_pixels(pre, 8, seed=5), None, "random")
    quantize_int8(src, out / "model.int8.onnx", {}, calib, pre)
    return out


def test_version_branching_in_one_capability_object():
    assert (TRT10.major, TRT10.minor, TRT11.major) == (10, 13, 11)
    assert TRT10.has_precision_flags and TRT10.has_int8_calibrators and not TRT10.always_strongly_typed
    assert not TRT11.has_precision_flags and not TRT11.has_int8_calibrators and TRT11.always_strongly_typed
    assert TRT10.ort_trt_fp16_option and not TRT11.ort_trt_fp16_option
    assert TrtApi.from_version("12.0.1").always_strongly_typed  # a newer major keeps 11's rules
    with pytest.raises(BackendUnavailable, match="too old.*10.x and 11.x"):
        TrtApi.from_version("8.6.1")
    with pytest.raises(BackendUnavailable, match="cannot read"):
        TrtApi.from_version("ten")


@pytest.mark.parametrize("api", [TRT10, TRT11], ids=["trt10", "trt11"])
def test_precision_from_the_onnx_builds_strongly_typed_without_precision_flags(api):
    fp32 = api.plan(None, "fp32")
    assert fp32.precision == "fp32" and fp32.set_flags == () and fp32.clear_flags == ("TF32",) and not fp32.pin_fp32
    for kind in ("fp16", "int8"):
        plan = api.plan(kind, kind)
        assert plan.strongly_typed and plan.set_flags == () and not plan.pin_fp32
        # TRT 10 must ask for strong typing; TRT 11 is always strongly typed (the flag is deprecated, ignored).
        assert plan.network_flags == (() if api.major >= 11 else ("STRONGLY_TYPED",))
    assert api.plan(None, "fp16").precision == "fp16"  # default: the ONNX's own precision


def test_trt10_lowers_fp32_onnx_to_fp16_with_flags_and_fp32_pins_trt11_refuses():
    plan = TRT10.plan("fp16", "fp32")
    assert not plan.strongly_typed and plan.set_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and plan.pin_fp32
    assert "pinned to fp32" in plan.describe()
    with pytest.raises(ExportError, match="TensorRT 11.1.0 has no precision flags.*model.fp16.onnx"):
        TRT11.plan("fp16", "fp32", "model.onnx")


@pytest.mark.parametrize("api", [TRT10, TRT11], ids=["trt10", "trt11"])
def test_int8_needs_a_qdq_onnx_and_mismatches_are_refused(api):
    with pytest.raises(ExportError, match="model.int8.onnx, a Q/DQ ONNX"):
        api.plan("int8", "fp32", "model.onnx")
    with pytest.raises(ExportError, match="is fp16 but --precision is fp32"):
        api.plan("fp32", "fp16", "model.fp16.onnx")
    with pytest.raises(ExportError, match="bf16 ONNX"):
        api.plan(None, "bf16")
    with pytest.raises(ExportError, match="fp32, fp16, int8"):
        api.plan("bf16", "fp32")


def test_fp32_pin_rule_on_layer_lists():
    def L(name, kind, ins, outs, act=None, floats=True):
        return LayerInfo(name, kind, act, tuple(ins), tuple(outs), floats)

    layers = [L("conv", "CONVOLUTION", ["x"], ["f"]), L("relu", "ACTIVATION", ["f"], ["r"], "RELU"),
              L("fc", "MATRIX_MULTIPLY", ["r"], ["z"]), L("sig", "ACTIVATION", ["r"], ["a"], "SIGMOID"),
              L("mul", "ELEMENTWISE", ["a", "z"], ["w"]), L("shape", "SHAPE", ["w"], ["s"], floats=False),
              L("sm", "SOFTMAX", ["w"], ["p"]), L("other", "ELEMENTWISE", ["z", "z"], ["q"])]
    assert [layers[i].name for i in fp32_layers(layers)] == ["sig", "mul", "sm"]


def test_fp32_pin_rule_on_the_fused_graph_keeps_heads_not_trunk(tiny_export):
    from fuse_export.exporters.onnx_precision import head_nodes

    info = inspect_onnx(tiny_export / "model.onnx")
    pinned = [info.layers[i] for i in fp32_layers(info.layers)]
    kinds = [p.kind for p in pinned]
    assert kinds.count("SOFTMAX") == 3 and ("ACTIVATION", "SIGMOID") in [(p.kind, p.activation) for p in pinned]
    assert "CONV" not in kinds and "GEMM" in kinds  # the stacker after the softmaxes, not one convolution
    assert {p.name for p in pinned} <= set(head_nodes(onnx.load(str(tiny_export / "model.onnx"))))


def test_onnx_checks_tell_fp32_fp16_and_qdq_int8_apart(tiny_export, precision_onnx):
    fp32 = inspect_onnx(tiny_export / "model.onnx")
    assert fp32.kind == "fp32" and fp32.fp16_initializers == 0 and fp32.qdq_nodes == 0
    assert fp32.input_name == "image" and fp32.static_batch is None and fp32.input_dims[1:] == [3, 40, 40]
    fp16 = check_onnx_precision(precision_onnx / "model.fp16.onnx", "fp16")
    assert fp16.fp16_initializers > 0 and fp16.qdq_nodes == 0
    assert fp16.reduced_sensitive_ops == []  # the heads stayed fp32: sigmoid and softmaxes compute in fp32
    naive = inspect_onnx(precision_onnx / "naive.fp16.onnx")
    assert naive.kind == "fp16" and len(naive.reduced_sensitive_ops) == 4
    int8 = check_onnx_precision(precision_onnx / "model.int8.onnx", "int8")
    assert int8.qdq_nodes >= 2 * 20  # a Q/DQ pair at least per convolution
    with pytest.raises(ExportError, match="expected a fp16 ONNX but it is fp32.*0 fp16"):
        check_onnx_precision(tiny_export / "model.onnx", "fp16")
    with pytest.raises(ExportError, match="expected a int8 ONNX but it is fp16"):
        check_onnx_precision(precision_onnx / "model.fp16.onnx", "int8")
    # what each precision becomes under each major version, from the real files
    assert TRT11.plan(None, int8.kind).strongly_typed and TRT10.plan("fp16", fp32.kind).pin_fp32


def test_profile_parsing_and_validation(tiny_export):
    assert BatchProfile.parse("1:32:256") == BatchProfile(1, 32, 256) and str(BatchProfile(1, 32, 256)) == "1:32:256"
    assert BatchProfile.parse(" 8 ") == BatchProfile(8, 8, 8)
    for bad in ("0:1:2", "4:2:8", "1:8:4", "a:b:c", "1:2", "", "1:2:3:4", "1:32:100000"):
        with pytest.raises(UserError, match="--batch"):
            BatchProfile.parse(bad)
    info = inspect_onnx(tiny_export / "model.onnx")
    assert default_profile(info) == BatchProfile(1, 32, 256)
    assert BatchProfile(1, 32, 256).shapes(info.input_dims) == ((1, 3, 40, 40), (32, 3, 40, 40), (256, 3, 40, 40))
    check_profile(BatchProfile(2, 4, 8), info)
    info.input_dims = [4, 3, 40, 40]  # as a --static-batch 4 export
    assert default_profile(info) == BatchProfile(4, 4, 4)
    with pytest.raises(UserError, match="fixed batch of 4; use --batch 4"):
        check_profile(BatchProfile(1, 4, 8), info)
    info.input_dims = ["batch", 3, "h", "w"]
    with pytest.raises(ExportError, match="dynamic axes besides the batch"):
        check_profile(BatchProfile(1, 1, 1), info)


def test_cache_keys_change_with_what_invalidates_them(tmp_path):
    t = timing_cache_path(tmp_path, "10.13.0.35", H200)
    assert t.parent == tmp_path / "tensorrt" and "10.13.0.35" in t.name and "sm90" in t.name
    assert t == timing_cache_path(tmp_path, "10.13.0.35", H200)  # one cache shared by every network
    assert t != timing_cache_path(tmp_path, "11.1.0", H200) != timing_cache_path(tmp_path, "10.13.0.35",
                                                                                  GpuIdentity("NVIDIA A100", "8.0"))
    p = BatchProfile(1, 32, 256)
    base = ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "10.13.0", H200, "fp32", p)
    assert base == ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "10.13.0", H200, "fp32", p)
    others = {ort_trt_cache_dir(tmp_path, "cd" * 32, "1.30.0", "10.13.0", H200, "fp32", p),
              ort_trt_cache_dir(tmp_path, "ab" * 32, "1.31.0", "10.13.0", H200, "fp32", p),
              ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "11.1.0", H200, "fp32", p),
              ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "10.13.0", GpuIdentity("NVIDIA L4", "8.9"), "fp32", p),
              ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "10.13.0", H200, "fp16", p),
              ort_trt_cache_dir(tmp_path, "ab" * 32, "1.30.0", "10.13.0", H200, "fp32", BatchProfile(1, 1, 1))}
    assert len(others) == 6 and base not in others


def test_sidecar_written_and_mismatches_say_rebuild(tiny_export, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00plan bytes as TensorRT wrote them")
    info = inspect_onnx(tiny_export / "model.onnx")
    build = {"precision": "fp32", "onnx_kind": "fp32", "strongly_typed": False, "set_flags": [], "fp32_layers": []}
    sidecar = engine_sidecar(engine, info, TRT10, H200, build, BatchProfile(1, 32, 256), {"build_seconds": 1.0})
    write_json(sidecar_path(engine), sidecar)
    assert sidecar_path(engine).name == "model.engine.json" and engine.read_bytes().startswith(b"\x00plan")
    doc = read_sidecar(engine)
    assert doc["tensorrt_version"] == "10.13.0" and doc["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert doc["profile"] == {"input": "image", "batch": "1:32:256", "min": [1, 3, 40, 40], "opt": [32, 3, 40, 40],
                              "max": [256, 3, 40, 40]}
    assert doc["onnx"]["sha256"] == sha256_file(tiny_export / "model.onnx") and doc["precision"] == "fp32"
    assert doc["engine_sha256"] == sha256_file(engine)
    check_engine(engine, doc, "10.13.0", H200)  # same TensorRT, same GPU: fine
    with pytest.raises(EngineMismatch, match=r"TensorRT 10.13.0 \(this machine has 11.1.0\).*rebuild it here with "
                                             r"`fuse-export build-engine model.onnx`"):
        check_engine(engine, doc, "11.1.0", H200)
    with pytest.raises(EngineMismatch, match="GPU NVIDIA H200 with compute capability 9.0 .this machine has NVIDIA "
                                             "A100, 8.0.*rebuild"):
        check_engine(engine, doc, "10.13.0", GpuIdentity("NVIDIA A100", "8.0"))
    engine.write_bytes(b"another plan")
    with pytest.raises(EngineMismatch, match="changed since model.engine.json was written; rebuild"):
        check_engine(engine, doc, "10.13.0", H200)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineMismatch, match="unreadable engine sidecar"):
        read_sidecar(engine)
    assert read_sidecar(tmp_path / "none.engine") is None
    assert engine_path_for(Path("x/model.fp16.onnx")) == Path("x/model.fp16.engine")
