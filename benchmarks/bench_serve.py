"""Load test of `fuse-export serve` on loopback: a real Triton server, an async gRPC client, bounded runs.

For dynamic batching on and then off, it starts `fuse-export serve EXPORT` (a separate process, so the load
generator does not share its GIL) and, at each concurrency level, keeps that many batch-1 requests in flight
for a fixed time after a warm-up, recording per-request latency and errors, and Triton's own counters. The
in-process runner (the same backend and thread count as the server's, no server) is measured *around* every
served measurement, so that a change in machine load cannot fake a ratio:

* the ceiling (throughput at the best batch size, found once by a sweep) right before and right after each
  level; the level's ratio uses their mean, and their spread is printed as the drift;
* batch-1 latency in blocks alternating with served batch-1 requests (c=1), so both see the same load;
* the client's cost of building one request (serialization), which the c=1 target allows for.

Every phase also records the CPU that processes other than the benchmark and the server used (from
/proc/stat): a phase where others used more than --quiet-cores is marked as disturbed. The targets of the
issue are checked at the end, each with its verdict.

    python benchmarks/bench_serve.py EXPORT_DIR [--levels 1,4,16,64] [--seconds 6] [--json out.json]

Every loop is bounded in time and count, and every request has a timeout; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse_export.deploy.environment import free_ports, runner_threads

REQUEST_TIMEOUT_S = 120.0  # a hung server fails the request, it does not hang the benchmark
MAX_REQUESTS_PER_LEVEL = 50_000


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- what else runs on the machine -------------------------------------------------------------------------

def _stat_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by `root` and its living descendants (the server: tritonserver and its stubs)."""
    tick, kids, own = os.sysconf("SC_CLK_TCK"), {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            kids.setdefault(int(f[1]), []).append(int(d.name))
            own[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += own.get(p, 0.0)
        todo += kids.get(p, [])
    return total


class Others:
    """Cores used by every process but this benchmark (and its threads) and the server's process tree."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    def _ours(self) -> float:
        return time.process_time() + (_tree_cpu_s(self.server_pid) if self.server_pid else 0.0)

    def __enter__(self) -> Others:
        self._t, self._busy, self._ours0 = time.perf_counter(), _stat_busy_s(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        # A server process that exited inside the phase takes its CPU with it: floor at zero.
        self.cores = max(0.0, (_stat_busy_s() - self._busy) - (self._ours() - self._ours0)) / max(wall, 1e-9)


def machine() -> dict:
    from fuse_export.cpuinfo import cpu_features

    cpu = cpu_features()
    versions = {}
    for pkg in ("onnxruntime", "nvidia-pytriton", "tritonclient", "numpy"):
        try:
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
        except Exception:
            versions[pkg] = None
    return {"cpu": cpu.to_dict(), "summary": cpu.summary(), "python": platform.python_version(), "versions": versions}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- the in-process runner ------------------------------------------------------------------------------------

@dataclass
class InProcess:
    """The runner the server runs (same backend, same threads), called directly: no server, no serialization."""

    runner: object
    size: int

    def images(self, batch: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(batch, 3, self.size, self.size)).astype(np.float32)

    def throughput(self, batch: int, seconds: float) -> float:
        x = self.images(batch)
        self.runner.infer({"image": x})  # this shape's first call (memory planning) is not a steady-state one
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.runner.infer({"image": x})
            n += batch
        return n / (time.perf_counter() - t0)


def ceiling_sweep(ip: InProcess, batches: list[int], seconds: float) -> dict[int, float]:
    return {b: ip.throughput(b, seconds) for b in batches}


def paired_batch1(ip: InProcess, url: str, blocks: int, per_block: int) -> dict:
    """Batch-1 latency in process and served (c=1, sync gRPC client), in alternating blocks (ABBA order), so
    that both see the same machine load; blocks rather than single requests so that one path's thread pool
    winding down does not land in the other's timing more than once per block."""
    import tritonclient.grpc as g

    x = ip.images(1, seed=3)
    client = g.InferenceServerClient(url)

    def served() -> None:
        inp = g.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("fer", [inp], client_timeout=REQUEST_TIMEOUT_S)

    def local() -> None:
        ip.runner.infer({"image": x})

    for _ in range(5):
        local()
        served()
    lat: dict[str, list[float]] = {"local": [], "served": []}
    for b in range(blocks):
        order = (("local", local), ("served", served)) if b % 4 in (0, 3) else (("served", served), ("local", local))
        for key, fn in order:
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                lat[key].append(1e3 * (time.perf_counter() - t0))
    client.close()
    lo, se = lat["local"], lat["served"]
    return {"n": len(lo), "blocks": blocks, "in_process_p50_ms": pct(lo, 50), "in_process_p99_ms": pct(lo, 99),
            "served_p50_ms": pct(se, 50), "served_p99_ms": pct(se, 99)}


def serialization_ms(size: int, n: int = 200) -> float:
    """The client's cost of turning one [1,3,H,W] float32 array into a gRPC request (median)."""
    import tritonclient.grpc as g
    from tritonclient.grpc import _utils

    x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        inp = g.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        _utils._get_inference_request("fer", [inp], "", "", None, 0, False, False, 0, None, None).SerializeToString()
        times.append(time.perf_counter() - t0)
    return 1e3 * pct(times, 50)


# --- the served levels ----------------------------------------------------------------------------------------

async def load_level(url: str, model: str, x: np.ndarray, concurrency: int, warmup: float, seconds: float) -> dict:
    """`concurrency` clients, each with one batch-1 request in flight at a time (a closed loop).

    Warm-up lasts `warmup` seconds and until every client has had an answer (steady state); then the measured
    window lasts `seconds`, or twice the slowest warm-up latency if that is longer (so a window holds whole
    requests even when a loaded machine answers slowly). Throughput counts the requests that complete inside
    the window; latencies are theirs; errors count every failed request, warm-up included.
    """
    import tritonclient.grpc.aio as ga

    client = ga.InferenceServerClient(url)
    done: list[tuple[float, float, bool, str]] = []
    answered = [False] * concurrency
    window: list[float] = []  # [start, end] once warm
    t_begin = time.perf_counter()
    give_up = t_begin + warmup + 4 * seconds + 2 * REQUEST_TIMEOUT_S  # a bound even if the window keeps growing

    async def worker(k: int) -> None:
        while (not window or time.perf_counter() < window[1]) and time.perf_counter() < give_up \
                and len(done) < MAX_REQUESTS_PER_LEVEL:
            t0 = time.perf_counter()
            inp = ga.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                res = await client.infer(model, [inp], client_timeout=REQUEST_TIMEOUT_S)
                ok, why = res.as_numpy("probabilities") is not None, ""
            except Exception as exc:
                ok, why = False, str(exc).splitlines()[0][:160]
            done.append((t0, time.perf_counter(), ok, why))
            answered[k] = True

    async def clock() -> None:
        while (time.perf_counter() - t_begin < warmup or not all(answered)) and time.perf_counter() < give_up:
            await asyncio.sleep(0.05)
        slowest = max((t1 - t0 for t0, t1, _, _ in done), default=0.0)
        now = time.perf_counter()
        window.extend([now, now + max(seconds, 2 * slowest)])

    await asyncio.gather(clock(), *(worker(k) for k in range(concurrency)))
    await client.close()
    w0, w1 = window
    inside = [r for r in done if w0 <= r[1] <= w1]
    ms = [1e3 * (t1 - t0) for t0, t1, ok, _ in inside if ok]
    errors = [r[3] for r in done if not r[2]]
    return {"concurrency": concurrency, "window_s": w1 - w0, "requests": len(ms), "requests_total": len(done),
            "errors": len(errors), "error_examples": sorted(set(errors))[:3], "img_s": len(ms) / (w1 - w0),
            "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99)}


METRICS = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
           "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
           "nv_inference_compute_infer_duration_us")


def scrape(metrics_url: str, model: str = "fer") -> dict[str, float]:
    """Triton's own counters for one model (Prometheus text): requests, batches run, and time spent where."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in METRICS and f'model="{model}"' in rest:
            out[name] = float(rest.rsplit(" ", 1)[1])
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per request: the mean time inside Triton, in its queue, and in compute (the backend stub running the
    runner, inputs and outputs included); and the mean batch size Triton ran."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}
    n = max(d["nv_inference_request_success"], 1.0)
    return {"server_ms": d["nv_inference_request_duration_us"] / n / 1e3,
            "queue_ms": d["nv_inference_queue_duration_us"] / n / 1e3,
            "infer_ms": d["nv_inference_compute_infer_duration_us"] / n / 1e3,
            "mean_batch": d["nv_inference_count"] / max(d["nv_inference_exec_count"], 1.0)}


def start_server(export: Path, args: argparse.Namespace, dynamic: bool) -> tuple[subprocess.Popen, str, str]:
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "fuse_export", "serve", str(export), "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(args.max_queue_delay_us),
           "--dynamic-batching" if dynamic else "--no-dynamic-batching", "--drain-timeout", "5",
           "--instances", str(args.instances), "--threads", str(args.resolved_threads), "--backend", args.backend]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import tritonclient.grpc as g

    client, deadline = g.InferenceServerClient(f"127.0.0.1:{grpc}"), time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if client.is_model_ready("fer"):
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("serve did not become ready in 300 s")
        time.sleep(0.3)
    client.close()
    return proc, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics"


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_mode(ip: InProcess, best: int, export: Path, args: argparse.Namespace, dynamic: bool) -> dict:
    proc, url, metrics_url = start_server(export, args, dynamic)
    x = ip.images(1, seed=1)
    mode: dict = {"dynamic_batching": dynamic, "levels": []}
    try:
        if args.pairs:
            with Others(proc.pid) as o:
                mode["paired_batch1"] = paired_batch1(ip, url, args.pairs, args.per_block)
            mode["paired_batch1"]["others_cores"] = o.cores
        for c in args.level_list:
            with Others(proc.pid) as o_before:
                before_img_s = ip.throughput(best, args.ceiling_seconds)
            m0 = scrape(metrics_url)
            with Others(proc.pid) as o_level:
                row = asyncio.run(load_level(url, "fer", x, c, args.warmup, args.seconds))
            row.update(server_side(m0, scrape(metrics_url)))  # warm-up included
            with Others(proc.pid) as o_after:
                after_img_s = ip.throughput(best, args.ceiling_seconds)
            ceiling = (before_img_s + after_img_s) / 2
            row.update({"ceiling_before": before_img_s, "ceiling_after": after_img_s, "ceiling": ceiling,
                        "drift": abs(before_img_s - after_img_s) / ceiling, "x_ceiling": row["img_s"] / ceiling,
                        "others_cores": max(o_before.cores, o_level.cores, o_after.cores)})
            mode["levels"].append(row)
            print(f"dynamic batching {'on' if dynamic else 'off'}: c={c} {row['img_s']:.1f} img/s "
                  f"({row['x_ceiling']:.2f}x the ceiling {before_img_s:.1f}/{after_img_s:.1f} before/after) p50 "
                  f"{row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms errors {row['errors']} mean batch "
                  f"{row['mean_batch']:.1f}; others {row['others_cores']:.2f} cores", flush=True)
    finally:
        mode["serve_exit_code"] = stop_server(proc)
    return mode


# --- the verdicts and the report ------------------------------------------------------------------------------

def verdicts(doc: dict, quiet: float, max_drift: float) -> list[dict]:
    out = []

    def add(target: str, met: bool, measured: str, disturbed: float, drift: float = 0.0) -> None:
        out.append({"target": target, "met": met, "measured": measured, "others_cores": disturbed,
                    "disturbed": disturbed > quiet, "drift": drift, "drifted": drift > max_drift})

    rows = [(m["dynamic_batching"], r) for m in doc["serve"] for r in m["levels"]]
    errors = sum(r["errors"] for _, r in rows)
    total = sum(r["requests_total"] for _, r in rows)
    add(f"zero errors at c={','.join(map(str, doc['levels']))} (both modes)", errors == 0,
        f"{errors} errors in {total} requests", max((r["others_cores"] for _, r in rows), default=0.0))
    for dyn, r in rows:
        if dyn and r["concurrency"] == 16:
            add("dynamic batching: c=16 throughput >= 0.8x the in-process best-batch ceiling", r["x_ceiling"] >= 0.8,
                f"{r['img_s']:.1f} img/s = {r['x_ceiling']:.2f}x ({r['ceiling_before']:.1f}/{r['ceiling_after']:.1f} "
                f"img/s before/after, drift {100 * r['drift']:.0f}%)", r["others_cores"], r["drift"])
    ser = doc["serialization_ms"]
    for m in doc["serve"]:
        p = m.get("paired_batch1")
        if not p:
            continue
        for q in ("p50", "p99"):
            diff = p[f"served_{q}_ms"] - p[f"in_process_{q}_ms"]
            add(f"c=1 {q} within 2 ms of in-process batch 1 + serialization ({ser:.2f} ms), dynamic batching "
                f"{'on' if m['dynamic_batching'] else 'off'}", diff <= 2.0 + ser,
                f"served {p[f'served_{q}_ms']:.2f} vs in process {p[f'in_process_{q}_ms']:.2f} ms: "
                f"+{diff:.2f} ms", p["others_cores"])
    return out


def markdown(doc: dict) -> str:
    ip, lines = doc["in_process"], []
    lines.append(f"Machine: {doc['machine']['summary']}; load average {doc['load_before']} before, "
                 f"{doc['load_after']} after. Runner: {ip['backend']}, {doc['threads']} thread(s) per instance, "
                 f"{doc['instances']} instance(s).")
    lines.append(f"In-process sweep ({ip['image_size']} px): "
                 + ", ".join(f"batch {b} {v:.1f} img/s" for b, v in ip["sweep"].items())
                 + f"; best batch {ip['best_batch']}. Client serialization of one request: "
                 f"{doc['serialization_ms']:.2f} ms (median).")
    lines += ["", "| dynamic batching | concurrency | img/s | ceiling before/after img/s | x ceiling | p50 ms | p90 ms "
                  "| p99 ms | requests in window (all) | errors | in Triton ms | queue ms | compute ms | mean batch "
                  "| others' cores |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in doc["serve"]:
        for r in mode["levels"]:
            lines.append(f"| {'on' if mode['dynamic_batching'] else 'off'} | {r['concurrency']} | {r['img_s']:.1f} | "
                         f"{r['ceiling_before']:.1f} / {r['ceiling_after']:.1f} | {r['x_ceiling']:.2f} | "
                         f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests']} "
                         f"({r['requests_total']}) | {r['errors']} | {r['server_ms']:.1f} | {r['queue_ms']:.2f} | "
                         f"{r['infer_ms']:.1f} | {r['mean_batch']:.1f} | {r['others_cores']:.2f} |")
    for mode in doc["serve"]:
        p = mode.get("paired_batch1")
        if p:
            lines.append(f"\nBatch 1 at c=1, {p['n']} requests each way in {p['blocks']} alternating blocks (dynamic "
                         f"batching {'on' if mode['dynamic_batching'] else 'off'}): in process p50 "
                         f"{p['in_process_p50_ms']:.2f} / p99 {p['in_process_p99_ms']:.2f} ms; served p50 "
                         f"{p['served_p50_ms']:.2f} / p99 {p['served_p99_ms']:.2f} ms; others "
                         f"{p['others_cores']:.2f} cores.")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for v in doc["verdicts"]:
        note = f" (disturbed: others used {v['others_cores']:.2f} cores)" if v["disturbed"] else ""
        note += f" (the ceiling drifted {100 * v['drift']:.0f}% across the level)" if v["drifted"] else ""
        lines.append(f"| {v['target']} | {v['measured']} | {'met' if v['met'] else 'NOT met'}{note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path, help="export folder (manifest.json), e.g. a 224 px ONNX export")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--batches", default="1,4,8,16,32", help="in-process batch sizes swept for the best one")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured time per level")
    ap.add_argument("--warmup", type=float, default=1.5, help="unmeasured time before each level")
    ap.add_argument("--ceiling-seconds", type=float, default=3.0, help="in-process time before and after a level")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="runner threads (default: what `serve` picks)")
    ap.add_argument("--modes", default="on,off", help="dynamic batching modes to run")
    ap.add_argument("--pairs", type=int, default=8, help="alternating in-process/served batch-1 blocks (0: none)")
    ap.add_argument("--per-block", type=int, default=10, help="requests per block")
    ap.add_argument("--quiet-cores", type=float, default=0.15,
                    help="others' CPU above which a measurement is marked as disturbed")
    ap.add_argument("--max-drift", type=float, default=0.15,
                    help="ceiling change across a level above which its ratio is marked as drifted")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.level_list = [int(v) for v in args.levels.split(",")]
    # The same thread count in the server and in process (and explicit: see serve_env.runner_threads).
    args.resolved_threads = runner_threads(args.threads, args.instances)
    from fuse_export.inference.selection import select
    from fuse_export.runners.registry import BACKENDS

    doc: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                 "load_before": load_average(), "command": " ".join(sys.argv), "levels": args.level_list,
                 "seconds_per_level": args.seconds, "warmup_s": args.warmup, "max_batch_size": args.max_batch_size,
                 "max_queue_delay_us": args.max_queue_delay_us, "threads": args.resolved_threads,
                 "instances": args.instances, "serve": []}
    print(f"{doc['machine']['summary']}; load average {doc['load_before']}", flush=True)
    sel = select(args.export, args.backend)
    with BACKENDS[sel.backend].factory(sel.path, sel.checkpoint, sel.pre, args.resolved_threads, sel.embed) as r:
        ip = InProcess(r, sel.pre.image_size)
        with Others() as o:
            sweep = ceiling_sweep(ip, [int(v) for v in args.batches.split(",")], args.ceiling_seconds)
        best = max(sweep, key=sweep.get)
        doc["in_process"] = {"backend": sel.backend, "image_size": ip.size, "sweep": sweep, "best_batch": best,
                             "others_cores": o.cores}
        print("in process: " + ", ".join(f"batch {b} {v:.1f} img/s" for b, v in sweep.items())
              + f"; best batch {best}", flush=True)
        doc["serialization_ms"] = serialization_ms(ip.size)
        for mode in args.modes.split(","):
            doc["serve"].append(run_mode(ip, best, args.export, args, mode.strip() == "on"))
    doc["load_after"] = load_average()
    doc["verdicts"] = verdicts(doc, args.quiet_cores, args.max_drift)
    doc["markdown"] = markdown(doc)
    print(doc["markdown"])
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
