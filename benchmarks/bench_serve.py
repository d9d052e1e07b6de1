"""Load test of `fuse-export serve` on loopback: a real Triton server, an async gRPC client, bounded runs.

For dynamic batching on and then off, it starts `fuse-export serve EXPORT` (a separate process, so the load
generator does not share its GIL), and at each concurrency level keeps that many batch-1 requests in flight
for a fixed time (after a warm-up), recording per-request latency and errors. In the same run, the in-process
runner (the same backend, no server) gives the ceiling: its throughput at each batch size and its batch-1
latency; and the client's own cost of building one request (serialization) is timed, since the server's
batch-1 latency can only be compared with the in-process one plus that. Before the levels, `--paired N`
alternates in-process and served batch-1 requests one by one, so that both see the same machine load.

    nice -n 10 python benchmarks/bench_serve.py EXPORT_DIR [--levels 1,4,16,64] [--seconds 6] [--json out.json]

Run it on an idle machine for numbers that mean anything; every number is printed with what produced it.
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
from pathlib import Path

import numpy as np

from fuse_export.serve_env import free_ports


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def machine() -> dict:
    try:
        from dataclasses import asdict

        from fuse_export.cpuinfo import cpu_features

        info = asdict(cpu_features())
        info["flags"] = sorted(info.get("flags", []))
        return info
    except Exception:  # the report still says what it can
        return {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}


def in_process(export: Path, backend: str | None, threads: int | None, batches: list[int], seconds: float) -> dict:
    """The ceiling: the same runner the server uses, called directly (no server, no serialization)."""
    from fuse_export.predict import select
    from fuse_export.runners.registry import BACKENDS

    sel = select(export, backend)
    size = sel.pre.image_size
    out: dict = {"backend": sel.backend, "image_size": size, "throughput": {}}
    with BACKENDS[sel.backend].factory(sel.path, sel.checkpoint, sel.pre, threads, sel.embed) as runner:
        for b in batches:
            x = np.random.default_rng(0).normal(size=(b, 3, size, size)).astype(np.float32)
            for _ in range(3):
                runner.infer({"image": x})
            times, t_end = [], time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                runner.infer({"image": x})
                times.append(time.perf_counter() - t0)
            out["throughput"][b] = b * len(times) / sum(times)
            if b == 1:
                out["batch1_ms"] = {"p50": 1e3 * pct(times, 50), "p99": 1e3 * pct(times, 99), "n": len(times)}
    best = max(out["throughput"], key=out["throughput"].get)
    out["best_batch"], out["best_img_s"] = best, out["throughput"][best]
    return out


def paired_batch1(export: Path, backend: str | None, threads: int | None, url: str, n: int) -> dict:
    """Batch-1 latency in process and through the server, alternated request by request (one, then the other),
    so both see the same machine load: on a shared machine this is the fair comparison of the two."""
    import tritonclient.grpc as g

    from fuse_export.predict import select
    from fuse_export.runners.registry import BACKENDS

    sel = select(export, backend)
    x = np.random.default_rng(3).normal(size=(1, 3, sel.pre.image_size, sel.pre.image_size)).astype(np.float32)
    client = g.InferenceServerClient(url)

    def served() -> None:
        inp = g.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("fer", [inp])

    local, remote = [], []
    with BACKENDS[sel.backend].factory(sel.path, sel.checkpoint, sel.pre, threads, sel.embed) as runner:
        for _ in range(3):
            runner.infer({"image": x})
            served()
        for _ in range(n):
            t0 = time.perf_counter()
            runner.infer({"image": x})
            t1 = time.perf_counter()
            served()
            t2 = time.perf_counter()
            local.append(1e3 * (t1 - t0))
            remote.append(1e3 * (t2 - t1))
    client.close()
    diff = [r - lo for r, lo in zip(remote, local)]
    return {"n": n, "in_process_p50_ms": pct(local, 50), "in_process_p99_ms": pct(local, 99),
            "served_p50_ms": pct(remote, 50), "served_p99_ms": pct(remote, 99), "overhead_p50_ms": pct(diff, 50)}


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


async def load_level(url: str, model: str, x: np.ndarray, concurrency: int, warmup: float, seconds: float) -> dict:
    """`concurrency` clients, each with one batch-1 request in flight at a time (a closed loop).

    Warm-up lasts `warmup` seconds and until every client has had an answer (steady state); then the measured
    window lasts `seconds`, or twice the slowest warm-up latency if that is longer (so a window holds whole
    requests even when a loaded machine answers slowly). Throughput counts the requests that complete inside
    the window; latencies are theirs; errors are any failed request after warm-up.
    """
    import tritonclient.grpc.aio as ga

    client = ga.InferenceServerClient(url)
    done: list[tuple[float, float, bool, str]] = []
    answered = [False] * concurrency
    window: list[float] = []  # [start, end] once warm

    async def worker(k: int) -> None:
        while not window or time.perf_counter() < window[1]:
            t0 = time.perf_counter()
            inp = ga.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                res = await client.infer(model, [inp])
                ok, why = res.as_numpy("probabilities") is not None, ""
            except Exception as exc:
                ok, why = False, str(exc).splitlines()[0][:160]
            done.append((t0, time.perf_counter(), ok, why))
            answered[k] = True

    async def clock() -> None:
        t_begin = time.perf_counter()
        while time.perf_counter() - t_begin < warmup or not all(answered):
            await asyncio.sleep(0.05)
        slowest = max(t1 - t0 for t0, t1, _, _ in done)
        now = time.perf_counter()
        window.extend([now, now + max(seconds, 2 * slowest)])

    await asyncio.gather(clock(), *(worker(k) for k in range(concurrency)))
    await client.close()
    w0, w1 = window
    inside = [r for r in done if w0 <= r[1] <= w1]
    ms = [1e3 * (t1 - t0) for t0, t1, ok, _ in inside if ok]
    errors = [r[3] for r in done if not r[2]]  # warm-up included: the target is zero errors, full stop
    return {"concurrency": concurrency, "window_s": w1 - w0, "requests": len(ms), "requests_total": len(done),
            "errors": len(errors),
            "error_examples": sorted(set(errors))[:3], "img_s": len(ms) / (w1 - w0),
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
    """Per request: the mean time inside Triton, in its queue, in compute (PyTriton's proxy round trip to this
    process plus the runner); and the mean batch size Triton ran."""
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
           "--dynamic-batching" if dynamic else "--no-dynamic-batching", "--drain-timeout", "5"]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import tritonclient.grpc as g

    client, deadline = g.InferenceServerClient(f"127.0.0.1:{grpc}"), time.monotonic() + 180
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
            raise SystemExit("serve did not become ready in 180 s")
        time.sleep(0.3)
    client.close()
    return proc, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics"


def markdown(doc: dict) -> str:
    ip, lines = doc["in_process"], []
    lines.append(f"In-process {ip['backend']} runner, {ip['image_size']} px: "
                 + ", ".join(f"batch {b} {v:.1f} img/s" for b, v in ip["throughput"].items())
                 + f"; best batch {ip['best_batch']} = **{ip['best_img_s']:.1f} img/s** (ceiling); batch-1 latency "
                 f"p50 {ip['batch1_ms']['p50']:.2f} ms, p99 {ip['batch1_ms']['p99']:.2f} ms. Client serialization of "
                 f"one request: {doc['serialization_ms']:.2f} ms (median).")
    lines += ["", "| dynamic batching | concurrency | img/s | x ceiling | p50 ms | p90 ms | p99 ms | window s "
                  "| requests in window (all) | errors | in Triton ms | queue ms | compute ms | mean batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in doc["serve"]:
        for r in mode["levels"]:
            lines.append(f"| {'on' if mode['dynamic_batching'] else 'off'} | {r['concurrency']} | {r['img_s']:.1f} | "
                         f"{r['img_s'] / ip['best_img_s']:.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['window_s']:.1f} | {r['requests']} ({r['requests_total']}) | "
                         f"{r['errors']} | "
                         f"{r['server_ms']:.1f} | {r['queue_ms']:.1f} | {r['infer_ms']:.1f} | {r['mean_batch']:.1f} |")
    for mode in doc["serve"]:
        p = mode.get("paired_batch1")
        if p:
            lines.append(f"\nBatch 1, alternated request by request ({p['n']} pairs, dynamic batching "
                         f"{'on' if mode['dynamic_batching'] else 'off'}): in process p50 {p['in_process_p50_ms']:.2f} "
                         f"ms / p99 {p['in_process_p99_ms']:.2f} ms; served p50 {p['served_p50_ms']:.2f} ms / p99 "
                         f"{p['served_p99_ms']:.2f} ms; median served - in-process difference "
                         f"{p['overhead_p50_ms']:.2f} ms.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path, help="export folder (manifest.json), e.g. a 224 px ONNX export")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--batches", default="1,4,8,16,32", help="in-process batch sizes for the ceiling")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured time per level")
    ap.add_argument("--warmup", type=float, default=1.5, help="unmeasured time before each level")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="runner intra-op threads (server and in-process)")
    ap.add_argument("--modes", default="on,off", help="dynamic batching modes to run")
    ap.add_argument("--paired", type=int, default=60, help="alternated in-process/served batch-1 pairs (0: none)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    doc: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                 "python": platform.python_version(), "command": " ".join(sys.argv), "levels": levels,
                 "seconds_per_level": args.seconds, "warmup_s": args.warmup, "max_batch_size": args.max_batch_size,
                 "max_queue_delay_us": args.max_queue_delay_us, "threads": args.threads, "serve": []}
    doc["in_process"] = ip = in_process(args.export, args.backend, args.threads,
                                        [int(v) for v in args.batches.split(",")], min(args.seconds, 4.0))
    doc["serialization_ms"] = serialization_ms(ip["image_size"])
    x = np.random.default_rng(1).normal(size=(1, 3, ip["image_size"], ip["image_size"])).astype(np.float32)
    for mode in args.modes.split(","):
        dynamic = mode.strip() == "on"
        proc, url, metrics_url = start_server(args.export, args, dynamic)
        try:
            paired = paired_batch1(args.export, args.backend, args.threads, url, args.paired) if args.paired else None
            rows = []
            for c in levels:
                before = scrape(metrics_url)
                rows.append(asyncio.run(load_level(url, "fer", x, c, args.warmup, args.seconds)))
                rows[-1].update(server_side(before, scrape(metrics_url)))  # warm-up included
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        doc["serve"].append({"dynamic_batching": dynamic, "levels": rows, "paired_batch1": paired,
                             "serve_exit_code": proc.returncode})
        for r in rows:
            print(f"dynamic batching {mode}: c={r['concurrency']} {r['img_s']:.1f} img/s p50 {r['p50_ms']:.1f} ms "
                  f"p99 {r['p99_ms']:.1f} ms errors {r['errors']}", flush=True)
    doc["markdown"] = markdown(doc)
    print(doc["markdown"])
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
