"""cleanlab on the same cross-fitted probabilities as `fuse-export audit-labels`: the reference it is measured against.

cleanlab is AGPL-3.0 and this project is MIT, so cleanlab is never a dependency of the package: this script runs
in an environment of its own that has only numpy and cleanlab (it imports nothing from fuse_export), and reads
what benchmarks/trunk_noise.py left in its work folder (each fused run's audit.npz: given and true labels; the
fold models' out-of-fold probabilities):

    python3 -m venv /tmp/cleanlab-env && /tmp/cleanlab-env/bin/pip install "cleanlab==2.9.0" "numpy<2"
    /tmp/cleanlab-env/bin/python benchmarks/cleanlab_compare.py runs/trunk_noise/trunk_noise \\
        --out benchmarks/results/cleanlab_compare.json
    python benchmarks/trunk_noise.py --report-only --cleanlab benchmarks/results/cleanlab_compare.json

Per run: precision at K (K = flipped labels) and recall at 2K of cleanlab's rankings
(`cleanlab.rank.get_label_quality_scores`, methods self_confidence and normalized_margin, with and without its
class-threshold adjustment), and of `cleanlab.filter.find_label_issues` (its flagged set, ranked by
self-confidence; where it flags fewer than K, the rest follow in quality-score order).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np


def metrics(order: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    k = int(wrong.sum())
    return {"p_at_k": float(wrong[order[:k]].mean()), "r_at_2k": float(wrong[order[:2 * k]].sum() / k)}


def crossfit(folder: Path, trunk: str, setting: str, seed: str) -> np.ndarray | None:
    parts = sorted(folder.glob(f"folds/{trunk}_{setting}_seed{seed}_fold*/fold.npz"))
    if not parts:
        return None
    loaded = [np.load(p) for p in parts]
    n = sum(len(d["rows"]) for d in loaded)
    probs = np.zeros((n, loaded[0]["probs"].shape[1]))
    for d in loaded:
        probs[d["rows"]] = d["probs"]
    return probs


def main() -> None:
    import cleanlab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="benchmarks/trunk_noise.py's work folder (holding runs/ and folds/)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = {}
    for npz in sorted(args.work.glob("runs/*_fused_seed*/audit.npz")):
        m = re.fullmatch(r"(\w+?)_(a?sym\d+)_fused_seed(\d+)", npz.parent.name)
        if not m:
            continue
        trunk, setting, seed = m.groups()
        probs = crossfit(args.work, trunk, setting, seed)
        if probs is None:
            continue
        d = np.load(npz)
        labels, wrong = d["given"], d["given"] != d["truth"]
        if not wrong.any():
            continue
        out = {}
        for method in ("self_confidence", "normalized_margin"):
            for adjust in (False, True):
                q = get_label_quality_scores(labels, probs, method=method, adjust_pred_probs=adjust)
                name = f"{method}{' adjusted' if adjust else ''}"
                out[name] = metrics(np.argsort(q, kind="stable"), wrong)  # low quality = likely wrong
        flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
        q = get_label_quality_scores(labels, probs, method="self_confidence")
        rest = [i for i in np.argsort(q, kind="stable") if i not in set(flagged.tolist())]
        out["find_label_issues"] = metrics(np.concatenate([flagged, rest]).astype(np.int64), wrong) | {
            "flagged": int(flagged.size), "flagged_precision": float(wrong[flagged].mean()) if flagged.size else None}
        runs[f"{trunk}/{setting}/{seed}"] = out
        print(f"{trunk}/{setting}/{seed}: " + ", ".join(f"{k} P@K {v['p_at_k']:.3f}" for k, v in out.items()))
    if not runs:
        sys.exit(f"{args.work}: no fused run with cross-fitted probabilities; run benchmarks/trunk_noise.py first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cleanlab": cleanlab.__version__, "numpy": np.__version__, "runs": runs,
                               "command": " ".join(["python", *sys.argv])}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
