"""Where does bf16 lose parity? The fused IR cut into stages, each compiled by OpenVINO in f32 or bf16, against the
f32 compile of the whole graph on a data set's test split (issue 27's finding on the bf16 bound).

Cuts: only the stem in bf16 (first conv + ReLU; the rest f32), the stem in f32 and the trunk in bf16 (heads f32),
the trunk in bf16 (heads f32: what the `openvino-bf16` runner runs), and the whole graph in bf16.

    python benchmarks/bf16_cut_points.py EXPORT_DIR --data faces.csv [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fuse_export.compare.report import machine_info
from fuse_export.contract import Preprocessing
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.exporters.to_openvino import import_openvino, shared_core
from fuse_export.fileio import write_json
from fuse_export.preprocess import preprocess
from fuse_export.runners.openvino_runner import cut_model


def run(stages: list, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Probabilities of the chained stages (each feeds the next its one output)."""
    out = []
    for i in range(0, len(x), batch):
        h = x[i:i + batch]
        for compiled in stages[:-1]:
            h = compiled({0: h})[compiled.output(0)]
        out.append(stages[-1]({0: h})["probabilities"])
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="An export folder with model.xml (fp32 IR) and manifest.json")
    ap.add_argument("--data", type=Path, required=True, help="The FER-2013 CSV whose test split is compared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ov, core = import_openvino(), shared_core()
    pre = Preprocessing.from_dict(json.loads((args.export / "manifest.json").read_text())["preprocessing"])
    x = preprocess([Image.fromarray(im) for im in load_fer2013_csv(args.data).splits["test"].images], pre)
    x = x.astype(np.float32)
    xml = str(args.export / "model.xml")
    ops = core.read_model(xml).get_ordered_ops()
    stem = next(op for op in ops if op.get_type_name() == "Relu").get_friendly_name()
    stem_pool = next(op for op in ops if op.get_type_name() == "MaxPool").get_friendly_name()
    pooled = [op for op in ops if op.get_type_name() in ("ReduceMean", "AvgPool")][-1].get_friendly_name()
    plans = {"stem bf16, rest f32": ([stem], ["bf16", "f32"]),
             "stem f32, trunk bf16, heads f32": ([stem_pool, pooled], ["f32", "bf16", "f32"]),
             "trunk bf16, heads f32 (the openvino-bf16 runner)": ([pooled], ["bf16", "f32"]),
             "whole graph bf16": ([], ["bf16"])}

    def compile_(model, precision: str):
        return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                 "INFERENCE_NUM_THREADS": str(args.threads)})

    ref = run([compile_(core.read_model(xml), "f32")], x)
    rows: dict[str, Any] = {}
    for label, (cuts, precisions) in plans.items():
        parts, rest = [], core.read_model(xml)
        for name in cuts:
            node = next(op for op in rest.get_ordered_ops() if op.get_friendly_name() == name)
            before, rest = cut_model(ov, rest, node.output(0))
            parts.append(before)
        got = run([compile_(m, p) for m, p in zip(parts + [rest], precisions)], x)
        d = np.abs(got - ref).max(1)
        rows[label] = {"max_abs_prob": float(d.max()), "p99_abs_prob": float(np.percentile(d, 99)),
                       "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
        print(f"{label:<50} max |dprob| {d.max():.2e}  p99 {np.percentile(d, 99):.2e}  "
              f"top-1 {100 * rows[label]['top1_agreement']:.1f}%", flush=True)
    if args.json:
        write_json(args.json, {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "machine": machine_info(), "export": str(args.export), "images": int(len(x)),
                               "cuts": rows})


if __name__ == "__main__":
    main()
