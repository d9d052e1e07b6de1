"""How well did `fuse-export audit-labels` find the labels a run flipped on purpose? Precision at K (K = flipped
labels) and recall at 2K of the audit CSV's ranking, against the run's own `label_noise.json` (written by `train`
when the recipe's data options inject noise: `--data-option noise_rate=0.3 --data-option noise_seed=0`).

    fuse-export train synthetic-quick --data faces.csv --out RUN --data-option noise_rate=0.3
    fuse-export audit-labels RUN/best.pt --data faces.csv --out RUN/audit.csv
    python benchmarks/audit_precision.py RUN/audit.csv RUN/label_noise.json [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from fuse_export.audit import precision_at_k, recall_at_k


def measure(audit_csv: Path, noise_json: Path) -> dict:
    noise = json.loads(noise_json.read_text())
    flipped = {f["name"] for f in noise["flipped"]}
    with open(audit_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [r["name"] for r in rows]
    k = len(flipped)
    missing = flipped - set(names)
    if missing:
        raise SystemExit(f"{audit_csv}: {len(missing)} flipped samples are not in the audit (another split?)")
    order = np.arange(len(names))  # the CSV is the ranking, most suspicious first
    wrong = np.array([n in flipped for n in names])
    return {"noise": {k_: noise[k_] for k_ in ("kind", "rate", "seed", "count")}, "samples": len(names), "k": k,
            "ranked_by": rows[0]["ranked_by"] if rows else None,
            "precision_at_k": precision_at_k(order, wrong, k), "recall_at_2k": recall_at_k(order, wrong, 2 * k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audit_csv", type=Path)
    ap.add_argument("label_noise", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = measure(args.audit_csv, args.label_noise)
    print(f"{result['samples']} audited, K = {result['k']} flipped ({result['noise']['kind']} "
          f"{result['noise']['rate']:g}); ranked by {result['ranked_by']}: precision at K "
          f"{result['precision_at_k']:.3f}, recall at 2K {result['recall_at_2k']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
