"""Issue 29's latency study: the model in the page (ONNX Runtime Web: wasm, SIMD, 2 threads) next to ONNX Runtime
in Python (2 intra-op threads), on the same machine, in the same run, on the same tensor.

    python benchmarks/bench_web.py EXPORT_64 EXPORT_224 [--int8 DIR_64 --int8 DIR_224] [--rounds 6] [--runs 40]
    python benchmarks/bench_web_report.py     # results/bench_web.md and RESULTS.md's bench-web block

EXPORT: an export folder with an fp32 ONNX model (float input). The int8 cell of an export runs the int8 ONNX
model (float input) listed in the same manifest, else in the folder of the matching --int8 (the n-th --int8 goes
with the n-th EXPORT; --int8 '' skips one), for instance one written by

    fuse-export export CHECKPOINT --format onnx --precision int8 --calibration-data CSV --out DIR

and without either the int8 cell is skipped with a note. For each cell (export, precision), `fuse-export web`'s
build_site writes the site (--artifact for int8), fuse_export.deploy.web_serve serves it from 127.0.0.1 with the
isolation headers (so wasm threads), and Debian's headless Chromium opens `index.html?threads=N` through Selenium
and /usr/bin/chromedriver (no --virtual-time-budget: performance.now() stands still under it). After --warmup
untimed calls per arm, --rounds rounds alternate the arms, page then Python, each timing --runs calls after 3
untimed ones: `performance.now()` around `session.run` in the page, `time.perf_counter()` around
`InferenceSession.run` in Python (intra_op_num_threads=N, inter_op 1, ONNX Runtime's other defaults), both on one
preprocessed float32 tensor (a generated face through the site's preprocessing), batch 1.

Each finished cell is appended at once to --out (results/bench_web.jsonl) as one JSON line; a rerun skips the
cells already there (key: the model's sha256 and precision, threads, rounds, runs, the onnxruntime-web
version).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from study_log import append_rows, read_rows  # noqa: E402

from fuse_export.contract import Preprocessing  # noqa: E402
from fuse_export.cpuinfo import cpu_features  # noqa: E402
from fuse_export.deploy.web import MODEL_JSON, build_site  # noqa: E402
from fuse_export.deploy.web_ort import OrtDist, find_dist, require_files  # noqa: E402
from fuse_export.deploy.web_serve import make_server, site_url  # noqa: E402
from fuse_export.exporters.manifest_read import read_manifest  # noqa: E402

OUT = HERE / "results" / "bench_web.jsonl"
ROUND_WARMUP = 3  # untimed calls at the start of every round: the other arm ran in between
PAGE_TIMES = """
const [b64, warmup, runs] = args;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const dims = [1, ...model.input.shape.slice(1)];
const feeds = { [model.input.name]: new model.ort.Tensor("float32", new Float32Array(bytes.buffer), dims) };
for (let i = 0; i < warmup; i++) await model.session.run(feeds);
const times = [];
let out = null;
for (let i = 0; i < runs; i++) {
  const t0 = performance.now();
  out = await model.session.run(feeds);
  times.push(performance.now() - t0);
}
return { times, probabilities: out ? Array.from(out.probabilities.data) : null };
"""
TIMER_RESOLUTION = """
let best = Infinity;
for (let k = 0; k < 20; k++) { const a = performance.now(); let b; do { b = performance.now(); } while (b === a);
  best = Math.min(best, b - a); }
return best;
"""


def onnx_entry(folder: Path, precision: str) -> dict[str, Any] | None:
    """The export's ONNX artifact of `precision` with float32 input (not an embedded-preprocessing graph)."""
    manifest = read_manifest(folder, verify=False)  # build_site checks the chosen file's sha256
    return next((a for a in manifest["artifacts"] if a["format"] == "onnx" and a.get("precision", "fp32") == precision
                 and a["io"]["inputs"][0]["dtype"] == "float32"), None)


def cells(exports: list[Path], int8: list[str]) -> list[tuple[Path, dict[str, Any]]]:
    """(export folder, artifact entry) of every cell: each export's fp32, then its int8 where there is one."""
    out = []
    for i, export in enumerate(exports):
        fp32 = onnx_entry(export, "fp32")
        if fp32 is None:
            sys.exit(f"{export}: lists no fp32 ONNX model with float input; export one with --format onnx")
        out.append((export, fp32))
        folder = Path(int8[i]) if i < len(int8) and int8[i] else export
        entry = onnx_entry(folder, "int8")
        if entry is None:
            print(f"note: no int8 ONNX model for {export} (in {folder}): its int8 cell is skipped", flush=True)
        else:
            out.append((folder, entry))
    return out


def face(size: int) -> Any:
    from PIL import Image

    from fuse_export.data.synthetic import SyntheticSpec, generate_faces

    return Image.fromarray(generate_faces(SyntheticSpec(samples_per_class=1, image_size=max(size, 48), seed=29))[0][3])


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    driver.set_script_timeout(900)
    return driver


def js(driver: Any, body: str, *args: Any) -> Any:
    out = driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);"
        "const model = window.fuseExport && window.fuseExport.model;"
        f"(async () => {{ {body} }})().then(done, (e) => done({{jsError: String(e)}}));", *args)
    if isinstance(out, dict) and "jsError" in out:
        raise RuntimeError(f"in the page: {out['jsError']}")
    return out


def python_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def python_times(session: Any, x: np.ndarray, warmup: int, runs: int) -> tuple[list[float], np.ndarray]:
    feeds = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(["probabilities"], feeds)
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = session.run(["probabilities"], feeds)[0]
        times.append((time.perf_counter() - t0) * 1e3)
    return times, out


def summary(rounds: list[list[float]]) -> dict[str, Any]:
    flat = np.concatenate([np.asarray(r) for r in rounds])
    return {"median_ms": float(np.median(flat)), "p90_ms": float(np.percentile(flat, 90)),
            "round_medians_ms": [round(float(np.median(r)), 4) for r in rounds],
            "samples_ms": [[round(t, 4) for t in r] for r in rounds]}


def measure(driver: Any, export: Path, entry: dict[str, Any], site: Path, dist: OrtDist, args: argparse.Namespace,
            ) -> dict[str, Any]:
    """One cell: build and serve the site, open it, interleave the arms; its record (without key and versions)."""
    build_site(export, site, ort_dist=dist.path, artifact=entry["file"], force=True)
    pre = Preprocessing.from_dict(json.loads((site / MODEL_JSON).read_text(encoding="utf-8"))["preprocessing"])
    from fuse_export.preprocess import preprocess

    x = preprocess([face(pre.image_size)], pre)
    b64 = base64.b64encode(x.tobytes()).decode("ascii")
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        load_before = [round(v, 2) for v in os.getloadavg()]
        driver.get(f"{site_url(server)}index.html?threads={args.threads}")
        page = js(driver, "await window.fuseExport.ready; const m = window.fuseExport.model; return {state: "
                  "document.body.dataset.state, error: window.fuseExport.error, runtime: m && m.runtime, "
                  "isolated: self.crossOriginIsolated};")
        if page["state"] != "ready":
            raise RuntimeError(f"{site}: the page did not load its model: {page['error']}")
        resolution = js(driver, TIMER_RESOLUTION)
        session = python_session(site / "model.onnx", args.threads)
        js(driver, PAGE_TIMES, b64, args.warmup, 0)
        python_times(session, x, args.warmup, 0)
        page_rounds, py_rounds, dprob = [], [], 0.0
        for r in range(args.rounds):
            got = js(driver, PAGE_TIMES, b64, ROUND_WARMUP, args.runs)
            page_rounds.append(got["times"])
            times, out = python_times(session, x, ROUND_WARMUP, args.runs)
            py_rounds.append(times)
            dprob = max(dprob, float(np.abs(np.asarray(got["probabilities"]) - out[0]).max()))
            print(f"  round {r + 1}/{args.rounds}: page {np.median(got['times']):.3f} ms, "
                  f"Python {np.median(times):.3f} ms", flush=True)
        load_after = [round(v, 2) for v in os.getloadavg()]
    finally:
        server.shutdown()
        server.server_close()
    p, q = summary(page_rounds), summary(py_rounds)
    return {"image_size": pre.image_size, "precision": entry.get("precision", "fp32"), "export": str(export),
            "artifact": entry["file"], "sha256": entry["sha256"], "page": p, "python": q,
            "ratio": p["median_ms"] / q["median_ms"], "page_runtime": page["runtime"], "isolated": page["isolated"],
            "timer_resolution_ms": resolution, "max_dprob": dprob, "load_before": load_before,
            "load_after": load_after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exports", nargs="+", type=Path, help="export folders, each with an fp32 ONNX model")
    ap.add_argument("--int8", action="append", default=[], help="the int8 export folder of the n-th EXPORT")
    ap.add_argument("--threads", type=int, default=2, help="wasm threads in the page, intra-op threads in Python")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=40, help="timed calls per arm per round (30 at least)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per arm at the start of a cell")
    ap.add_argument("--ort-dist", type=Path, help="onnxruntime-web's dist (default: .web-deps/ or a node_modules)")
    ap.add_argument("--out", type=Path, default=OUT, help="the JSON lines file (appended; finished cells skipped)")
    args = ap.parse_args(argv)
    dist = require_files(find_dist(args.ort_dist) if args.ort_dist else
                         find_dist(ROOT / ".web-deps") if (ROOT / ".web-deps").is_dir() else find_dist(start=ROOT))
    import onnxruntime as ort

    todo = []
    for export, entry in cells(args.exports, args.int8):
        key = (f"{entry['sha256']}|{entry.get('precision', 'fp32')}|t{args.threads}|r{args.rounds}x{args.runs}"
               f"|ort-web {dist.version}")
        if read_rows(args.out, key):
            print(f"done already: {export} {entry['file']} ({args.out})", flush=True)
        else:
            todo.append((export, entry, key))
    if not todo:
        return 0
    cpu = cpu_features()
    driver = chromium()
    caps = driver.capabilities
    versions = {"chromium": caps.get("browserVersion", ""),
                "chromedriver": str(caps.get("chrome", {}).get("chromedriverVersion", "")).split(" ")[0],
                "onnxruntime_web": dist.version, "onnxruntime": ort.__version__}
    work = Path(tempfile.mkdtemp(prefix="bench_web-"))
    try:
        for n, (export, entry, key) in enumerate(todo):
            print(f"cell {n + 1}/{len(todo)}: {export} {entry['file']}", flush=True)
            rec = measure(driver, export, entry, work / f"site{n}", dist, args)
            rec = {"key": key, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **rec,
                   "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
                   **versions, "cpu": cpu.to_dict(), "command": " ".join(["python", *sys.argv])}
            append_rows(args.out, [rec])
            print(f"  {rec['image_size']} px {rec['precision']}: page {rec['page']['median_ms']:.3f} ms "
                  f"(p90 {rec['page']['p90_ms']:.3f}), Python {rec['python']['median_ms']:.3f} ms "
                  f"(p90 {rec['python']['p90_ms']:.3f}), ratio {rec['ratio']:.2f}; page {rec['page_runtime']}, "
                  f"load {rec['load_before'][0]} -> {rec['load_after'][0]}", flush=True)
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
