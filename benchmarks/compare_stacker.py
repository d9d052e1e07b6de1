"""Does the fused output earn its place? The default stacker against its own heads and every candidate, paired.

Per (noise rate, seed) one fused model is trained with today's default recipe (benchmarks/noisy_labels.py's
data and schedule: synthetic faces, symmetric noise on the training labels; `stacking.select = "cv"`). From its
best checkpoint (the epoch a user gets) the script scores on the clean validation and test splits:

* the two heads (DCNN, SCN) and the better of them on test;
* the default fused output, exactly as trained and saved (its stacker chosen by cross-validation on held-out);
* every candidate refitted on the same held-out split: each head alone, the average, fits towards the average
  at each strength, and the first release's stacker (one L-BFGS fit with L2 towards zero, weight decay 1e-3).

Each finished (rate, seed) cell is appended to `--out/NAME.jsonl` at once; a rerun skips finished cells, so the
study can be stopped and resumed. The JSON, the Markdown table and the RESULTS.md / docs/model.md blocks are
generated from the JSONL (`--report` regenerates them without training).

    setsid nohup python benchmarks/compare_stacker.py > runs/compare_stacker.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from noisy_labels import Config, code_digest, make_data  # noqa: E402
from report_blocks import publish  # noqa: E402
from study_log import append_rows, load_around, read_rows  # noqa: E402

from fuse_export.compare.report import machine_info  # noqa: E402
from fuse_export.data.fer2013 import load_fer2013_csv  # noqa: E402
from fuse_export.data.torchdata import eval_batches  # noqa: E402
from fuse_export.data.transforms import eval_transform  # noqa: E402
from fuse_export.fileio import atomic_open, write_json  # noqa: E402
from fuse_export.model.stacker import Stacker, fit_stacker  # noqa: E402
from fuse_export.training.build import holdout_split  # noqa: E402
from fuse_export.training.checkpoint import load_model, read_checkpoint  # noqa: E402
from fuse_export.training.loop import predict_heads  # noqa: E402
from fuse_export.training.stacking import choose_stacker  # noqa: E402
from fuse_export.training.trainer import run_training  # noqa: E402

RATES = (0.0, 0.3)
# The study's size: 400 faces per class (a 196-image held-out split), 40x40, 12 epochs: ~2-4 min a cell on two
# idle cores, six cells. A bigger machine would add seeds (the per-seed spread dominates) and the 64 px size.
DEFAULT = replace(Config(), samples_per_class=400, rates=RATES)


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def measure(cfg: Config, rate: float, seed: int, clean: Path, noisy: Path, run_dir: Path) -> dict[str, Any]:
    recipe = cfg.recipe(seed)
    start = time.perf_counter()
    run_training(recipe, str(noisy), run_dir, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    best = run_dir / "best.pt"
    loaded, state = load_model(best), read_checkpoint(best)
    model, tf, cpu = loaded.model, eval_transform(loaded.preprocessing), torch.device("cpu")
    noisy_train = load_fer2013_csv(noisy).splits["train"]
    _, hold_idx = holdout_split(noisy_train, recipe.stacking.holdout_fraction, recipe.train.seed)
    hold = noisy_train.subset(hold_idx)
    clean_ds = load_fer2013_csv(clean)
    splits = {"hold": hold, "val": clean_ds.splits["val"], "test": clean_ds.splits["test"]}
    heads = {k: predict_heads(model, eval_batches(s, tf, 128), cpu) for k, s in splits.items()}
    y = {k: torch.from_numpy(s.labels) for k, s in splits.items()}
    scores: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for s in ("val", "test"):
            scores.setdefault("dcnn", {})[s] = _acc(heads[s].dcnn_logits, y[s])
            scores.setdefault("scn", {})[s] = _acc(heads[s].scn_logits, y[s])
            scores.setdefault("default", {})[s] = _acc(model.stack(heads[s]), y[s])  # as trained and saved
    h = heads["hold"]
    num_classes = model.config.num_classes
    refits = {"average": ("average", None), "first-release": ("zero", 1e-3),
              **{f"fitted@{v:g}": ("fitted", v) for v in recipe.stacking.strengths}}
    for name, (how, strength) in refits.items():
        st = Stacker(num_classes, model.config.stacker)
        feats = st.features(h.dcnn_logits, h.scn_logits, h.alpha)
        if how == "zero":  # the first release: one fit, L2 towards zero, from the even start
            fit_stacker(st, feats, y["hold"], strength, recipe.stacking.max_iter)
        else:
            choose_stacker(st, feats, y["hold"], select="fitted" if how == "fitted" else how,
                           weight_decay=strength or 0.0, max_iter=recipe.stacking.max_iter)
        with torch.no_grad():
            scores[name] = {s: _acc(st(heads[s].dcnn_logits, heads[s].scn_logits, heads[s].alpha), y[s])
                            for s in ("val", "test")}
    return {"rate": rate, "seed": seed, "train_seconds": round(seconds, 1), "holdout": len(hold),
            "best_epoch": state.get("epoch"), "stacking": state.get("stacking"), "scores": scores}


def run_cell(cfg: Config, rate: float, seed: int, clean: Path, noisy: Path, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("*.pt"):  # a cell killed half-way restarts from scratch
        old.unlink()
    for extra in ("metrics.jsonl", "metrics.csv", "summary.json"):
        (run_dir / extra).unlink(missing_ok=True)
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        row = measure(cfg, rate, seed, clean, noisy, run_dir)
    for ckpt in run_dir.glob("*.pt"):
        ckpt.unlink()
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per noise rate: mean test accuracy of every arm, and the acceptance checks of issue 23."""
    out: dict[str, Any] = {}
    for rate in sorted({r["rate"] for r in rows}):
        mine = sorted((r for r in rows if r["rate"] == rate), key=lambda r: r["seed"])
        arms = list(mine[0]["scores"])
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for s in ("val", "test"):
            entry[s] = {a: 100 * statistics.fmean(r["scores"][a][s] for r in mine) for a in arms}
        better = [100 * max(r["scores"]["dcnn"]["test"], r["scores"]["scn"]["test"]) for r in mine]
        fused = [100 * r["scores"]["default"]["test"] for r in mine]
        gaps = [f - b for f, b in zip(fused, better)]
        better_mean_head = max(entry["test"]["dcnn"], entry["test"]["scn"])
        entry["better_head_test_per_seed"] = better
        entry["default_test_per_seed"] = fused
        entry["gap_per_seed"] = gaps
        entry["winners"] = [(r.get("stacking") or {}).get("winner") for r in mine]
        entry["every_seed_within_0.5"] = all(g >= -0.5 for g in gaps)
        # "Its mean over seeds is >= the better head's mean": read both ways, per-seed better head and the head
        # with the better mean; both are reported, the stricter (per-seed) one decides.
        entry["mean_vs_per_seed_better"] = statistics.fmean(fused) - statistics.fmean(better)
        entry["mean_vs_better_mean_head"] = statistics.fmean(fused) - better_mean_head
        # Rounded to the table's precision: a difference of 1e-14 is float noise, not a shortfall.
        entry["accepted_better_mean_head"] = entry["every_seed_within_0.5"] and round(
            entry["mean_vs_better_mean_head"], 6) >= 0
        entry["accepted"] = entry["every_seed_within_0.5"] and round(entry["mean_vs_per_seed_better"], 6) >= 0
        out[f"{rate:.1f}"] = entry
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Command: `{doc['command']}` ({doc['date']}; {doc['machine']['cpu']}, "
             f"{doc['machine']['logical_cpus']} cores; load {doc['load']}).", "",
             f"Config: {json.dumps(doc['config'])}; recipe stacking: {json.dumps(doc['stacking_recipe'])}.", "",
             "Clean test accuracy (%), per seed, best checkpoint. *default* is the fused output as trained (stacker "
             "chosen by 5-fold CV on the held-out split); *first release* is one L-BFGS fit with L2 towards zero.", "",
             "| noise | seed | DCNN | SCN | average | first release | default fused | winner | default - better head |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(doc["runs"], key=lambda r: (r["rate"], r["seed"])):
        t = {a: 100 * v["test"] for a, v in r["scores"].items()}
        better = max(t["dcnn"], t["scn"])
        winner = (r.get("stacking") or {}).get("winner", "?")
        lines.append(f"| {r['rate']:.0%} | {r['seed']} | {t['dcnn']:.1f} | {t['scn']:.1f} | {t['average']:.1f} | "
                     f"{t['first-release']:.1f} | **{t['default']:.1f}** | {winner} | {t['default'] - better:+.1f} |")
    lines += ["", "| noise | DCNN | SCN | average | first release | " +
              " | ".join(a for a in doc["arms"] if a.startswith("fitted@")) +
              " | default | every seed >= better head - 0.5 | mean - better head's mean | "
              "mean - mean of per-seed better head |",
              "|---|---|---|---|---|" + "---|" * len([a for a in doc["arms"] if a.startswith("fitted@")]) +
              "---|---|---|---|"]
    for rate, e in doc["summary"].items():
        t = e["test"]
        fits = " | ".join(f"{t[a]:.1f}" for a in doc["arms"] if a.startswith("fitted@"))
        lines.append(f"| {float(rate):.0%} | {t['dcnn']:.1f} | {t['scn']:.1f} | {t['average']:.1f} | "
                     f"{t['first-release']:.1f} | {fits} | **{t['default']:.1f}** | "
                     f"{'yes' if e['every_seed_within_0.5'] else 'NO'} | {e['mean_vs_better_mean_head']:+.2f} "
                     f"({'met' if e['accepted_better_mean_head'] else 'missed'}) | {e['mean_vs_per_seed_better']:+.2f} "
                     f"({'met' if e['accepted'] else 'missed'}) |")
    lines += ["", "*better head's mean*: the head with the higher mean over seeds; *per-seed better head*: the better "
              "head of each seed on test (a head no rule can know without the test split). The fits and the first "
              "release's stacker beat both heads on test at 30% noise, but not on the held-out split the choice "
              "is made on (out-of-fold accuracy in each run's `stacking` record): the choice cannot see that gain."]
    done = sum(len(e["seeds"]) for e in doc["summary"].values())
    lines += ["", f"Cells finished: {done} of {doc['cells']}. Results: `benchmarks/results/{doc['name']}.json` "
              f"(generated from `{doc['name']}.jsonl`)."]
    return "\n".join(lines)


def report(cfg: Config, rows: list[dict[str, Any]], args: argparse.Namespace, cells: int) -> dict[str, Any]:
    doc = {"name": args.name, "config": asdict(cfg), "stacking_recipe": asdict(cfg.recipe(0).stacking),
           "runs": sorted(rows, key=lambda r: (r["rate"], r["seed"])), "summary": summarize(rows) if rows else {},
           "arms": list(rows[0]["scores"]) if rows else [], "cells": cells,
           # The command that measured the cells (a --report run only re-renders them).
           "command": " ".join(["python benchmarks/compare_stacker.py", *(a for a in sys.argv[1:] if a != "--report")]),
           "date": datetime.date.today().isoformat(), "machine": machine_info(),
           # The 1-minute load average before and after each cell (the study itself holds it near 2 on 2 cores).
           "load": (f"{min(r['load_before'] for r in rows):.2f}-{max(r['load_after'] for r in rows):.2f} around the "
                    "cells") if rows else "n/a"}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", doc)
    if rows:
        text = markdown(doc)
        with atomic_open(args.out / f"{args.name}.md", "w") as fh:
            fh.write(f"# Stacker against its heads ({doc['date']})\n\n{text}\n")
        if args.name == "compare_stacker":
            publish("compare-stacker", text)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("runs/compare_stacker"))
    ap.add_argument("--name", default="compare_stacker")
    ap.add_argument("--report", action="store_true", help="regenerate the reports from the JSONL; train nothing")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a noisy_labels Config field (JSON), e.g. --set 'seeds=[0]'")
    args = ap.parse_args()
    cfg = DEFAULT
    for item in args.set:
        k, _, v = item.partition("=")
        val = json.loads(v)
        cfg = replace(cfg, **{k: tuple(val) if isinstance(val, list) else val})
    key = json.dumps([asdict(replace(cfg, rates=(), seeds=())), asdict(cfg.recipe(0).stacking), code_digest()],
                     sort_keys=True)
    jsonl = args.out / f"{args.name}.jsonl"
    if args.report and jsonl.exists():  # re-render what was measured, under the key it was measured with
        logged = read_rows(jsonl)
        key = logged[-1].get("key", key) if logged else key
    rows = read_rows(jsonl, key)
    cells = [(r, s) for r in cfg.rates for s in cfg.seeds]
    if not args.report:
        work = args.work / args.name
        clean, noisy, _ = make_data(cfg, work)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        start = time.perf_counter()
        for i, (rate, seed) in enumerate(cells, 1):
            if any(r["rate"] == rate and r["seed"] == seed for r in rows):
                continue
            cell = load_around(lambda: run_cell(cfg, rate, seed, clean, noisy[(rate, seed)],
                                                work / f"noise{int(round(rate * 100)):02d}_seed{seed}"))
            (row,) = append_rows(jsonl, [cell.pop("result")], key=key, **cell)  # one line per cell, at once
            rows.append(row)
            t = {a: v["test"] for a, v in row["scores"].items()}
            print(f"[{i}/{len(cells)} {time.perf_counter() - start:.0f}s] noise {rate:.0%} seed {seed}: test dcnn "
                  f"{t['dcnn']:.3f} scn {t['scn']:.3f} default {t['default']:.3f} "
                  f"({(row['stacking'] or {}).get('winner')})", flush=True)
    doc = report(cfg, rows, args, len(cells))
    if rows:
        print(markdown(doc))


if __name__ == "__main__":
    main()
