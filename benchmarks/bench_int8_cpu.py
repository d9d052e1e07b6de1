"""int8 (static PTQ, Q/DQ) vs fp32 ONNX Runtime on CPU: batch-1 latency at 224x224 and accuracy, side by side.

Target of issue 5, on 2 cores: int8 batch-1 latency <= 0.5x fp32's, accuracy drop <= 1 point on the synthetic
evaluation split.

Method. Training the fused ResNet-18 at 224x224 on 2 CPU cores takes hours, so the two figures come from the
same trained weights at two input sizes (the trunk is convolutional up to global pooling, so the weights do
not depend on the input size and the per-image work scales with the pixel count):
1. Accuracy, at the training size (default 64): generate faces (FER-2013 CSV layout), train with the
   synthetic-quick recipe, then `export_checkpoint` to fp32 and int8 ONNX exactly as `fuse-export export
   --precision fp32,int8 --calibration-data CSV` does (int8 calibrated on training rows; each file verified
   against eager), and evaluate both ONNX Runtime sessions on the whole test split.
2. Latency, at 224x224: the same weights exported at 224, int8 calibrated on the same training images
   resized to 224 through the eval transform, and fp32 and int8 sessions (2 intra-op threads) timed at
   batch 1 on a real test image in interleaved rounds, so drift of a shared machine hits both alike.
The ratio reported is the median over rounds of (int8 median / fp32 median) in that round.

    python benchmarks/bench_int8_cpu.py [--checkpoint best.pt --data faces.csv] [--work DIR] [--json out.json]
        [--int8-weights auto|8|7]   (auto: 7-bit weights on an x86 CPU without VNNI, as `export` does)
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.report import machine_info
from fuse_export.contract import IO_CONTRACT, Preprocessing
from fuse_export.exporters.formats import FORMATS
from fuse_export.exporters.manifest import tool_versions
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.errors import ParityError
from fuse_export.exporters.calibration import load_calibration, normalize
from fuse_export.exporters.int8_weights import INT8_WEIGHTS, int8_weight_range
from fuse_export.exporters.onnx_precision import quantize_int8
from fuse_export.exporters.options import VerifyOptions, failed_name
from fuse_export.exporters.to_onnx import export_onnx
from fuse_export.fileio import write_json
from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model
from fuse_export.app.export_verify import export_checkpoint

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of the instructions that make int8 fast this CPU has (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in INT8_FLAGS if f in flags]


def train_model(work: Path, samples_per_class: int, epochs: int, size: int, seed: int) -> tuple[Path, Path]:
    """Generated faces + the synthetic-quick recipe at `size`: (checkpoint, CSV)."""
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training
    from fuse_export.training.recipe_path import resolve_recipe

    csv = work / "faces.csv"
    write_fer2013_csv(csv, SyntheticSpec(samples_per_class=samples_per_class, seed=seed))
    recipe = load_recipe(resolve_recipe("synthetic-quick")).replace(data={"image_size": size},
                                                                   train={"epochs": epochs, "seed": seed})
    return run_training(recipe, str(csv), work / "train", device="cpu", progress=False).best, csv


def model_and_data(args, work: Path) -> tuple[Path, Path]:
    """`--checkpoint/--data` when given, else a model trained here on generated faces (`--train-size` etc.)."""
    if args.checkpoint is not None:
        return args.checkpoint, args.data
    print(f"training at {args.train_size}x{args.train_size}: {args.samples_per_class} faces per class, "
          f"{args.epochs} epochs ...", flush=True)
    return train_model(work, args.samples_per_class, args.epochs, args.train_size, args.seed)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def accuracy(checkpoint: Path, csv: Path, work: Path, calibration: int, method: str, scheme: str,
             threads: int, weights: str = "auto") -> dict[str, Any]:
    """fp32 and int8 ONNX at the training size on the whole test split (through the export workflow)."""
    from fuse_export.data.fer2013 import load_fer2013_csv
    from fuse_export.data.transforms import eval_pixels_transform

    out = work / "export-train-size"
    int8_file = "model.int8.onnx"
    try:  # a file export refuses (e.g. --int8-weights 8 on a CPU without VNNI) is kept and measured all the same
        result = export_checkpoint(checkpoint, [FORMATS["onnx"]], out, verify=VerifyOptions(keep_failed=True),
                                   precisions=["fp32", "int8"], calibration_data=csv, calibration_samples=calibration,
                                   calibration_method=method, int8_scheme=scheme, int8_weights=weights)
        verification = {k: v.explain() for k, v in result.parity.items()}
    except ParityError as exc:
        int8_file = failed_name(int8_file)
        verification = {"refused": str(exc)}
    pre = load_model(checkpoint).preprocessing
    split = load_fer2013_csv(csv).splits["test"]
    tf = eval_pixels_transform(pre)
    x = normalize(np.stack([tf(split.load(i)).numpy().transpose(1, 2, 0) for i in range(len(split))]), pre)
    probs = {}
    for name, file in (("model.onnx", "model.onnx"), ("model.int8.onnx", int8_file)):
        sess = ort_session(out / file, threads)
        probs[name] = np.concatenate([sess.run(["probabilities"], {"image": x[i:i + 32]})[0]
                                      for i in range(0, len(x), 32)])
    acc = {k: float((p.argmax(1) == split.labels).mean()) for k, p in probs.items()}
    return {
        "image_size": pre.image_size, "test_images": int(len(x)),
        "fp32_accuracy": acc["model.onnx"], "int8_accuracy": acc["model.int8.onnx"],
        "drop_points": 100 * (acc["model.onnx"] - acc["model.int8.onnx"]),
        "top1_agreement": float((probs["model.onnx"].argmax(1) == probs["model.int8.onnx"].argmax(1)).mean()),
        "max_abs_prob": float(np.abs(probs["model.onnx"] - probs["model.int8.onnx"]).max()),
        "export_verification": verification,
    }


def latency(checkpoint: Path, csv: Path, work: Path, size: int, calibration: int, method: str, scheme: str,
            threads: int, rounds: int, iterations: int, warmup: int, weights: str = "auto") -> dict[str, Any]:
    """fp32 vs int8 ONNX Runtime at `size`, batch 1, in interleaved rounds."""
    loaded = load_model(checkpoint)
    pre = Preprocessing(size, loaded.preprocessing.class_names, loaded.preprocessing.mean, loaded.preprocessing.std,
                        loaded.preprocessing.resize_ratio)
    calib = load_calibration(csv, pre, calibration)
    fp32, int8 = work / f"fp32-{size}.onnx", work / f"int8-{size}.onnx"
    view = ExportView(loaded.model).eval()
    meta = artifact_metadata(pre)
    x = normalize(calib.held_out, pre)
    export_onnx(view, torch.from_numpy(x[:2].copy()), fp32, IO_CONTRACT, meta)
    quantize_int8(fp32, int8, {**meta, "precision": "int8"}, calib, pre, method, scheme=scheme, weights=weights)
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8, threads)}
    one = np.ascontiguousarray(x[:1])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    per_round: list[float] = []
    for _ in range(rounds):
        medians = {}
        for key, sess in sessions.items():
            for _ in range(warmup):
                sess.run(None, {"image": one})
            t = []
            for _ in range(iterations):
                start = time.perf_counter()
                sess.run(None, {"image": one})
                t.append((time.perf_counter() - start) * 1e3)
            times[key] += t
            medians[key] = float(np.median(t))
        per_round.append(medians["int8"] / medians["fp32"])
    stats = {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)),
                 "min_ms": float(np.min(v))} for k, v in times.items()}
    return {"image_size": size, "threads": threads, "rounds": rounds, "iterations": iterations, **stats,
            "ratio_int8_over_fp32": float(np.median(per_round)), "ratio_per_round": per_round,
            "sizes_mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="A trained checkpoint (default: train one)")
    ap.add_argument("--data", type=Path, help="The FER-2013 CSV it was trained on (with --checkpoint)")
    ap.add_argument("--work", type=Path, help="Working folder (default: a temporary one)")
    ap.add_argument("--samples-per-class", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="Input size of the latency measurement")
    ap.add_argument("--calibration-samples", type=int, default=500)
    ap.add_argument("--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    ap.add_argument("--int8-scheme", default="u8s8", choices=("u8s8", "s8s8"))
    ap.add_argument("--int8-weights", default="auto", choices=INT8_WEIGHTS,
                    help="int8 weight range (auto: 7-bit on an x86 CPU without VNNI, as export does)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if (args.checkpoint is None) != (args.data is None):
        ap.error("--checkpoint and --data go together")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint, csv = model_and_data(args, work)
        acc = accuracy(checkpoint, csv, work, args.calibration_samples, args.calibration_method, args.int8_scheme,
                       args.threads, args.int8_weights)
        lat = latency(checkpoint, csv, work, args.size, args.calibration_samples, args.calibration_method,
                      args.int8_scheme, args.threads, args.rounds, args.iterations, args.warmup, args.int8_weights)
    flags = cpu_flags()
    print(f"date {dt.date.today().isoformat()}; CPU {machine_info()['cpu']}; int8-relevant flags: "
          f"{', '.join(flags) or 'none'}")
    weights = int8_weight_range(args.int8_weights)
    print(f"calibration: {args.calibration_samples} training images, {args.calibration_method}; Q/DQ scheme "
          f"{args.int8_scheme}, per-channel {weights.bits}-bit weights ({weights.reason})")
    print(f"accuracy at {acc['image_size']}x{acc['image_size']} on {acc['test_images']} test images: "
          f"fp32 ORT {acc['fp32_accuracy']:.2%}, int8 ORT {acc['int8_accuracy']:.2%}, drop "
          f"{acc['drop_points']:+.2f} points (target <= 1); top-1 agreement {acc['top1_agreement']:.2%}, "
          f"max |dprob| {acc['max_abs_prob']:.3f}")
    if "refused" in acc["export_verification"]:
        print(f"  export's own verification refused the int8 file (measured all the same): "
              f"{acc['export_verification']['refused']}")
    print(f"latency at {lat['image_size']}x{lat['image_size']}, batch 1, {lat['threads']} threads, {lat['rounds']} "
          f"rounds x {lat['iterations']} calls:")
    for key in ("fp32", "int8"):
        print(f"  {key} ORT  median {lat[key]['median_ms']:.2f} ms  p90 {lat[key]['p90_ms']:.2f} ms  "
              f"min {lat[key]['min_ms']:.2f} ms  ({lat['sizes_mb'][key]:.1f} MB)")
    print(f"int8 / fp32 latency (median of per-round ratios; target <= 0.50): {lat['ratio_int8_over_fp32']:.3f}  "
          f"(rounds: {', '.join(f'{r:.2f}' for r in lat['ratio_per_round'])})")
    met = lat["ratio_int8_over_fp32"] <= 0.5 and acc["drop_points"] <= 1.0
    print(f"targets {'met' if met else 'NOT met'}")
    if args.json:
        write_json(args.json, {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "machine": machine_info(), "cpu_flags": flags, "versions": tool_versions(),
                               "int8_weights": weights.to_dict(), "accuracy": acc, "latency": lat, "targets_met": met})


if __name__ == "__main__":
    main()
