"""Issue 27's reproducer as a test: `benchmarks/stress_runtimes.py` walks every CPU runtime in one long-lived
process (load, run and close in a seeded random order, several alive at once, forked DataLoader workers and child
processes between them). With a new `openvino.Core` per runner activation (`--core-per-activation`, the code before
the fix) every worker on a 2-core Xeon died with SIGSEGV within 6-184 s: OpenVINO's CPU plugin registers an
alternate signal stack per plugin and unmaps it when that plugin goes, so plugins destroyed out of creation order
leave the thread's signal stack pointing at unmapped memory, and the next SIGCHLD handler kills the process (or
writes its frame over whatever is mapped there now). With the process's one Core the same walk must not crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="openvino not installed: pip install 'fuse-export[openvino]'")
pytestmark = pytest.mark.slow  # a 1-epoch training and exports (~1 min), then the walk (45 s)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stress_runtimes.py"


def test_every_cpu_runtime_in_one_process_without_a_crash(tmp_path):
    out = tmp_path / "stress.jsonl"
    res = subprocess.run([sys.executable, str(SCRIPT), "--minutes", "0.75", "--out", str(out), "--workdir",
                          str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    cells = [json.loads(line) for line in out.read_text().splitlines()]
    assert res.returncode == 0 and cells, (res.stdout + res.stderr)[-3000:]
    for cell in cells:
        assert not cell["crashed"] and not cell["mismatch"], cell
        assert cell["mode"] == "shared Core" and cell["steps"] >= 10, cell
