"""examples/cpp: builds with CMake against the torch wheel's libtorch, and its outputs match Python's."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model

# The build itself takes 10-20 s on 2 cores, on top of the session's pt2 compile.
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "cpp"


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cmake") is None or _compiler() is None:
        pytest.skip("the C++ example needs CMake and a C++ compiler; this machine lacks "
                    + ("CMake" if shutil.which("cmake") is None else "a C++ compiler"))
    build = tmp_path_factory.mktemp("cpp") / "build"
    configure = subprocess.run(["cmake", "-S", str(EXAMPLE), "-B", str(build),
                                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                               capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    made = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return build / "fuse_export_client"


def generated_input(batch: int, size: int) -> np.ndarray:
    """The client's documented deterministic pattern: value of flat index i = ((i * 7919) % 1000) / 500 - 1."""
    i = np.arange(batch * 3 * size * size, dtype=np.int64)
    return (((i * 7919) % 1000).astype(np.float32) / np.float32(500.0) - np.float32(1.0)).reshape(batch, 3, size, size)


def run_client(client: Path, *args: str) -> dict:
    proc = subprocess.run([str(client), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_matches_python(doc: dict, checkpoint: Path, x: np.ndarray) -> None:
    loaded = load_model(checkpoint)
    with torch.inference_mode():
        ref = [o.numpy() for o in ExportView(loaded.model).eval()(torch.from_numpy(x))]
    assert doc["input_shape"] == list(x.shape)
    for name, want in zip(("logits", "probabilities", "confidence"), ref):
        got = np.asarray(doc[name], dtype=np.float32)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4, name
    assert doc["emotion"] == [loaded.preprocessing.class_names[k] for k in ref[1].argmax(1)]


@pytest.mark.parametrize("file, loader", [("model.torchscript", "torch::jit::load"),
                                          ("model.pt2", "AOTIModelPackageLoader")])
def test_client_matches_python_on_the_generated_input(client, pt2_export, tiny_run, file, loader):
    doc = run_client(client, str(pt2_export / file), "--batch", "3")  # size comes from the file's metadata
    assert doc["loader"] == loader
    assert_matches_python(doc, tiny_run.best, generated_input(3, 40))


def test_client_reads_a_raw_float32_file(client, pt2_export, tiny_run, tmp_path):
    x = np.random.default_rng(7).standard_normal((2, 3, 40, 40)).astype("<f4")
    x.tofile(tmp_path / "x.f32")
    doc = run_client(client, str(pt2_export / "model.pt2"), "--input", str(tmp_path / "x.f32"))
    assert_matches_python(doc, tiny_run.best, x)


def test_client_errors_are_one_line_with_exit_codes(client, pt2_export, tmp_path):
    (tmp_path / "odd.f32").write_bytes(b"\0" * 100)
    proc = subprocess.run([str(client), str(pt2_export / "model.pt2"), "--input", str(tmp_path / "odd.f32")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "100 bytes is not a whole number of float32 [3, 40, 40] images" in proc.stderr
    proc = subprocess.run([str(client), str(tmp_path / "missing.pt2")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "frame #" not in proc.stderr
    proc = subprocess.run([str(client), str(pt2_export / "model.pt2"), "--batch", "two"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--batch needs an integer, got two" in proc.stderr
