"""cleanlab on the same cross-fitted probabilities as `fuse-export audit-labels`: the reference it is measured against.

cleanlab is AGPL-3.0 and this project is MIT, so cleanlab is never a dependency of the package: this script runs
in an environment of its own that has only numpy and cleanlab (it imports nothing from fuse_export), and reads
what benchmarks/trunk_noise.py keeps with its log (each fused run's arrays: given and true labels, the checkpoint's
in-sample probabilities; the fold models' out-of-fold probabilities):

    python3 -m venv /tmp/cleanlab-env && /tmp/cleanlab-env/bin/pip install "cleanlab==2.9.0" "numpy<2"
    /tmp/cleanlab-env/bin/python benchmarks/cleanlab_compare.py benchmarks/results/trunk_noise.jsonl \\
        --out benchmarks/results/cleanlab_compare.json
    python benchmarks/trunk_noise.py --report-only --cleanlab benchmarks/results/cleanlab_compare.json

Per run and per probability source (cross-fitted, where every fold has finished; in-sample): precision at K (K = flipped labels) and recall at 2K of cleanlab's rankings
(`cleanlab.rank.get_label_quality_scores`, methods self_confidence and normalized_margin, with and without its
class-threshold adjustment), and of `cleanlab.filter.find_label_issues` (its flagged set, ranked by
self-confidence; where it flags fewer than K, the rest follow in quality-score order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_log import read_rows  # noqa: E402  (standard library only, like this script)


def metrics(order: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    k = int(wrong.sum())
    return {"p_at_k": float(wrong[order[:k]].mean()), "r_at_2k": float(wrong[order[:2 * k]].sum() / k)}


def crossfit(rows: list[dict], arrays: Path, run: dict, folds: int) -> tuple[str, np.ndarray] | None:
    """The out-of-fold probabilities of one fused run's noisy training set, if all its fold models have finished,
    and the trunk file they ran on. The fold models are a unit of their own (benchmarks/trunk_noise.py's choose()):
    those on the run's own trunk file if complete, else the first complete set in the log, as the study takes them."""
    sets: dict[str, dict[int, Path]] = {}
    for r in rows:
        if "fold" in r and "arrays" in r and (r["trunk"], r["setting"], r["seed"]) == (
                run["trunk"], run["setting"], run["seed"]):
            sets.setdefault(r["tag"], {})[r["fold"]] = arrays / r["arrays"]
    complete = [tag for tag, parts in sets.items() if len(parts) >= folds]
    if not complete:
        return None
    tag = run["tag"] if run["tag"] in complete else complete[0]
    parts = sets[tag]
    loaded = [np.load(parts[k]) for k in sorted(parts)]
    n = sum(len(d["rows"]) for d in loaded)
    probs = np.zeros((n, loaded[0]["probs"].shape[1]))
    for d in loaded:
        probs[d["rows"]] = d["probs"]
    return tag, probs


def rankings(labels: np.ndarray, probs: np.ndarray, wrong: np.ndarray) -> dict[str, dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    for method in ("self_confidence", "normalized_margin"):
        for adjust in (False, True):
            q = get_label_quality_scores(labels, probs, method=method, adjust_pred_probs=adjust)
            out[f"{method}{' adjusted' if adjust else ''}"] = metrics(np.argsort(q, kind="stable"), wrong)
    flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    q = get_label_quality_scores(labels, probs, method="self_confidence")
    taken = set(flagged.tolist())
    rest = [i for i in np.argsort(q, kind="stable") if i not in taken]
    out["find_label_issues"] = metrics(np.concatenate([flagged, rest]).astype(np.int64), wrong) | {
        "flagged": int(flagged.size), "flagged_precision": float(wrong[flagged].mean()) if flagged.size else None}
    return out


def main() -> None:
    import cleanlab

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="benchmarks/trunk_noise.py's log (its arrays in the folder of the same name)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=4, help="the study's cross-fit folds")
    args = ap.parse_args()
    arrays = args.log.with_suffix("")
    rows = read_rows(args.log)
    runs = {}
    for r in rows:
        if r.get("model") != "fused" or not r.get("arrays"):
            continue
        d = np.load(arrays / r["arrays"])
        labels, wrong = d["given"].astype(np.int64), d["given"] != d["truth"]
        if not wrong.any():
            continue
        out = {}
        cf = crossfit(rows, arrays, r, args.folds)
        if cf is not None:
            out |= {f"{name} (crossfit)": m | {"folds_on": cf[0]} for name, m in rankings(labels, cf[1], wrong).items()}
        out |= {f"{name} (in-sample)": m for name, m in rankings(labels, d["probs"].astype(np.float64), wrong).items()}
        key = f"{r['tag']}/{r['setting']}/{r['seed']}"  # the tag names the trunk file: two trunks never mix
        runs[key] = out
        print(f"{key}: " + ", ".join(f"{k} P@K {v['p_at_k']:.3f}" for k, v in out.items()))
    if not runs:
        sys.exit(f"{args.log}: no fused run with noisy labels; run benchmarks/trunk_noise.py first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cleanlab": cleanlab.__version__, "numpy": np.__version__, "runs": runs,
                               "command": " ".join(["python", *sys.argv])}, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
