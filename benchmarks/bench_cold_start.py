"""Cold start, measured: wall time and peak RSS of fresh processes, in one run.

* `bare-onnxruntime`: a plain Python process that imports onnxruntime, builds an InferenceSession with its
  default options and runs one zero batch: the floor any tool on ONNX Runtime stands on.
* `predict <backend>`: `fuse-export predict EXPORT IMAGE --backend <backend>` on one image, per backend the
  export folder can run here (the acceptance figure is onnxruntime: <= 1.0 s wall, <= 350 MB peak RSS).
* `serve <backend>` (with --serve): `fuse-export serve` until its HTTP /v2/health/ready answers 200; RSS is the
  largest sum over the server's process tree (Triton runs as a child process), sampled every 20 ms.

Each case runs --repeats times, interleaved (round-robin) so the drift of a shared machine hits all alike;
the table gives the median and the best wall time, CPU time (user + sys), the time the main thread waited for
a CPU (Linux schedstat: on a shared machine wall minus that wait is the wall time with a core to itself) and the
largest peak RSS. The processes run with the interpreter given by --python (default: this one), e.g. a slim
venv without torch.

    python benchmarks/bench_cold_start.py EXPORT IMAGE [--backends onnxruntime,openvino] [--repeats 5]
        [--serve] [--python .slim-venv/bin/python] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BARE_ORT = """
import sys
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
shape = [1 if not isinstance(d, int) else d for d in s.get_inputs()[0].shape]
dtype = np.uint8 if "uint8" in s.get_inputs()[0].type else np.float32
s.run(None, {s.get_inputs()[0].name: np.zeros(shape, dtype)})
"""


@dataclass
class Case:
    name: str
    argv: list[str]
    serve_port: int | None = None  # a server: measured until ready on this HTTP port, then stopped
    shown: str = ""  # the command as printed (default: argv)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    error: str = ""

    def row(self) -> dict:
        if not self.walls:
            return {"case": self.name, "error": self.error or "no run"}
        return {"case": self.name, "runs": len(self.walls), "wall_median_s": round(statistics.median(self.walls), 3),
                "wall_best_s": round(min(self.walls), 3), "cpu_median_s": round(statistics.median(self.cpus), 3),
                "runqueue_wait_median_s": round(statistics.median(self.waits), 3),
                "wall_minus_wait_median_s": round(statistics.median(w - q for w, q in zip(self.walls, self.waits)), 3),
                "wall_minus_wait_best_s": round(min(w - q for w, q in zip(self.walls, self.waits)), 3),
                "peak_rss_mb": round(max(self.rss_mb), 1), "command": self.shown or " ".join(self.argv),
                "error": self.error}


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, float]:
    """(wall s, user+sys CPU s, peak RSS MB, run-queue wait s) of one process run to completion.

    The run-queue wait is the time the main thread was ready to run but waited for a CPU (Linux schedstat,
    read from the exited process before it is reaped): on a machine shared with other jobs, wall minus that
    wait is what the same process takes when it has a core to itself (its critical path is the main thread)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: /proc/PID is still there
    wall = time.perf_counter() - t0
    try:
        wait = int(Path(f"/proc/{proc.pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        wait = float("nan")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, wait  # Linux: ru_maxrss in KiB


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def serve_once(argv: list[str], port: int, env: dict[str, str], timeout: float) -> tuple[float, float, float, float]:
    """(wall s to ready, nan, peak tree RSS MB, nan) of one server (CPU time and run-queue wait of a live process
    tree are not tracked)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    peak, url = 0.0, f"http://127.0.0.1:{port}/v2/health/ready"
    try:
        while True:
            peak = max(peak, _tree_rss_mb(proc.pid))
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise RuntimeError(f"exit {proc.returncode} before ready: {err.splitlines()[-1] if err else ''}")
            try:
                with urllib.request.urlopen(url, timeout=0.5) as r:
                    if r.status == 200:
                        wall = time.perf_counter() - t0
                        peak = max(peak, _tree_rss_mb(proc.pid))
                        return wall, float("nan"), peak, float("nan")
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"not ready after {timeout:.0f} s")
            time.sleep(0.02)
    finally:  # stop the server (its own session: Triton's child processes go with it)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_backends(export: Path) -> list[str]:
    manifest = json.loads((export / "manifest.json").read_text())
    return list(dict.fromkeys(a["backend"] for a in manifest["artifacts"]))


def cpu_line() -> str:
    try:
        from fuse_export.cpuinfo import cpu_features

        f = cpu_features()
        return f"{f.model}, {f.logical_cpus} logical CPUs, flags: {', '.join(sorted(f.flags)) or 'none'}"
    except ImportError:
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path, help="An export folder (manifest.json + model.onnx).")
    ap.add_argument("image", type=Path, help="One image file for predict.")
    ap.add_argument("--backends", default=None, help="Comma-separated (default: every backend of the export).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--serve", action="store_true", help="Also time `fuse-export serve` to ready per backend.")
    ap.add_argument("--serve-timeout", type=float, default=120.0)
    ap.add_argument("--python", default=sys.executable, help="Interpreter of the environment to measure.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    python = str(Path(args.python))
    script = Path(python).parent / "fuse-export"
    cli = [str(script)] if script.is_file() else [python, "-m", "fuse_export"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    backends = args.backends.split(",") if args.backends else export_backends(args.export)
    onnx = str(args.export / "model.onnx")
    cases = [Case("bare onnxruntime (session + run)", [python, "-c", BARE_ORT, onnx],
                  shown=f"{python} -c <BARE_ORT of this script> {onnx}")]
    cases += [Case(f"predict {b}", [*cli, "predict", str(args.export), str(args.image), "--backend", b])
              for b in backends]
    if args.serve:
        for b in backends:
            port = free_port()
            argv = [*cli, "serve", str(args.export), "--backend", b, "--http-port", str(port),
                    "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
            cases.append(Case(f"serve {b} (to ready)", argv, serve_port=port))
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for c in cases:
            if c.error and not c.walls:
                continue  # failed on its first run: say why once, do not retry
            try:
                if c.serve_port is None:
                    wall, cpu, rss, wait = run_once(c.argv, env)
                else:
                    wall, cpu, rss, wait = serve_once(c.argv, c.serve_port, env, args.serve_timeout)
            except RuntimeError as exc:
                c.error = str(exc)
                continue
            c.walls.append(wall)
            c.cpus.append(cpu)
            c.rss_mb.append(rss)
            c.waits.append(wait)

    rows = [c.row() for c in cases]
    load = (load_before, os.getloadavg()[0])
    print(f"cold start, {args.repeats} interleaved runs per case; {cpu_line()}; 1-min load average before/after: "
          f"{load[0]:.2f}/{load[1]:.2f}; python {platform.python_version()} ({python})")
    print(f"{'case':<34} {'wall median':>11} {'wall best':>9} {'CPU median':>10} {'waited':>8} "
          f"{'wall-waited median':>18} {'best':>7} {'peak RSS':>9}")

    def sec(x: float, width: int) -> str:
        return f"{'-':>{width}}" if x != x else f"{x:>{width - 2}.3f} s"

    for r in rows:
        if "error" in r and "runs" not in r:
            print(f"{r['case']:<34} failed: {r['error']}")
            continue
        print(f"{r['case']:<34} {sec(r['wall_median_s'], 11)} {sec(r['wall_best_s'], 9)} {sec(r['cpu_median_s'], 10)} "
              f"{sec(r['runqueue_wait_median_s'], 8)} {sec(r['wall_minus_wait_median_s'], 18)} "
              f"{sec(r['wall_minus_wait_best_s'], 7)} {r['peak_rss_mb']:>6.0f} MB"
              + (f"   ({r['error']})" if r["error"] else ""))
    print("waited: time the main thread was ready but waited for a CPU (schedstat); wall-waited: the wall time "
          "with a core to itself")
    for r in rows:
        if "command" in r:
            print(f"  {r['case']}: {r['command']}")
    if args.json:
        doc = {"cpu": cpu_line(), "python": python, "repeats": args.repeats, "loadavg": load, "rows": rows,
               "torch_installed": subprocess.run([python, "-c", "import importlib.util as u, sys; "
                                                  "sys.exit(0 if u.find_spec('torch') else 1)"]).returncode == 0}
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
