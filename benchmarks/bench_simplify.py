"""What `export --simplify` (onnxslim) and `--no-optimize` do to the fused graph: node count, CPU latency on
ONNX Runtime (and OpenVINO when installed), and parity against eager PyTorch on real images.

Four ONNX files of one checkpoint, exported exactly as `fuse-export export` does (torch.onnx dynamo, opset 18,
dynamic batch, metadata), with the exporter's optimizer on/off and with/without onnxslim. The runtimes are
timed in interleaved rounds (compare/timing.py: every row measured for a minimum time per round), so drift
of a shared machine hits every variant alike.

    python benchmarks/bench_simplify.py CHECKPOINT --data FACES.csv [--threads 2] [--batches 1,8]
        [--rounds 3] [--min-time 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fuse_export.compare.bench import eval_inputs
from fuse_export.compare.gpu_timing import Sampler
from fuse_export.compare.parity import compare_outputs
from fuse_export.compare.report import machine_info
from fuse_export.compare.timing import Schedule, interleaved_adaptive
from fuse_export.contract import IO_CONTRACT
from fuse_export.exporters.manifest import tool_versions
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.exporters.onnx_simplify import node_count, simplify_onnx
from fuse_export.exporters.to_onnx import export_onnx
from fuse_export.model.fused import ExportView
from fuse_export.training.checkpoint import load_model

VARIANTS = (("optimize", True, False), ("optimize+slim", True, True), ("no-optimize", False, False),
            ("no-optimize+slim", False, True))


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def openvino_model(path: Path, threads: int):
    """The ONNX file compiled by OpenVINO for the CPU (None without openvino)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU",
                              {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="FER-2013 CSV: parity on its test split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per row over all rounds")
    ap.add_argument("--limit", type=int, default=256, help="test images for parity")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    pre = loaded.preprocessing
    inputs = eval_inputs(pre, args.data, args.limit)
    view = ExportView(loaded.model).eval()
    with torch.inference_mode():
        eager = {n: t.numpy() for n, t in zip(IO_CONTRACT.output_names, view(torch.from_numpy(inputs.float_nchw)))}
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[str, dict] = {}
    samplers: dict[tuple[str, str, int], Sampler] = {}
    with tempfile.TemporaryDirectory() as tmp:
        example = torch.from_numpy(inputs.float_nchw[:2])
        for name, optimize, slim in VARIANTS:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(view, example, path, IO_CONTRACT, artifact_metadata(pre, False), optimize=optimize)
            import onnx

            row: dict = {"optimize": optimize, "simplify": slim,
                         "nodes_exported": node_count(onnx.load(str(path)))}
            if slim:
                row["onnxslim"] = simplify_onnx(path)
            row["nodes"] = node_count(onnx.load(str(path)))
            row["bytes"] = path.stat().st_size
            sess = ort_session(path, args.threads)
            got = {}
            for i in range(0, len(inputs.float_nchw), 32):
                outs = sess.run(None, {"image": inputs.float_nchw[i:i + 32]})
                for k, v in zip(IO_CONTRACT.output_names, outs):
                    got.setdefault(k, []).append(v)
            parity = compare_outputs(name, eager, {k: np.concatenate(v) for k, v in got.items()})
            row["parity"] = {"max_abs_prob": parity.max_abs_prob, "max_abs_conf": parity.max_abs_conf,
                             "top1_agreement": parity.top1_agreement, "decided": parity.decided,
                             "samples": parity.samples, "passed": bool(parity)}
            ov_model = openvino_model(path, args.threads)
            for b in batches:
                x = np.ascontiguousarray(inputs.float_nchw[np.arange(b) % len(inputs.float_nchw)])
                samplers[(name, "onnxruntime", b)] = Sampler(lambda s=sess, x=x: s.run(None, {"image": x}))
                if ov_model is not None:
                    req = ov_model.create_infer_request()
                    samplers[(name, "openvino", b)] = Sampler(lambda r=req, x=x: r.infer({0: x}))
            results[name] = row
        stats = interleaved_adaptive(samplers, Schedule(warmup=5, min_iterations=30, min_time_s=args.min_time,
                                                        rounds=args.rounds))
    for (name, runtime, b), s in stats.items():
        results[name].setdefault("latency_ms", {}).setdefault(runtime, {})[f"batch{b}"] = {
            "median": round(s.median_ms, 3), "p90": round(s.p90_ms, 3), "p99": round(s.p99_ms, 3),
            "calls": s.iterations}
    base = results["optimize"]["latency_ms"]
    for name, row in results.items():
        for runtime, per_batch in row["latency_ms"].items():
            for key, v in per_batch.items():
                v["vs_optimize"] = round(v["median"] / base[runtime][key]["median"], 3)
    doc = {"checkpoint": str(args.checkpoint), "image_size": pre.image_size, "inputs": inputs.source,
           "threads": args.threads, "rounds": args.rounds, "min_time_s": args.min_time,
           "machine": machine_info(), "versions": tool_versions(), "variants": results}
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "onnxslim"} for k, v in results.items()}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
