"""Load test of `fuse-export serve` with Triton's own load generator, the in-process runner interleaved (issue 28).

For each export (say a 64 px and a 224 px one), each server setting (dynamic batching on/off, runner threads
spin-waiting or not) it starts `fuse-export serve` (its own process) and measures, in this order:

* `paired`: batch-1 requests at concurrency 1 in blocks alternating with the in-process runner (the same backend
  and thread count, no server), ABBA order, so both see the same load; over the served blocks, the per-hop
  breakdown of a request (fuse_export.deploy.hops: Triton's statistics and the stub's own counters);
* `level C`: `perf_analyzer` (the perf-analyzer package) at concurrency C, batch 1, gRPC: throughput,
  p50/p90/p99, its server-side columns, Triton's failures; the in-process ceiling (throughput at the best batch
  size) measured right before and right after it, in the same run, and the level's ratio taken to their mean;
* optionally `replicas`: two `serve` processes at once, half the threads each, every client request sent to
  them in turn, against one server, at the same concurrency (a scale-out on one machine).

Every finished cell is one JSON line in --out at once, and a rerun skips the cells already there (resumable;
start it detached with `setsid nohup ... &`). Each cell records the load average before and after it and the CPU
that other processes used. `benchmarks/bench_serve_report.py` turns the file into RESULTS.md's tables.

    python benchmarks/bench_serve.py EXPORT_64 EXPORT_224 --out benchmarks/results/bench_serve.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_serve_load import InProcess, Others, load_average, machine, pct, serialization_ms, tree_cpu_s  # noqa: E402

from fuse_export.deploy.environment import free_ports, runner_threads  # noqa: E402
from fuse_export.deploy.hops import breakdown, snapshot  # noqa: E402

REQUEST_TIMEOUT_S = 120.0
MODEL = "fer"


def perf_analyzer_binary() -> str:
    """perf_analyzer, found or fetched by get_perf_analyzer.sh (pip's perf-analyzer needs glibc >= 2.38)."""
    run = subprocess.run(["bash", str(HERE / "get_perf_analyzer.sh")], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"perf_analyzer: {run.stderr.strip().splitlines()[-1:]}")
    return run.stdout.strip().splitlines()[-1]


def parse_setting(setting: str, default_delay: int) -> tuple[bool, int, str]:
    """'on:500/run' -> (dynamic batching, max queue delay in us, spin mode: runners.base.SPIN_MODES)."""
    batching, spin = setting.split("/")
    mode, _, delay = batching.partition(":")
    return mode == "on", int(delay) if delay else default_delay, spin


# --- one server --------------------------------------------------------------------------------------------

class Served:
    """`fuse-export serve EXPORT` in a process of its own, on free loopback ports, until closed."""

    def __init__(self, export: Path, threads: int, setting: str, args: argparse.Namespace) -> None:
        dynamic, delay, spin = parse_setting(setting, args.max_queue_delay_us)
        http, grpc, metrics = free_ports(3)
        cmd = [sys.executable, "-m", "fuse_export", "serve", str(export), "--host", "127.0.0.1",
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(delay),
               "--dynamic-batching" if dynamic else "--no-dynamic-batching",
               "--spin", spin, "--drain-timeout", "5", "--instances", "1",
               "--threads", str(threads), "--backend", args.backend]
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.grpc, self.http = f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}"
        self.metrics = f"http://127.0.0.1:{metrics}/metrics"
        import urllib.request

        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited with {self.proc.returncode}: {Path(self.log.name).read_text()}")
            try:
                with urllib.request.urlopen(f"{self.http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("serve did not become ready in 300 s")
            time.sleep(0.3)

    def stats(self) -> dict[str, float]:
        return snapshot(self.http, self.metrics, MODEL)

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)
        return code


# --- the cells -----------------------------------------------------------------------------------------------

def paired(ip: InProcess, server: Served, blocks: int, per_block: int, gap_s: float) -> dict:
    """Batch-1 latency in process and served (c=1, sync gRPC), alternating blocks (ABBA); hops over the served."""
    import tritonclient.grpc as g

    x = ip.images(1, seed=3)
    client = g.InferenceServerClient(server.grpc)

    def served() -> None:
        inp = g.InferInput("image", list(x.shape), ip.triton_dtype)
        inp.set_data_from_numpy(x)
        client.infer(MODEL, [inp], client_timeout=REQUEST_TIMEOUT_S)

    def local() -> None:
        ip.runner.infer({"image": x})

    for _ in range(10):
        local()
        served()
    # Three arms: in process back to back; served; in process with an idle gap before each call as long as the
    # served request's time outside the runner, so a runner that is slower after idling is told from the server.
    lat: dict[str, list[float]] = {"local": [], "served": [], "local_gap": []}
    # Triton counts only `fer`'s inferences, so one snapshot around everything holds the served arm's hops alone.
    # The server's CPU is read around served blocks only when they hold several requests (reading /proc is
    # itself activity between calls, which per-request alternation must not add).
    hop_before, served_s, server_cpu_s = server.stats(), 0.0, 0.0
    for b in range(blocks):
        arms = [("local", local), ("served", served), ("local_gap", local)]  # local_gap: timed after a sleep
        order = arms if b % 2 == 0 else arms[::-1]
        for key, fn in order:
            if key == "served" and per_block > 1:
                cpu0 = tree_cpu_s(server.proc.pid)
            for _ in range(per_block):
                if key == "local_gap":
                    time.sleep(gap_s)
                t0 = time.perf_counter()
                fn()
                lat[key].append(1e3 * (time.perf_counter() - t0))
                if key == "served":
                    served_s += lat[key][-1] / 1e3
            if key == "served" and per_block > 1:
                server_cpu_s += tree_cpu_s(server.proc.pid) - cpu0
    hop_after = server.stats()
    client.close()
    lo, se, lg = lat["local"], lat["served"], lat["local_gap"]
    diffs = np.asarray(se) - np.asarray(lo)  # request i served vs request i in process, same block pair
    return {"n": len(lo), "blocks": blocks, "in_process_p50_ms": pct(lo, 50), "in_process_p99_ms": pct(lo, 99),
            "in_process_after_gap_p50_ms": pct(lg, 50), "gap_ms": 1e3 * gap_s,
            "in_process_mean_ms": float(np.mean(lo)), "served_mean_ms": float(np.mean(se)),
            # CPU the whole server (tritonserver, both stubs) burned per served request, all threads together
            "server_cpu_ms_per_request": 1e3 * server_cpu_s / len(se) if per_block > 1 else None,
            "per_block": per_block,
            "served_p50_ms": pct(se, 50), "served_p99_ms": pct(se, 99), "diff_p50_ms": pct(se, 50) - pct(lo, 50),
            "paired_diff_median_ms": float(np.median(diffs)),
            "hops": breakdown(hop_before, hop_after, 1e3 * served_s / len(se))}


def input_data(ip: InProcess, folder: Path) -> Path:
    """perf_analyzer's input: the in-process runner's own batch-1 image (its random default sends arbitrary float
    bit patterns, NaN included, which the server rightly refuses as a broken output)."""
    x = ip.images(1, seed=3)[0]
    path = folder / f"input-{ip.size}.json"
    path.write_text(json.dumps({"data": [{"image": {"content": x.reshape(-1).tolist(), "shape": list(x.shape)}}]}))
    return path


def perf_analyzer_level(server: Served, concurrency: int, data: Path, args: argparse.Namespace) -> dict:
    """One concurrency level, measured by perf_analyzer (which stops at the first failed request); Triton's
    statistics over the level give its server-side hops."""
    out = Path(tempfile.mkdtemp(prefix="pa-")) / "level.csv"
    cmd = [args.perf_analyzer, "-m", MODEL, "-u", server.grpc, "-i", "grpc", "-b", "1", "--input-data", str(data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(args.window_ms),
           "--max-trials", str(args.max_trials), "--stability-percentage", str(args.stability), "-f", str(out),
           "--verbose-csv"]
    if concurrency > 1:
        cmd.append("--async")
    before = server.stats()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=args.window_ms / 1000 * (args.max_trials + 4) + 120)
        report = out.read_text() if out.is_file() else ""
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    after = server.stats()
    # Triton counts a Python-backend error response as a success: errors are the client's (perf_analyzer's rc).
    row: dict = {"concurrency": concurrency, "perf_analyzer_rc": run.returncode,
                 "triton_requests": after["requests"] - before["requests"], "hops": breakdown(before, after)}
    said = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    row["errors"] = sum("had error" in ln for ln in said)  # perf_analyzer's line for a failed request
    row["unstable"] = any("stable" in ln.lower() and ("fail" in ln.lower() or "unable" in ln.lower()) for ln in said)
    if run.returncode != 0 or not report:
        row["said"] = said[-4:]
        return row
    rec = next(csv.DictReader(io.StringIO(report)))
    us = lambda k: float(rec[k]) / 1e3  # noqa: E731 - perf_analyzer's columns are microseconds
    row.update({"img_s": float(rec["Inferences/Second"]), "p50_ms": us("p50 latency"), "p90_ms": us("p90 latency"),
                "p99_ms": us("p99 latency"), "avg_ms": us("Avg latency"), "client_send_ms": us("Client Send"),
                "client_recv_ms": us("Client Recv"), "wire_and_server_ms": us("Network+Server Send/Recv"),
                "server_queue_ms": us("Server Queue"), "server_compute_infer_ms": us("Server Compute Infer")})
    return row


async def _round_robin(urls: list[str], x: np.ndarray, dtype: str, concurrency: int, seconds: float) -> dict:
    """`concurrency` closed-loop clients; request k of each goes to the next server in turn."""
    import tritonclient.grpc.aio as ga

    clients = [ga.InferenceServerClient(u) for u in urls]
    lat, errors, turn = [], 0, [0]
    t_end = time.perf_counter() + 1.0 + seconds  # 1 s warm-up, then the window
    t_window = t_end - seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < t_end:
            c = clients[turn[0] % len(clients)]
            turn[0] += 1
            inp = ga.InferInput("image", list(x.shape), dtype)
            inp.set_data_from_numpy(x)
            t0 = time.perf_counter()
            try:
                await c.infer(MODEL, [inp], client_timeout=REQUEST_TIMEOUT_S)
                if t0 >= t_window:
                    lat.append(1e3 * (time.perf_counter() - t0))
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for c in clients:
        await c.close()
    return {"img_s": len(lat) / seconds, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "errors": errors}


def replicas(export: Path, ip: InProcess, args: argparse.Namespace, threads: int) -> dict:
    """One server with `threads` threads against two with half each, the same client and concurrency."""
    x = ip.images(1, seed=5)
    out = {"concurrency": args.replica_concurrency}
    for key, n, t in (("one", 1, threads), ("two", 2, max(1, threads // 2))):
        servers = [Served(export, t, args.replica_setting, args) for _ in range(n)]
        try:
            with Others(*[s.proc.pid for s in servers]) as o:
                out[key] = asyncio.run(_round_robin([s.grpc for s in servers], x, ip.triton_dtype, args.replica_concurrency,
                                                    args.replica_seconds))
            out[key].update({"servers": n, "threads_each": t, "others_cores": o.cores})
        finally:
            for s in servers:
                s.close()
    out["two_over_one"] = out["two"]["img_s"] / out["one"]["img_s"]
    return out


# --- the run ---------------------------------------------------------------------------------------------------

def done_cells(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(ln)["cell"] for ln in path.read_text().splitlines() if ln.strip()}


def write_cell(path: Path, cell: str, record: dict) -> None:
    record = {"cell": cell, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: record[k] for k in record if k not in ("hops", "machine")})[:400], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exports", type=Path, nargs="+", help="export folders (manifest.json) to serve")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_serve.jsonl")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--batches", default="1,4,8,16,32", help="in-process batch sizes swept for the best one")
    ap.add_argument("--settings", default="off/run,on:500/run,on:0/run,on:0/on,on:0/off",
                    help="dynamic batching on[:max queue delay us]|off / runner spin mode on|off|run, comma-separated")
    ap.add_argument("--levels-for", default="off/run,on:500/run,on:0/run,on:0/on,on:0/off",
                    help="settings that get the perf_analyzer sweep")
    ap.add_argument("--replica-setting", default="on:0/run")
    ap.add_argument("--in-process-spin", default="same", choices=("same", "on", "off", "run"),
                    help="the in-process runner's spin mode (same: the served setting's)")
    ap.add_argument("--interleave-each", default="on:0/run", help="settings that also get a c=1 cell alternating "
                    "every single request (not blocks): is the runner slower between other processes' work?")
    ap.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer's measurement interval")
    ap.add_argument("--max-trials", type=int, default=6)
    ap.add_argument("--stability", type=int, default=25, help="perf_analyzer's stability percentage")
    ap.add_argument("--ceiling-seconds", type=float, default=3.0)
    ap.add_argument("--blocks", type=int, default=20, help="alternating in-process/served blocks at c=1")
    ap.add_argument("--per-block", type=int, default=10)
    ap.add_argument("--gap-ms", type=float, default=3.0, help="idle time before each call of the in-process arm "
                    "that mimics a served request's time outside the runner")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="runner threads (default: what `serve` picks)")
    ap.add_argument("--replicas", action="store_true", help="also the two-replica scale-out cell")
    ap.add_argument("--replica-concurrency", type=int, default=16)
    ap.add_argument("--replica-seconds", type=float, default=8.0)
    args = ap.parse_args()
    args.perf_analyzer = perf_analyzer_binary()
    threads = runner_threads(args.threads, 1)
    done = done_cells(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mach = machine()
    print(f"{mach['summary']}; load average {load_average()}", flush=True)
    from fuse_export.inference.selection import select
    from fuse_export.runners.registry import BACKENDS

    for export in args.exports:
        sel = select(export, args.backend)
        size = sel.pre.image_size
        with BACKENDS[sel.backend].factory(sel.path, sel.checkpoint, sel.pre, threads, sel.embed) as runner:
            ip = InProcess(runner, size)
            data = input_data(ip, Path(tempfile.mkdtemp(prefix="bench-serve-")))
            # An export with embedded preprocessing takes uint8 pixels: its own cells (a quarter of the bytes).
            tag = f"{size}-uint8" if ip.triton_dtype == "UINT8" else str(size)
            sweep = {b: ip.throughput(b, args.ceiling_seconds) for b in map(int, args.batches.split(","))}
            best = max(sweep, key=sweep.get)
            base = {"size": size, "backend": sel.backend, "threads": threads, "machine": mach,
                    "serialization_ms": serialization_ms(ip), "input": ip.triton_dtype, "tag": tag, "sweep": sweep, "best_batch": best}
            for setting in args.settings.split(","):
                cells = [f"{tag}/{setting}/paired"]
                if setting in args.interleave_each.split(","):
                    cells.append(f"{tag}/{setting}/paired1")
                if setting in args.levels_for.split(","):
                    cells += [f"{tag}/{setting}/c{c}" for c in args.levels.split(",")]
                todo = [c for c in cells if c not in done]
                if not todo:
                    continue
                # The in-process runner waits the way the server's does: with ONNX Runtime's default ("on") its
                # threads spin on after each call, into the next served request's time, and take the cores
                # from the server's runner (measured: +75% for a 224 px served request right after it).
                spin = parse_setting(setting, 0)[2] if args.in_process_spin == "same" else args.in_process_spin
                if runner.spin != spin:
                    runner.deactivate()
                    runner.spin = spin
                    runner.activate()
                server = Served(export, threads, setting, args)
                try:
                    for cell in todo:
                        load0 = load_average()
                        with Others(server.proc.pid) as o:
                            if cell.endswith("/paired"):
                                rec = {"paired": paired(ip, server, args.blocks, args.per_block, args.gap_ms / 1e3)}
                            elif cell.endswith("/paired1"):  # every request alternated, not blocks
                                rec = {"paired": paired(ip, server, args.blocks * args.per_block, 1,
                                                        args.gap_ms / 1e3)}
                            else:
                                c = int(cell.rsplit("/c", 1)[1])
                                before = ip.throughput(best, args.ceiling_seconds)
                                level = perf_analyzer_level(server, c, data, args)
                                after = ip.throughput(best, args.ceiling_seconds)
                                ceiling = (before + after) / 2
                                level.update({"ceiling_before": before, "ceiling_after": after, "ceiling": ceiling,
                                              "drift": abs(before - after) / ceiling,
                                              "x_ceiling": level.get("img_s", 0.0) / ceiling})
                                rec = {"level": level}
                        write_cell(args.out, cell, {**base, "setting": setting, "in_process_spin": runner.spin, **rec, "others_cores": o.cores,
                                                    "load_before": load0, "load_after": load_average()})
                finally:
                    server.close()
            cell = f"{tag}/replicas"
            if args.replicas and cell not in done:
                load0 = load_average()
                write_cell(args.out, cell, {**base, "replicas": replicas(export, ip, args, threads),
                                            "load_before": load0, "load_after": load_average()})


if __name__ == "__main__":
    main()
