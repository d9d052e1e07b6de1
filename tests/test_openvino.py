"""The OpenVINO cases (tests/openvino_cases.py), run in a pytest process of their own.

Why a child process: the suite's long-lived pytest process dies with SIGSEGV (rc 139) when these cases run in
it. This is an open defect, reproduced on two CPUs:
- AMD EPYC Zen 4 (AVX-512, AVX512-BF16): 3 times, last release.
- AMD EPYC Zen 3 (AVX2 only, so no bf16 runs at all): 2 of 2 runs, 2026-12-04.

What is known so far:
- Both in-process runs crashed at the same case. The first 261 results came out, and the crash struck in the
  case right after `bench` and `doctor` ran OpenVINO in-process.
- The main thread died in `_PyType_Lookup`, an attribute lookup in CPython's eval loop, so Python's heap was
  already corrupt by then.
- The same cases pass in a fresh process, and so does the long mixed torch/ONNX Runtime/OpenVINO loop under the
  debug allocators (`test_a_long_mixed_process_survives`). valgrind memcheck over every OpenVINO path
  (fp32, int8, the bf16 runner's split at the f32 hint, next to torch) found no invalid access.
- So the fault needs the long process's history, about 250 earlier tests, as well as the OpenVINO work.
- 2026-12-07 (issue 27), AMD EPYC Zen 4: with the cases moved back in-process the suite died 3 of 3 times at the
  same place, in `test_predict_with_openvino_bf16` right after `test_bench_and_doctor_pick_openvino_up_from_the_tables`
  (test 507 of 732), while the main thread waited for that test's subprocess. A core dump (gdb, python-gdb's
  py-bt) puts the fault in `pymalloc_free` -> `address_in_range` (a small object's pool header is garbage) under
  `selectors.select` in `subprocess.communicate`: Python's small-object heap was corrupted earlier, by native
  code. No other thread ran Python code; the other threads were libgomp (torch), TBB (OpenVINO), an ONNX Runtime
  pool and six Python threads blocked on one lock. Python's own faulthandler printed nothing even with pytest's
  capture off (its SIGSEGV handler did not run or could not write). `benchmarks/stress_runtimes.py` (every CPU runtime, export, bench,
  doctor, threads, in one process) ran 20 minutes, 1447 steps, without a crash: the trigger is still unknown.
Isolating the cases keeps every other test's result trustworthy while the defect is hunted down (evidence:
benchmarks/RESULTS.md, issue 13).
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
