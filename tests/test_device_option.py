"""`--device` on `predict` and `load(device=...)`: cpu picks a CPU artifact, cuda[:N] only CUDA ones, and a
device that cannot run here (or a malformed one) is one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fuse_export as fx
from fuse_export.cli import app
from fuse_export.runners.cuda_base import cuda_status
from fuse_export.runners.registry import BACKENDS


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fuse_export.data.synthetic import SyntheticSpec, generate_faces

    arrays, _, _ = generate_faces(SyntheticSpec(samples_per_class=1, seed=5))
    path = tmp_path_factory.mktemp("device") / "face.png"
    Image.fromarray(np.asarray(arrays[3], np.uint8)).save(path)
    return path


def test_cpu_device_picks_a_cpu_backend_and_matches_the_default(tiny_export: Path, face: Path) -> None:
    with fx.load(tiny_export, device="cpu") as model:
        on_cpu = model.predict([face])
        assert BACKENDS[model.backend].device == "cpu"
    with fx.load(tiny_export) as model:
        default = model.predict([face])
    np.testing.assert_allclose(on_cpu.probabilities, default.probabilities, atol=1e-5)
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(face), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert on_cpu.labels[0] in r.output


@pytest.mark.skipif(cuda_status()[0], reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_is_one_line_exit_2(tiny_export: Path, face: Path, device: str) -> None:
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(face), "--device", device])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "nothing runs on cuda" in r.output and "Traceback" not in r.output
    with pytest.raises(fx.UserError, match="nothing runs on cuda"):
        fx.load(tiny_export, device=device)


def test_malformed_device_is_refused(tiny_export: Path, face: Path) -> None:
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(face), "--device", "gpu0"])
    assert r.exit_code == 2 and "expected cpu, cuda or cuda:N" in r.output


def test_export_and_bench_refuse_a_gpu_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_device (run first by export and bench) on a machine with one GPU, simulated: cuda and cuda:0 pass,
    cuda:1 is one line naming the devices there are. Without CUDA every cuda device is refused (see the
    hostile-input cases `--device cuda:99`)."""
    import torch

    from fuse_export.runners import cuda_base

    monkeypatch.setattr(cuda_base, "cuda_status", lambda: (True, ""))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for ok in (None, "cpu", "cuda", "cuda:0"):
        cuda_base.check_device(ok)
    with pytest.raises(fx.UserError, match=r"--device cuda:1: this machine has 1 CUDA device\(s\), cuda:0..cuda:0"):
        cuda_base.check_device("cuda:1")
    monkeypatch.setattr(cuda_base, "cuda_status", lambda: (False, "no CUDA device"))
    with pytest.raises(fx.UserError, match="--device cuda: no CUDA device"):
        cuda_base.check_device("cuda")


def _repeated_phrases(line: str, words: int = 4) -> list[str]:
    """Every run of `words` words that occurs more than once in `line`."""
    tokens = line.split()
    grams = [" ".join(tokens[i:i + words]) for i in range(len(tokens) - words + 1)]
    return sorted({g for g in grams if grams.count(g) > 1})


@pytest.mark.skipif(cuda_status()[0], reason="checks the refusal on a machine without CUDA")
def test_cuda_device_without_cuda_says_the_cause_once_in_a_short_line(tiny_export: Path, face: Path) -> None:
    """Issue 26: the refusal was a ~900-character line repeating "no CUDA device (...)" six times, once per backend
    and artifact. It is one short line: the missing device once (as cuda_status says it), and what was tried."""
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(face), "--device", "cuda"])
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
    why = cuda_status()[1]
    assert line.count(why) == 1 and len(line) - len(str(tiny_export)) < 300, line
    assert _repeated_phrases(line) == [], line
    assert line.count("(") == line.count(")"), line  # whole reasons, never cut inside a parenthesis
    tried = line.split("tried ", 1)[1].split(")", 1)[0].split(", ")  # the backends with an artifact here
    assert tried and all(BACKENDS[k].device == "cuda" for k in tried), line
    with pytest.raises(fx.UserError) as exc:
        fx.load(tiny_export, device="cuda")
    assert f"error: {exc.value}" == line  # the API says the same


def test_reasons_of_a_refused_device_are_each_said_once() -> None:
    """The line's other form (the device is there; backends lack something else): each whole reason once, with
    the backends it stopped, and the count of backends the export has no artifact for."""
    from fuse_export.inference.selection import nothing_runs

    ort = "onnxruntime-gpu not installed (onnxruntime 1.2 has no CUDAExecutionProvider; see `doctor`)"
    line = nothing_runs("runs/export", "cpu", {ort: ["a", "b"], "TensorRT not installed (pip install tensorrt)": ["c"]},
                        ["d", "e"])
    assert line == (f"runs/export: nothing runs on cpu here: a, b: {ort}; c: TensorRT not installed (pip install "
                    "tensorrt); the export has no artifact for the other 2 cpu backends")
    assert nothing_runs("m", "cpu", {}, ["d"]) == "m: nothing runs on cpu here: the export has no artifact for any " \
                                                  "of the 1 cpu backends"
