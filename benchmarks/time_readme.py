"""Time the README's two commands on a clean clone, the way a newcomer runs them (issue 26).

Clones the committed HEAD into a fresh folder, reads command 1 (the first ```bash block under "## Two commands")
and command 2 (the block after `<!-- ci:test-command -->`) from the clone's README, and runs each with bash in
the clone: the install part (venv, pip upgrade, pip install) and the work part (quickstart / pytest) are timed
apart. The load average is read before and after each part; a run whose load (minus this job's own ~2) is
over 1.5 is marked `loaded` and should be repeated. Writes benchmarks/results/readme_times.json.

    python benchmarks/time_readme.py                  # both commands, the full suite included (~20 minutes)
    python benchmarks/time_readme.py --no-tests       # command 2's install only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from fuse_export.cpuinfo import cpu_features  # noqa: E402


def readme_commands(readme: str) -> tuple[str, str]:
    """(command 1, command 2) as the README states them."""
    section = readme.split("## Two commands", 1)[1]
    first = re.search(r"```bash\n(.*?)\n```", section, re.S)
    second = re.search(r"<!-- ci:test-command -->\n+```bash\n(.*?)\n```", section, re.S)
    if not first or not second:
        sys.exit("README.md: the two command blocks were not found")
    return first.group(1).strip(), second.group(1).strip()


def split_work(command: str) -> tuple[str, str]:
    """Split `venv && activate && installs && WORK` into (everything up to WORK, activate && WORK)."""
    steps = [s.strip() for s in command.split(" && ")]
    return " && ".join(steps[:-1]), " && ".join([steps[1], steps[-1]])


def timed(label: str, command: str, cwd: Path, log: Path) -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n+ {command}\n")
        out.flush()
        rc = subprocess.call(["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    row = {"part": label, "command": command, "rc": rc, "seconds": round(seconds, 1),
           "load_before": round(load_before, 2), "load_after": round(load_after, 2)}
    print(json.dumps(row), flush=True)
    return row


def tail_line(log: Path, pattern: str) -> str | None:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(pattern, ln)]
    return lines[-1].strip() if lines else None


def quickstart_summary(clone: Path, log: Path) -> dict:
    """What the quickstart reported: test accuracies (its last accuracy line) and its bench's parity."""
    out: dict = {"accuracy_line": tail_line(log, r"test accuracy \(chance")}
    bench = clone / "fuse-export-quickstart" / "bench.json"
    if bench.is_file():
        rows = [r for r in json.loads(bench.read_text())["rows"] if r.get("parity") and r["backend"] != "pytorch"]
        out["max_dprob"] = max(r["parity"]["max_abs_prob"] for r in rows)
        out["min_agreement"] = min(r["parity"]["top1_agreement"] for r in rows)
        out["backends"] = sorted({r["backend"] for r in rows})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tests", action="store_true", help="time command 2's install only")
    parser.add_argument("--no-quickstart", action="store_true", help="skip command 1")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "readme_times.json")
    args = parser.parse_args()

    commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    work = Path(tempfile.mkdtemp(prefix="readme-times-"))
    clone = work / "fuse-export"
    subprocess.check_call(["git", "clone", "-q", str(REPO), str(clone)])
    log = work / "log.txt"
    print(f"clone {clone} (commit {commit}); log {log}", flush=True)
    one, two = readme_commands((clone / "README.md").read_text(encoding="utf-8"))
    rows = []
    if not args.no_quickstart:
        install, run = split_work(one)
        rows.append(timed("command 1: install", install, clone, log))
        rows.append(timed("command 1: quickstart", run, clone, log))
        rows[-1].update(quickstart_summary(clone, log))
    install, run = split_work(two)
    rows.append(timed("command 2: install", install, clone, log))
    if not args.no_tests:
        rows.append(timed("command 2: tests", run, clone, log))
        rows[-1]["summary"] = tail_line(log, r"\d+ passed")
    cpu = cpu_features()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": cpu.model, "cpus": os.cpu_count(),
        "command": "python benchmarks/time_readme.py" + (" --no-tests" if args.no_tests else ""),
        # Each part runs 2 busy threads on 2 cores, so its own load is about 2: over 3.5 means another job ran.
        "loaded": any(max(r["load_before"], r["load_after"]) > 3.5 for r in rows),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(max(r["rc"] for r in rows))


if __name__ == "__main__":
    main()
