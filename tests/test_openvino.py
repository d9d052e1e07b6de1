"""The OpenVINO cases (tests/openvino_cases.py), run in a pytest process of their own.

Why a child process: in the full suite, the long-lived pytest process died with SIGSEGV inside CPython's eval
loop shortly after these cases ran OpenVINO in-process (bf16 backends among them) next to ~240 earlier tests'
torch/ONNX Runtime state; the same cases pass alone, and a short process repeating them did not crash. That is
an open defect (memory corruption somewhere between OpenVINO's CPU plugin and the rest of the process), noted
in the changelog; isolating the cases keeps every other test's result trustworthy while it is hunted down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("openvino_cases.py")


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None,
                    reason="openvino not installed (pip install -e '.[openvino]')")
def test_openvino_cases_in_their_own_process() -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", str(CASES)],
                         capture_output=True, text=True, timeout=900, cwd=CASES.parent.parent)
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and " failed" not in res.stdout, tail
