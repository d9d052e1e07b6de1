"""CPU runtimes side by side in one run: eager fp32, TorchScript, ONNX Runtime fp32/int8, OpenVINO fp32/bf16/int8
and PyTorch bf16, as ratios to eager fp32, with the CPU's speed-deciding instruction sets.

Targets of issue 13 (fused model, 224x224, 2 threads, batch 1): on a CPU with AMX the best backend <= 0.10x
eager fp32 with its parity bound held and accuracy within 1 point of fp32; without AMX, the ratios and the best
backend are reported. The fused graph through OpenVINO costs <= 1.05x a bare ResNet-18 through OpenVINO at
the same precision.

Method (as benchmarks/bench_int8_cpu.py; training at 224 on 2 CPU cores takes hours):
1. Parity and accuracy, at the training size (default 64): generated faces (FER-2013 CSV layout) and the
   synthetic-quick recipe, then `export_checkpoint` exactly as `fuse-export export --format
   torchscript,onnx,openvino --precision fp32,int8 --calibration-data CSV` does (each artifact verified against
   eager), and every backend through `run_bench` on the whole test split: parity against eager fp32 with the
   backend's own bound (compare.parity.TOLERANCES), and accuracy.
2. Latency and throughput at 224x224: the same weights exported at 224 (int8 calibrated on the same training
   images through the eval transform at 224), every backend built from the registry's own factory (so the
   precision, threads and settings are the ones `bench` and `predict` use), timed at batch 1 and batch 32 in
   interleaved rounds: a shared machine's drift hits all of them alike. The ratio to eager fp32 is the median
   over rounds of (backend round median / eager round median).
3. Fused vs bare: the fused IR and a bare torchvision ResNet-18 IR (same exporter, same OpenVINO settings) in
   `--bare-rounds` paired rounds, reported as the median per-round ratio with a bootstrap 95% interval, and
   OpenVINO's per-node profile of what the fused graph runs after global pooling. Both models are compiled
   afresh `--bare-compiles` times (the ratio moves between compiles by more than within one); the verdict is
   the median over compiles; within a compile, calls alternate fused, bare, fused ...
   `--only-fused-vs-bare` runs this part alone.

    python benchmarks/bench_cpu_runtimes.py [--checkpoint best.pt --data faces.csv] [--work DIR] [--json out.json]
        [--only-fused-vs-bare --bare-rounds 40 --bare-iterations 10]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.report import machine_info
from fuse_export.contract import IO_CONTRACT, Preprocessing
from fuse_export.cpuinfo import cpu_features
from fuse_export.errors import ParityError
from fuse_export.exporters.calibration import load_calibration, normalize
from fuse_export.exporters.formats import FORMATS, artifact_file
from fuse_export.exporters.manifest import tool_versions
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.exporters.onnx_precision import quantize_int8
from fuse_export.exporters.to_onnx import export_onnx
from fuse_export.exporters.to_openvino import shared_core
from fuse_export.exporters.to_torchscript import export_torchscript
from fuse_export.fileio import write_json
from fuse_export.model.fused import ExportView
from fuse_export.runners.registry import BACKENDS, REFERENCE, backend_for
from fuse_export.training.checkpoint import load_model

from bench_int8_cpu import model_and_data  # noqa: E402  (sibling script: benchmarks/ is on sys.path)

DEFAULT_BACKENDS = ("pytorch,torchscript,onnxruntime,onnxruntime-int8,openvino,openvino-bf16,openvino-int8,"
                    "pytorch-bf16")


def artifact_for(key: str) -> str | None:
    """The file a backend runs, named by the format table (None: the checkpoint itself)."""
    b = BACKENDS[key]
    return None if b.format is None else artifact_file(FORMATS[b.format], b.runs_precision)


def parity_and_accuracy(checkpoint: Path, csv: Path, work: Path, keys: list[str], calibration: int,
                        threads: int) -> dict[str, dict[str, Any]]:
    """Every backend on the whole test split at the training size, through the export workflow and run_bench."""
    from fuse_export.compare.bench import run_bench
    from fuse_export.app.export_verify import export_checkpoint

    out = work / "export-train-size"
    formats = list(dict.fromkeys(BACKENDS[k].format for k in keys if BACKENDS[k].format))
    fp32 = [FORMATS[f] for f in formats]
    int8 = [FORMATS[f] for f in formats if "int8" in FORMATS[f].precisions]
    export_checkpoint(checkpoint, fp32, out)
    refused: dict[str, str] = {}  # backend -> why export's own verification refused its int8 artifact
    if any(BACKENDS[k].runs_precision == "int8" for k in keys):
        for fmt in int8:  # one at a time: a refused IR (ParityError) must not take the ONNX row with it
            try:
                export_checkpoint(checkpoint, [fmt], out, precisions=["int8"], calibration_data=csv,
                                  calibration_samples=calibration)
            except ParityError as exc:
                refused[backend_for(fmt.key, "int8").key] = f"export verification refused it: {exc}"
    report = run_bench(out, [BACKENDS[k] for k in keys], [1], warmup=1, iterations=1, threads=threads,
                       data=str(csv), progress=False)
    rows: dict[str, dict[str, Any]] = {}
    for r in report.rows:
        rows[r.backend] = {"status": r.status, "reason": r.reason, "accuracy": r.accuracy,
                           "parity": r.parity.to_dict() if r.parity is not None else None,  # falsy when failed
                           "parity_line": r.parity.explain() if r.parity is not None else r.reason}
    for key, why in refused.items():  # timed at 224 all the same, shown as failing its bound (never "best")
        rows[key] = {"status": "failed", "reason": why, "accuracy": None, "parity": None, "parity_line": why}
    rows["_inputs"] = {"source": report.inputs}
    return rows


def export_224(checkpoint: Path, csv: Path, work: Path, size: int, calibration: int,
               full: bool = True) -> tuple[Path, Preprocessing]:
    """The same weights at `size`: TorchScript, ONNX fp32/int8, OpenVINO IR fp32/int8 (as the exporters write them);
    with `full` False only the fp32 ONNX and IR."""
    from fuse_export.exporters.to_openvino import export_openvino

    loaded = load_model(checkpoint)
    p = loaded.preprocessing
    pre = Preprocessing(size, p.class_names, p.mean, p.std, p.resize_ratio, p.color_mode, p.geometry)
    out = work / f"export-{size}"
    out.mkdir(parents=True, exist_ok=True)
    calib = load_calibration(csv, pre, calibration)
    x = normalize(calib.held_out[:2], pre)
    view = ExportView(loaded.model).eval()
    meta = artifact_metadata(pre)
    example = torch.from_numpy(np.ascontiguousarray(x))
    export_onnx(view, example, out / "model.onnx", IO_CONTRACT, meta)
    export_openvino(out / "model.onnx", out / "model.xml", meta)
    if full:
        export_torchscript(view, example, out / "model.torchscript", meta)
        quantize_int8(out / "model.onnx", out / "model.int8.onnx", {**meta, "precision": "int8"}, calib, pre)
        export_openvino(out / "model.int8.onnx", out / "model.int8.xml", {**meta, "precision": "int8"})
    return out, pre


def bare_resnet18_ir(work: Path, size: int, classes: int) -> Path:
    """A plain torchvision ResNet-18 through the same ONNX exporter settings and the same IR conversion."""
    import torchvision

    from fuse_export.exporters.to_openvino import export_openvino

    onnx_path, xml = work / "bare.onnx", work / "bare.xml"
    model = torchvision.models.resnet18(num_classes=classes).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(onnx_path), dynamo=True, opset_version=18,
                          input_names=["image"], output_names=["logits"], external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    export_openvino(onnx_path, xml, {})
    return xml


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, iterations: int, warmup: int,
                reference: str) -> dict[str, dict[str, Any]]:
    """Per call: median/p90 ms over all timed calls, and the median over rounds of its ratio to `reference`."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    ratios: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        medians = {}
        for key, fn in calls.items():
            for _ in range(warmup):
                fn()
            t = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                fn()
                t.append((time.perf_counter() - t0) * 1e3)
            times[key] += t
            medians[key] = float(np.median(t))
        for key in calls:
            ratios[key].append(medians[key] / medians[reference])
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "calls": len(v),
                "ratio": float(np.median(ratios[k])), "ratio_per_round": [round(r, 4) for r in ratios[k]]}
            for k, v in times.items()}


def latency(checkpoint: Path, folder: Path, pre: Preprocessing, keys: list[str], threads: int, rounds: int,
            iterations: dict[int, int], x_pool: np.ndarray) -> dict[str, Any]:
    """Batch 1 and 32 at the export size, every backend from the registry's factory, interleaved rounds."""
    runners, skipped = {}, {}
    for key in keys:
        ok, why = BACKENDS[key].available()
        if not ok:
            skipped[key] = why
            continue
        file = artifact_for(key)
        runners[key] = BACKENDS[key].factory(None if file is None else folder / file, checkpoint, pre, threads,
                                             False).activate()
    out: dict[str, Any] = {"skipped": skipped}
    with torch.inference_mode():
        for batch, iters in iterations.items():
            x = np.ascontiguousarray(np.resize(x_pool, (batch, *x_pool.shape[1:])))
            calls = {k: (lambda r=r, x=x: r.infer({"image": x})) for k, r in runners.items()}
            res = interleaved(calls, rounds, iters, 2 if batch == 1 else 1, REFERENCE)
            for v in res.values():
                v["images_per_s"] = batch / (v["median_ms"] / 1e3)
            out[f"batch_{batch}"] = res
    out["openvino_settings"] = {k: r.config() for k, r in runners.items() if hasattr(r, "config")}
    for r in runners.values():
        r.deactivate()
    return out


def paired_rounds(a: Callable[[], Any], b: Callable[[], Any], rounds: int, iterations: int,
                  warmup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a ms, b ms, per-round median(a) / median(b)): calls alternate a, b, a, b ... within each round, the
    order flipped every round, so both see the same machine state; a round is the unit of the interval."""
    ta, tb, ratio = [], [], []
    for r in range(rounds):
        for _ in range(warmup):
            a(), b()
        ra, rb = [], []
        for i in range(2 * iterations):
            fn, out = (a, ra) if (i + r) % 2 == 0 else (b, rb)
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        ta += ra
        tb += rb
        ratio.append(float(np.median(ra) / np.median(rb)))
    return np.array(ta), np.array(tb), np.array(ratio)


def ratio_summary(per_round: np.ndarray, target: float, seed: int = 0, resamples: int = 5000) -> dict[str, Any]:
    """Median of the per-round ratios, their 5-95th percentile range, and a bootstrap 95% interval of the
    median (rounds resampled with replacement), with where that interval lies against `target`."""
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(per_round, (resamples, per_round.size), replace=True), axis=1)
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    verdict = "met" if hi <= target else "missed" if lo > target else "undecided (the interval straddles it)"
    return {"median": float(np.median(per_round)), "rounds": int(per_round.size),
            "p5": float(np.percentile(per_round, 5)), "p95": float(np.percentile(per_round, 95)),
            "bootstrap95": [lo, hi], "target": target, "verdict": verdict,
            "per_round": [round(float(v), 4) for v in per_round]}


def post_pooling_profile(core, xml: Path, cfg: dict[str, str], x: np.ndarray, calls: int = 30) -> dict[str, Any]:
    """OpenVINO's per-node timings (PERF_COUNT, a separate compile so the timed models carry no profiling):
    median us per executed node summed over the graph and over the nodes after its last global pooling."""
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {**cfg, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    per_node: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    for i in range(calls + 3):
        request.infer({0: x})
        if i < 3:
            continue
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                per_node.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e6)
                kinds[p.node_name] = f"{p.node_type} ({p.exec_type})"
    order = list(per_node)  # execution order
    pools = [i for i, n in enumerate(order) if kinds[n].split()[0] in ("ReduceMean", "Reduce", "AvgPool", "Pooling")
             and "max" not in n.lower()]
    after = order[pools[-1] + 1:] if pools else []
    med = {n: float(np.median(v)) for n, v in per_node.items()}
    return {"total_us": sum(med.values()), "after_pooling_us": sum(med[n] for n in after),
            "after_pooling_nodes": {n: {"kind": kinds[n], "us": round(med[n], 1)} for n in after}}


def fused_vs_bare(fused_xml: Path, bare_xml: Path, threads: int, rounds: int, iterations: int, size: int,
                  precisions: list[str], target: float = 1.05, compiles: int = 1) -> dict[str, Any]:
    """Fused IR vs bare ResNet-18 IR through OpenVINO at each precision, same settings (the runner's config),
    batch 1: paired rounds, a bootstrap interval of the per-round ratio, and where the fused graph spends
    its extra time (per-node profile after global pooling). With `compiles` > 1 both models are compiled
    afresh that many times: the ratio moves by a few points from one compile to the next (more than within
    one), so the summary is the median over compiles and how many of them were above the target."""

    from fuse_export.runners.openvino_runner import INFERENCE_PRECISION

    core = shared_core()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    out: dict[str, Any] = {}
    for precision in precisions:
        cfg = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "INFERENCE_NUM_THREADS": str(threads),
               "PERFORMANCE_HINT": "LATENCY"}
        runs = []
        for _ in range(compiles):
            reqs = {name: core.compile_model(core.read_model(str(xml)), "CPU", cfg).create_infer_request()
                    for name, xml in (("fused", fused_xml), ("bare", bare_xml))}
            fused_ms, bare_ms, per_round = paired_rounds(lambda: reqs["fused"].infer({0: x}),
                                                         lambda: reqs["bare"].infer({0: x}), rounds, iterations,
                                                         3)
            runs.append({"fused_ms": float(np.median(fused_ms)), "bare_ms": float(np.median(bare_ms)),
                         "fused_over_bare": ratio_summary(per_round, target)})
            del reqs
        medians = [r["fused_over_bare"]["median"] for r in runs]
        above = sum(m > target for m in medians)
        out[precision] = {**runs[0], "compiles": runs,
                          "over_compiles": {"median": float(np.median(medians)), "min": min(medians),
                                            "max": max(medians), "above_target": above, "target": target,
                                            "verdict": "met" if np.median(medians) <= target else "missed"},
                          "profile": {name: post_pooling_profile(core, xml, cfg, x)
                                      for name, xml in (("fused", fused_xml), ("bare", bare_xml))}}
        out[f"fused_over_bare_{precision}"] = out[precision]["over_compiles"]["median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="A trained checkpoint (default: train one)")
    ap.add_argument("--data", type=Path, help="The FER-2013 CSV it was trained on (with --checkpoint)")
    ap.add_argument("--work", type=Path, help="Working folder (default: a temporary one)")
    ap.add_argument("--backends", default=DEFAULT_BACKENDS, help="Registry keys; the first must be pytorch")
    ap.add_argument("--samples-per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="Input size of the latency measurement")
    ap.add_argument("--calibration-samples", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=10, help="Timed calls per round at batch 1")
    ap.add_argument("--iterations-b32", type=int, default=2, help="Timed calls per round at batch 32")
    ap.add_argument("--bare-rounds", type=int, default=40, help="Paired rounds of the fused-vs-bare comparison")
    ap.add_argument("--bare-iterations", type=int, default=10, help="Calls of each model per paired round")
    ap.add_argument("--bare-compiles", type=int, default=6,
                    help="Fused vs bare: compile both models afresh this many times (the ratio moves between compiles)")
    ap.add_argument("--only-fused-vs-bare", action="store_true",
                    help="Skip parity, accuracy and the backend table: export the fp32 IR and compare it to a bare "
                         "ResNet-18 only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if (args.checkpoint is None) != (args.data is None):
        ap.error("--checkpoint and --data go together")
    keys = [k.strip() for k in args.backends.split(",") if k.strip()]
    if keys[0] != REFERENCE or any(k not in BACKENDS for k in keys):
        ap.error(f"--backends: registry keys, {REFERENCE} first (known: {', '.join(BACKENDS)})")
    torch.set_num_threads(args.threads)
    cpu = cpu_features()
    load = {"start": os.getloadavg()}  # a shared machine: what else ran is part of the record
    with tempfile.TemporaryDirectory(prefix="bench-cpu-runtimes-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint, csv = model_and_data(args, work)
        quality: dict[str, Any] = {}
        lat: dict[str, Any] = {}
        if not args.only_fused_vs_bare:
            print("parity and accuracy at the training size ...", flush=True)
            quality = parity_and_accuracy(checkpoint, csv, work, keys, args.calibration_samples, args.threads)
        print(f"exporting at {args.size}x{args.size} ...", flush=True)
        folder, pre = export_224(checkpoint, csv, work, args.size, args.calibration_samples,
                                 full=not args.only_fused_vs_bare)
        if not args.only_fused_vs_bare:
            pool = normalize(load_calibration(csv, pre, 8).held_out, pre)
            print("timing (interleaved rounds) ...", flush=True)
            lat = latency(checkpoint, folder, pre, keys, args.threads, args.rounds,
                          {1: args.iterations, 32: args.iterations_b32}, pool)
        precisions = ["fp32"] + (["bf16"] if cpu.native_bf16 else [])
        print(f"fused vs bare ResNet-18 through OpenVINO ({args.bare_rounds} paired rounds) ...", flush=True)
        bare = fused_vs_bare(folder / "model.xml", bare_resnet18_ir(work, args.size, pre.num_classes), args.threads,
                             args.bare_rounds, args.bare_iterations, args.size, precisions,
                             compiles=args.bare_compiles)
    load["end"] = os.getloadavg()
    if quality:
        report(args, cpu, keys, quality, lat)
    report_fused_vs_bare(cpu, bare)
    print(f"load average (1, 5, 15 min) at start {load['start']}, at end {load['end']} on {cpu.logical_cpus} CPUs")
    if args.json:
        write_json(args.json, {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "machine": machine_info(), "versions": tool_versions(), "quality": quality,
                               "latency": lat, "fused_vs_bare": bare, "load_average": load})


def report(args: argparse.Namespace, cpu, keys: list[str], quality: dict, lat: dict) -> None:
    """The side-by-side table, the best backend and the targets."""
    print(f"date {dt.date.today().isoformat()}; CPU {cpu.summary()}")
    print(f"latency at {args.size}x{args.size}, {args.threads} threads, {args.rounds} interleaved rounds x "
          f"{args.iterations} (batch 1) / {args.iterations_b32} (batch 32) calls; parity and accuracy at "
          f"{args.train_size}x{args.train_size} on {quality['_inputs']['source']}")
    head = (f"{'backend':<18} {'b1 ms':>8} {'b1 x eager':>10} {'b32 ms':>9} {'b32 img/s':>10} {'b32 x eager':>11} "
            f"{'max|dp|':>8} {'agree':>7} {'bound':>6} {'acc':>7}")
    print(head)
    fp32_acc = quality.get(REFERENCE, {}).get("accuracy")
    best = None
    for k in keys:
        q = quality.get(k, {})
        b1, b32 = lat.get("batch_1", {}).get(k), lat.get("batch_32", {}).get(k)
        if b1 is None:
            print(f"{k:<18} skipped: {lat['skipped'].get(k) or q.get('reason', '')}")
            continue
        par = q.get("parity") or {}
        acc = q.get("accuracy")
        held = bool(par.get("passed")) and acc is not None and fp32_acc is not None and fp32_acc - acc <= 0.01
        if k != REFERENCE and held and (best is None or b1["ratio"] < lat["batch_1"][best]["ratio"]):
            best = k
        print(f"{k:<18} {b1['median_ms']:>8.2f} {b1['ratio']:>10.3f} {b32['median_ms']:>9.1f} "
              f"{b32['images_per_s']:>10.1f} {b32['ratio']:>11.3f} {par.get('max_abs_prob', float('nan')):>8.1e} "
              f"{100 * par.get('top1_agreement', float('nan')):>6.1f}% {'held' if par.get('passed') else 'FAIL':>6} "
              f"{'-' if acc is None else f'{100 * acc:.1f}%':>7}")
    for k in keys:
        if quality.get(k, {}).get("status") == "failed":
            print(f"  {k}: {quality[k]['reason']}")
    if best:
        ratio = lat["batch_1"][best]["ratio"]
        print(f"best backend at batch 1 (parity bound held, accuracy within 1 point of fp32): {best}, "
              f"{ratio:.3f}x eager fp32")
        target = "target <= 0.10 (CPU with AMX)" if cpu.has_amx else "no AMX here: the 0.10 target does not apply"
        print(f"  {target}{': met' if cpu.has_amx and ratio <= 0.10 else ''}")


def report_fused_vs_bare(cpu, bare: dict) -> None:
    """The fused / bare ratio per precision with its interval, and the fused graph's time after pooling."""
    print(f"CPU {cpu.summary()}")
    for prec, res in bare.items():
        if prec.startswith("fused_over_bare_"):
            continue
        for i, run in enumerate(res.get("compiles", [res])):
            r = run["fused_over_bare"]
            lo, hi = r["bootstrap95"]
            print(f"fused / bare ResNet-18 through OpenVINO {prec}, batch 1, compile {i + 1} (target <= {r['target']}): "
                  f"median {r['median']:.3f} over {r['rounds']} paired rounds (fused "
                  f"{run['fused_ms']:.2f} ms, bare {run['bare_ms']:.2f} ms); bootstrap 95% interval {lo:.3f}-{hi:.3f}; "
                  f"per-round 5-95% {r['p5']:.3f}-{r['p95']:.3f}")
        if "over_compiles" in res:
            c = res["over_compiles"]
            print(f"  {prec} over {len(res['compiles'])} compiles: median {c['median']:.3f}, range {c['min']:.3f}-"
                  f"{c['max']:.3f}, {c['above_target']} above {c['target']}: {c['verdict']}")
        for name, prof in res["profile"].items():
            print(f"  {name}: per-node profile {prof['total_us'] / 1e3:.2f} ms, after global pooling "
                  f"{prof['after_pooling_us']:.0f} us ({len(prof['after_pooling_nodes'])} nodes)")


if __name__ == "__main__":
    main()
