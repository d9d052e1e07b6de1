"""A `fuse-export bench --json` file as the Markdown table RESULTS.md quotes: per backend and batch, the median
latency, its ratio to the reference backend at the same batch (same run: `bench` interleaves its rows in
rounds), parity against the reference and accuracy, with the machine and versions the JSON records.

    python benchmarks/bench_table.py benchmarks/results/executorch_bench_amx.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def render(doc: dict[str, Any]) -> str:
    rows = [r for r in doc["rows"] if r.get("latency")]
    ref_key = doc["reference"]["backend"] if isinstance(doc.get("reference"), dict) else "pytorch"
    ref = {r["batch"]: r["latency"]["median_ms"] for r in rows if r["backend"] == ref_key}
    m = doc["machine"]
    flags = ", ".join(k for k, v in m.get("cpu_features", {}).get("flags", {}).items() if v) or "-"
    versions = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items())
    out = [f"Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs (flags: {flags}); {versions}.", "",
           f"| backend | batch | p50 ms | x {ref_key} (same run) | max \\|dprob\\| | top-1 agreement | parity "
           "| accuracy |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in sorted(rows, key=lambda r: (r["batch"], list(dict.fromkeys(x["backend"] for x in rows)).index(
            r["backend"]))):
        p = r.get("parity") or {}
        ratio = r["latency"]["median_ms"] / ref[r["batch"]] if r["batch"] in ref else float("nan")
        acc = r.get("accuracy")
        name = r["title"] if r["precision"] in r["title"] else f"{r['title']} {r['precision']}"
        out.append(f"| {name} | {r['batch']} | {r['latency']['median_ms']:.2f} | "
                   f"{ratio:.2f} | {p.get('max_abs_prob', float('nan')):.1e} | "
                   f"{100 * p.get('top1_agreement', float('nan')):.1f}% | "
                   f"{'held' if p.get('passed') else '**FAIL**'} (atol {p.get('atol')}) | "
                   f"{'-' if acc is None else f'{100 * acc:.2f}%'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    print(render(json.loads(ap.parse_args().json.read_text())))


if __name__ == "__main__":
    main()
