"""examples/executorch_cpp: builds with CMake against the executorch wheel's prebuilt runtime, and the programs it
runs answer as ONNX Runtime does on the model.onnx of the same export (an independent runtime and file).

Like tests/test_executorch.py (whose module-level skip, and failure under FUSE_EXPORT_REQUIRE_EXECUTORCH, the
import below brings along) it runs in the executorch extra's own environment; .ci/run runs it there.
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

import test_executorch  # noqa: F401  (its module-level skip, or failure, without executorch; et_export: conftest)
from test_cpp_client import _compiler, generated_input

from fuse_export.compare.parity import tolerance_for
from fuse_export.exporters.to_executorch import MAX_BATCH_ET

# The export (fp32 and int8, ExecuTorch and ONNX) and the build (about 10 s on 2 cores) together take over 30 s.
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "executorch_cpp"
OUTPUTS = ("logits", "probabilities", "confidence")


@pytest.fixture(scope="module")
def et_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built in a temporary folder; CMake finds the wheel through the Python it is given, as the
    CMakeLists does for a user in an activated environment."""
    missing = "CMake" if shutil.which("cmake") is None else "a C++ compiler" if _compiler() is None else ""
    if missing:
        reason = f"the ExecuTorch C++ example needs CMake and a C++ compiler; this machine lacks {missing}"
        if os.environ.get("FUSE_EXPORT_REQUIRE_EXECUTORCH"):
            pytest.fail(f"{reason}; FUSE_EXPORT_REQUIRE_EXECUTORCH is set", pytrace=False)
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("et_cpp") / "build"
    configure = subprocess.run(["cmake", "-S", str(EXAMPLE), "-B", str(build),
                                f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    made = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return build / "fuse_export_et_client"


def run_client(client: Path, *args: str) -> dict:
    proc = subprocess.run([str(client), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def onnx_runtime(export: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: ONNX Runtime on the export's fp32 model.onnx (its own file, converter and runtime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"image": x})))


def assert_near(doc: dict, ref: dict[str, np.ndarray], precision: str) -> np.ndarray:
    """The parity rule of compare/parity.py: probabilities and confidence within the precision's bound, top-1
    agreement on the inputs the reference decides by more than that bound. Returns that mask of decided inputs."""
    tol = tolerance_for(precision)
    for name in OUTPUTS:
        assert np.asarray(doc[name], dtype=np.float32).shape == ref[name].shape, name
    dprob = float(np.abs(np.asarray(doc["probabilities"], dtype=np.float32) - ref["probabilities"]).max())
    dconf = float(np.abs(np.asarray(doc["confidence"], dtype=np.float32) - ref["confidence"]).max())
    assert dprob <= tol.atol and dconf <= tol.atol, (dprob, dconf)
    top2 = np.sort(ref["probabilities"], axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > tol.atol
    agree = np.argmax(doc["logits"], axis=1) == ref["logits"].argmax(1)
    if decided.any():
        assert agree[decided].mean() >= tol.min_agreement, agree
    return decided


def test_the_program_answers_as_onnx_runtime_on_the_generated_input(et_client, et_export):
    """11 images exceed the program's planned batch (8), so the client's pieces are exercised; the image size
    comes from the metadata the program returns, which names the manifest's classes."""
    manifest = json.loads((et_export / "manifest.json").read_text())
    pre = manifest["preprocessing"]
    doc = run_client(et_client, str(et_export / "model.pte"), "--batch", "11")
    x = generated_input(11, pre["image_size"])
    assert doc["input_shape"] == list(x.shape) and doc["max_batch"] == MAX_BATCH_ET
    ref = onnx_runtime(et_export, x)
    # The tiny model's probabilities are near uniform (they move by ~1e-6 between these images, under the bound):
    # the confidence, which moves by ~0.03, is what shows that each row of each piece got its own image.
    assert np.ptp(ref["confidence"]) > 100 * tolerance_for("fp32").atol
    decided = assert_near(doc, ref, "fp32")
    want = [pre["class_names"][k] for k in ref["probabilities"].argmax(1)]
    assert [e for e, d in zip(doc["emotion"], decided) if d] == [w for w, d in zip(want, decided) if d]
    meta = doc["metadata"]
    assert meta["class_names"] == pre["class_names"] and meta["image_size"] == pre["image_size"]
    assert meta["max_batch"] == MAX_BATCH_ET and meta["input_layout"] == "float-nchw"


def test_the_client_reads_a_raw_float32_file(et_client, et_export, tmp_path):
    size = json.loads((et_export / "manifest.json").read_text())["preprocessing"]["image_size"]
    x = np.random.default_rng(7).standard_normal((3, 3, size, size)).astype("<f4")
    x.tofile(tmp_path / "x.f32")
    doc = run_client(et_client, str(et_export / "model.pte"), "--input", str(tmp_path / "x.f32"))
    assert doc["input_shape"] == list(x.shape)
    assert_near(doc, onnx_runtime(et_export, x), "fp32")


def test_the_int8_program_answers_near_fp32_onnx_runtime(et_client, et_export):
    doc = run_client(et_client, str(et_export / "model.int8.pte"), "--batch", "6")
    x = generated_input(6, doc["input_shape"][2])
    assert doc["metadata"]["class_names"] == json.loads((et_export / "manifest.json").read_text())[
        "preprocessing"]["class_names"]
    assert_near(doc, onnx_runtime(et_export, x), "int8")


def test_client_errors_name_the_file_with_exit_codes(et_client, et_export, tmp_path):
    (tmp_path / "odd.f32").write_bytes(b"\0" * 100)
    size = json.loads((et_export / "manifest.json").read_text())["preprocessing"]["image_size"]
    proc = subprocess.run([str(et_client), str(et_export / "model.pte"), "--input", str(tmp_path / "odd.f32")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"100 bytes is not a whole number of float32 [3, {size}, {size}] images" in proc.stderr
    proc = subprocess.run([str(et_client), str(et_export / "model.pte"), "--batch", "two"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--batch needs an integer, got two" in proc.stderr
    (tmp_path / "junk.pte").write_bytes(b"not a program" * 10)
    for bad in (tmp_path / "missing.pte", tmp_path / "junk.pte"):
        proc = subprocess.run([str(et_client), str(bad)], capture_output=True, text=True, timeout=60)
        last = proc.stderr.strip().splitlines()[-1]  # after the runtime's own log lines
        assert proc.returncode == 1 and last.startswith(f"error: {bad}: not a loadable ExecuTorch program"), proc.stderr
