"""OpenVINO as a format (IR converted from the verified ONNX) and as backends with explicit precision.

These cases run in the suite's own long-lived pytest process, beside torch and ONNX Runtime, as OpenVINO runs in
`bench`, `serve` and `fuse_export.load()`. They ran in a child pytest while that process died with SIGSEGV right
after them (3 of 3 full runs on 2026-12-07, at the same test); the trigger was a new `openvino.Core` per runner
activation. With one Core per process (`exporters.to_openvino.shared_core`) the same suite passes in one process
(issue 27; benchmarks/RESULTS.md, "One process, every CPU runtime").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.cpuinfo import cpu_features, parse_cpuinfo
from fuse_export.errors import UserError
from fuse_export.exporters.to_openvino import shared_core
from fuse_export.fileio import sha256_file

ov = pytest.importorskip("openvino", reason="openvino not installed: pip install 'fuse-export[openvino]'")

NATIVE_BF16 = cpu_features().native_bf16
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has neither AVX512-BF16 nor AMX-BF16")


@pytest.fixture(scope="module")
def ov_export(tiny_run, tiny_csv, tmp_path_factory) -> Path:
    """fp32 and int8 IRs (and the ONNX files they come from) of the tiny model, verified, with manifest."""
    from fuse_export.exporters.formats import parse_formats
    from fuse_export.app.export_verify import export_checkpoint

    out = tmp_path_factory.mktemp("ov") / "export"
    export_checkpoint(tiny_run.best, parse_formats("openvino"), out, precisions=["fp32", "int8"],
                      calibration_data=tiny_csv, calibration_samples=32)
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_ir_listed_with_both_files_hashed_and_verified(ov_export):
    arts = {a["file"]: a for a in _manifest(ov_export)["artifacts"]}
    # The IR needs the verified ONNX of the same precision, so that is exported (and verified) first.
    assert {"model.onnx", "model.int8.onnx", "model.xml", "model.int8.xml"} <= set(arts)
    for xml, backend, bin_ in (("model.xml", "openvino", "model.bin"), ("model.int8.xml", "openvino-int8",
                                                                          "model.int8.bin")):
        a = arts[xml]
        assert a["format"] == "openvino" and a["backend"] == backend and a["verification"]["passed"]
        assert a["sha256"] == sha256_file(ov_export / xml)
        (c,) = a["companions"]
        assert c["file"] == bin_ and c["sha256"] == sha256_file(ov_export / bin_)
        assert c["size_bytes"] == (ov_export / bin_).stat().st_size
    assert arts["model.xml"]["verification"]["max_abs_prob"] <= 1e-4
    assert arts["model.xml"]["source_onnx"] == "model.onnx"
    assert arts["model.int8.xml"]["source_onnx"] == "model.int8.onnx"


def test_ir_keeps_fp32_weights_and_carries_metadata_in_rt_info(ov_export):
    text = (ov_export / "model.xml").read_text()
    assert 'element_type="f16"' not in text  # no silent fp16 compression
    # ~11.2 M fp32 parameters of ResNet-18 + heads: an fp16 file would be half this size.
    assert (ov_export / "model.bin").stat().st_size > 11_000_000 * 4
    model = shared_core().read_model(str(ov_export / "model.xml"))
    names = json.loads(model.get_rt_info(["fuse_export", "class_names"]).astype(str))
    assert names == list(_manifest(ov_export)["class_names"])
    pre = json.loads(model.get_rt_info(["fuse_export", "preprocessing"]).astype(str))
    assert pre == _manifest(ov_export)["preprocessing"] and {"color_mode", "geometry"} <= set(pre)
    io = json.loads(model.get_rt_info(["fuse_export", "io"]).astype(str))
    assert [o["name"] for o in io["outputs"]] == ["logits", "probabilities", "confidence"]
    assert model.get_rt_info(["fuse_export", "fuse_export_version"]).astype(str)
    from fuse_export.exporters.to_openvino import read_openvino_metadata

    assert read_openvino_metadata(ov_export / "model.xml")["preprocessing"] == pre


def _runner(backend: str, folder: Path, file: str):
    from fuse_export.contract import Preprocessing
    from fuse_export.runners.registry import BACKENDS

    pre = Preprocessing.from_dict(_manifest(folder)["preprocessing"])
    return BACKENDS[backend].factory(folder / file, Path(), pre, 2, False)


def test_precision_is_explicit_whatever_the_cpu_default(ov_export):
    with _runner("openvino", ov_export, "model.xml") as r:
        assert r.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert r.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    with _runner("openvino-int8", ov_export, "model.int8.xml") as r:
        assert r.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


@needs_bf16
def test_bf16_backends_run_bf16_close_to_eager(ov_export, tiny_run, tiny_csv):
    from fuse_export.compare.bench import eval_inputs
    from fuse_export.compare.parity import compare_outputs
    from fuse_export.contract import Preprocessing
    from fuse_export.runners.registry import BACKENDS

    pre = Preprocessing.from_dict(_manifest(ov_export)["preprocessing"])
    x = eval_inputs(pre, str(tiny_csv)).float_nchw  # the test split's faces
    with BACKENDS["pytorch"].factory(None, tiny_run.best, pre, 2, False) as r:
        ref = r.infer({"image": x})
    with BACKENDS["pytorch-bf16"].factory(None, tiny_run.best, pre, 2, False) as r:
        assert compare_outputs("pytorch-bf16", ref, r.infer({"image": x}), "bf16")  # heads kept fp32
    with _runner("openvino-bf16", ov_export, "model.xml") as r:
        assert r.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        got = r.infer({"image": x})
    parity = compare_outputs("openvino-bf16", ref, got, "bf16")
    assert parity and parity.max_abs_prob > 0  # within the bf16 bound, and really not fp32
    # The heads run f32 after the bf16 trunk: the whole graph in bf16 gives ~1.4e-2 here, over the bound.
    from fuse_export.runners.openvino_runner import split_after_pooling

    assert split_after_pooling(ov, shared_core().read_model(str(ov_export / "model.xml"))) is not None


def test_bf16_skipped_with_the_reason_on_a_cpu_without_it(monkeypatch):
    from fuse_export import cpuinfo
    from fuse_export.runners.registry import BACKENDS

    old = parse_cpuinfo("model name\t: Old Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    monkeypatch.setattr(cpuinfo, "cpu_features", lambda: old)
    for key in ("openvino-bf16", "pytorch-bf16"):
        ok, why = BACKENDS[key].available()
        assert not ok and "Old Xeon" in why and "AVX512-BF16" in why
    assert BACKENDS["openvino"].available() == (True, "")


def test_cpu_features_parse_the_speed_deciding_flags():
    amx = parse_cpuinfo("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                        "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n")
    assert amx.model.startswith("Intel") and amx.has_amx and amx.native_bf16
    assert amx.to_dict()["flags"] == {k: True for k in amx.to_dict()["flags"]}
    bare = parse_cpuinfo("model name\t: Some ARM\nFeatures\t: fp asimd\n")
    assert not bare.flags and not bare.native_bf16 and "AVX2 no" in bare.summary()


def test_bench_and_doctor_pick_openvino_up_from_the_tables(ov_export, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(ov_export), "--backends",
                                   "pytorch,openvino,openvino-bf16,openvino-int8,pytorch-bf16", "--batch-sizes", "1",
                                   "--warmup", "1", "--iterations", "2", "--threads", "2", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert res.exit_code == (0 if doc["passed"] else 1), res.output
    rows = {r["backend"]: r for r in doc["rows"]}
    assert rows["openvino"]["status"] == "ok" and rows["openvino"]["parity"]["passed"]
    assert rows["openvino"]["size_mb"] > 40  # .xml + .bin
    assert rows["openvino-int8"]["status"] == "ok" and rows["openvino-int8"]["file"] == "model.int8.xml"
    for key in ("openvino-bf16", "pytorch-bf16"):
        assert rows[key]["status"] == ("ok" if NATIVE_BF16 else "skipped")
        if NATIVE_BF16:
            assert rows[key]["precision"] == "bf16" and rows[key]["file"] == ("model.xml" if "vino" in key else None)
    assert set(doc["machine"]["cpu_features"]["flags"]) == {"avx2", "avx512", "vnni", "avx512_bf16", "amx_bf16",
                                                             "amx_int8"}
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0 and "AVX512-BF16" in res.output and "openvino-bf16" in res.output


def _face(tmp_path: Path) -> Path:
    from PIL import Image

    img = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img)
    return img


@needs_bf16
def test_predict_with_openvino_bf16(ov_export, tmp_path):
    res = subprocess.run([sys.executable, "-m", "fuse_export", "predict", str(ov_export), str(_face(tmp_path)),
                          "--backend", "openvino-bf16", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["backend"] == "openvino-bf16" and doc["model"].endswith("model.xml")


def test_predict_takes_the_class_names_from_the_ir_not_the_manifest(ov_export, tmp_path):
    """Issue 24: with `class_names` reversed in a copy's manifest.json, `predict --backend openvino` printed every
    label wrong; the IR's rt_info (inside the hashed .xml) is what counts."""
    export = tmp_path / "export"
    export.mkdir()
    for name in ("manifest.json", "model.xml", "model.bin"):  # the one artifact predict verifies and runs
        shutil.copy(ov_export / name, export / name)
    m = _manifest(export)
    names = m["class_names"]
    m["class_names"] = m["preprocessing"]["class_names"] = names[::-1]
    (export / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["predict", str(export), str(_face(tmp_path)), "--backend", "openvino", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["backend"] == "openvino" and doc["class_names"] == names
    (pred,) = doc["results"][0]["predictions"]
    assert list(pred["probabilities"]) == names and pred["emotion"] == max(names, key=pred["probabilities"].get)


@pytest.mark.parametrize("damage", ["truncated-bin", "no-bin"])
def test_bad_ir_gives_one_line_and_exit_2(ov_export, tmp_path, damage):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ov_export / "model.xml", lone / "model.xml")  # copied away from its folder: no manifest
    if damage == "truncated-bin":
        (lone / "model.bin").write_bytes((ov_export / "model.bin").read_bytes()[:100_000])
    res = subprocess.run([sys.executable, "-m", "fuse_export", "predict", str(lone / "model.xml"),
                          str(_face(tmp_path)), "--backend", "openvino"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in res.stderr and "model.xml" in err[0]
    assert ("model.bin is missing" if damage == "no-bin" else "truncated") in err[0]


def test_openvino_runner_never_imports_torch(ov_export):
    code = (f"import sys, numpy as np\n"
            f"from fuse_export.contract import Preprocessing\n"
            f"from fuse_export.runners.openvino_runner import OpenVinoRunner\n"
            f"with OpenVinoRunner({str(ov_export / 'model.xml')!r}, Preprocessing(40), threads=1) as r:\n"
            f"    out = r.infer({{'image': np.zeros((2, 3, 40, 40), np.float32)}})\n"
            f"assert out['probabilities'].shape == (2, 7)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_triton_repo_serves_ir_with_the_openvino_backend(ov_export, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from fuse_export.deploy.triton_repo import build_triton_repo

    result = build_triton_repo(ov_export, tmp_path / "repo")
    models = {m.name: m for m in result.models}
    for name, xml in (("fer_openvino", "model.xml"), ("fer_openvino_int8", "model.int8.xml")):
        cfg = text_format.Parse(models[name].config.read_text(), model_config_pb2.ModelConfig())
        assert cfg.backend == "openvino" and not cfg.platform and cfg.default_model_filename == "model.xml"
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        version = tmp_path / "repo" / name / "1"
        assert sha256_file(version / "model.xml") == sha256_file(ov_export / xml)
        assert sha256_file(version / "model.bin") == sha256_file(ov_export / xml.replace(".xml", ".bin"))


def test_export_refuses_what_openvino_cannot_take(tiny_run, tmp_path):
    from fuse_export.exporters.formats import parse_formats
    from fuse_export.app.export_verify import export_checkpoint

    with pytest.raises(UserError, match="--precision fp16 does not apply to format 'openvino'"):
        export_checkpoint(tiny_run.best, parse_formats("ov"), tmp_path / "x", precisions=["fp16"])


SOAK = Path(__file__).with_name("mixed_process_soak.py")


@pytest.mark.slow
def test_a_long_mixed_process_survives(ov_export, tiny_run, tiny_csv):
    """torch training, ONNX -> IR conversion, every OpenVINO precision (bf16 where the CPU has it), ONNX Runtime,
    TorchScript, bench and load() in one fresh process, looped, under the debug allocators (see
    tests/mixed_process_soak.py): native memory corruption by the runners surfaces as a crash or an abort with
    the allocator's message instead of passing silently."""
    env = {**os.environ, "PYTHONMALLOC": "debug", "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165",
           "PYTHONFAULTHANDLER": "1"}
    res = subprocess.run([sys.executable, str(SOAK), str(ov_export), str(tiny_run.best), str(tiny_csv), "--loops", "2"],
                         capture_output=True, text=True, timeout=600, env=env)
    tail = (res.stdout + res.stderr)[-4000:]
    # -11: SIGSEGV; -6: abort, which is how glibc's MALLOC_CHECK_ and Python's debug allocator report corruption
    assert res.returncode == 0, f"exit {res.returncode}:\n{tail}"
    assert "2 loops" in res.stdout and "outputs unchanged: ok" in res.stdout, tail


def test_one_openvino_core_per_process_whatever_runs(ov_export, tiny_run, tiny_csv, monkeypatch, tmp_path):
    """Issue 27: a new Core per runner activation corrupted the long suite process's heap (SIGSEGV, 3 of 3 runs).
    Runners of every precision, `load()`, `bench` and an IR conversion construct no Core beyond the shared one."""
    import fuse_export
    from fuse_export.exporters import to_openvino

    core = to_openvino.shared_core()
    made = []

    class CountingCore(ov.Core):  # the real Core, counted: any construction after this point is a second Core
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ov, "Core", CountingCore)
    for key, file in (("openvino", "model.xml"), ("openvino-int8", "model.int8.xml")):
        with _runner(key, ov_export, file) as r:
            r.infer({"image": np.zeros((1, 3, 40, 40), np.float32)})
    with fuse_export.load(ov_export, backend="openvino") as model:
        model.predict([_face(tmp_path)])
    fuse_export.bench(ov_export, fuse_export.BenchOptions(backends=("openvino",), batch_sizes=(1,), warmup=0,
                                                          iterations=1, min_time_s=0.0, rounds=1))
    to_openvino.export_openvino(ov_export / "model.onnx", tmp_path / "again.xml", {})
    assert made == [] and to_openvino.shared_core() is core
