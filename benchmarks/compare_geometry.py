"""Which crop geometry should training and deployment share? Three (train, eval) pairs on the synthetic faces.

* current: train squashes the whole frame to HxH (+ flip), eval resizes the short side to H*256/224 and
  center-crops H: the pair fuse-export shipped first; a deployed face is ~14% larger than a trained one.
* scn: SCN's released code, plain resize to HxH for both (+ flip for training): geometry "squash".
* akhand: Akhand et al.'s pair, a random-resized crop with a narrow scale range around the eval crop (+ flip)
  for training, resize + center-crop for eval: geometry "resize-crop".

"current" and "scn" train identically (same transform, same seed: the same weights epoch by epoch), so one
training serves both: each trained model is evaluated through both eval geometries, with the stacker refitted
on the held-out split seen through that geometry, as the trainer would have fitted it. (The one difference
from a real "current" run: its best epoch was chosen through the squash eval.) Every run trains the
synthetic-quick recipe (64x64 input, 12 epochs) on the same synthetic CSV, 3 seeds. Reported per (pair,
seed): fused and per-head accuracy on the validation split (the choice is made on validation) and on test.

    setsid nohup python benchmarks/compare_geometry.py > runs/compare_geometry.log 2>&1 &   # 6 trainings
    python benchmarks/compare_geometry.py --set samples_per_class=40 --set epochs=2 --set 'seeds=[0]'  # a smoke run
Results: benchmarks/results/compare_geometry.json and .md, generated from compare_geometry.jsonl (one line per
finished row, appended at once; a rerun resumes). Every row records the full recipe it trained with, and the
stacker is chosen as the trainer chooses it today (`stacking.select`, train/stacking.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report_blocks import publish  # noqa: E402
from study_log import append_rows, load_around, read_rows  # noqa: E402

from fuse_export.contract import Preprocessing  # noqa: E402
from fuse_export.data.fer2013 import load_fer2013_csv  # noqa: E402
from fuse_export.data.synthetic import SyntheticSpec  # noqa: E402
from fuse_export.data.synthetic_csv import write_fer2013_csv  # noqa: E402
from fuse_export.data.torchdata import eval_batches  # noqa: E402
from fuse_export.data.transforms import eval_transform  # noqa: E402
from fuse_export.fileio import write_json  # noqa: E402
from fuse_export.training.loop import head_accuracies, predict_heads  # noqa: E402
from fuse_export.training.recipe import load_recipe  # noqa: E402
from fuse_export.training.trainer import run_training  # noqa: E402


@dataclass(frozen=True)
class Config:
    samples_per_class: int = 300
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    image_size: int = 64  # the synthetic-quick recipe's input size
    epochs: int = 12  # the synthetic-quick recipe's budget
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0


PAIRS = {
    "current": ("resize-crop", "train: squash HxH + flip; eval: resize short side to H*256/224, center-crop H"),
    "scn": ("squash", "train: squash HxH + flip; eval: squash HxH (SCN's code)"),
    "akhand": ("resize-crop", "train: random-resized crop, area share 0.65-0.88 of the frame, aspect 0.9-1.11, "
                              "+ flip; eval: resize short side to H*256/224, center-crop H (Akhand et al.)"),
}
# What is trained (geometry of the recipe), and which pair each eval geometry of that training is.
TRAININGS = {"squash-train": ("squash", {"squash": "scn", "resize-crop": "current"}),
             "rrc-train": ("resize-crop", {"resize-crop": "akhand", "squash": "akhand-evaluated-squash"})}


def measure(cfg: Config, training: str, seed: int, data: Path, run_dir: Path) -> list[dict[str, Any]]:
    """Train once; score the best checkpoint through both eval geometries (stacker refitted per geometry)."""
    from fuse_export.model.stacker import Stacker
    from fuse_export.training.build import holdout_split
    from fuse_export.training.stacking import choose_stacker

    geometry, pairs = TRAININGS[training]
    recipe = load_recipe(ROOT / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": cfg.image_size, "geometry": geometry}, train={"epochs": cfg.epochs, "seed": seed})
    start = time.perf_counter()
    result = run_training(recipe, str(data), run_dir, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    assert result.model is not None
    model, cpu = result.model, torch.device("cpu")
    ds = load_fer2013_csv(data)
    _, hold_idx = holdout_split(ds.splits["train"], recipe.stacking.holdout_fraction, seed)
    splits = {"hold": ds.splits["train"].subset(hold_idx), "val": ds.splits["val"], "test": ds.splits["test"]}
    rows = []
    for g, pair in pairs.items():
        pre = Preprocessing(cfg.image_size, ds.class_names, color_mode=ds.color_mode, geometry=g)
        heads = {k: predict_heads(model, eval_batches(sp, eval_transform(pre), 128), cpu) for k, sp in splits.items()}
        st = Stacker(model.config.num_classes, model.config.stacker)
        h, sk = heads["hold"], recipe.stacking
        # As the trainer chooses it (train/stacking.py), on the held-out split seen through this geometry.
        choice = choose_stacker(st, st.features(h.dcnn_logits, h.scn_logits, h.alpha),
                                torch.from_numpy(splits["hold"].labels), select=sk.select, folds=sk.folds,
                                strengths=sk.strengths, weight_decay=sk.weight_decay, max_iter=sk.max_iter, seed=seed)
        model.stacker.load_state_dict(st.state_dict())
        acc = {k: head_accuracies(model, heads[k], torch.from_numpy(splits[k].labels)) for k in ("val", "test")}
        rows.append({"pair": pair, "seed": seed, "training": training, "train_geometry": geometry,
                     "eval_geometry": g, "best_epoch": result.best_epoch, "val_acc": acc["val"],
                     "test_acc": acc["test"], "train_seconds": round(seconds, 1), "stacker": choice.winner,
                     "recipe": recipe.to_dict()})
    return rows


def run_cell(cfg: Config, training: str, seed: int, data: Path, run_dir: Path) -> list[dict[str, Any]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.glob("*.pt"), *(run_dir / n for n in ("metrics.jsonl", "metrics.csv", "summary.json"))]:
        old.unlink(missing_ok=True)  # a cell killed half-way restarts from scratch
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        rows = measure(cfg, training, seed, data, run_dir)
    for ckpt in run_dir.glob("*.pt"):
        ckpt.unlink()
    return rows


def code_digest() -> str:
    """Hash of the code the numbers depend on: rows from older code are never reused."""
    pkg = ROOT / "fuse_export"
    files = sorted([*(pkg / "data").glob("*.py"), *(pkg / "model").glob("*.py"), *(pkg / "training").glob("*.py"),
                    pkg / "contract.py", pkg / "preprocess.py", ROOT / "recipes" / "synthetic-quick.toml"])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for pair in [*PAIRS, "akhand-evaluated-squash"]:
        mine = sorted((r for r in rows if r["pair"] == pair), key=lambda r: r["seed"])
        if not mine:
            continue

        def stat(values: list[float]) -> dict[str, Any]:
            return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "runs": values}

        out[pair] = {"train_geometry": mine[0]["train_geometry"], "eval_geometry": mine[0]["eval_geometry"],
                     "what": PAIRS.get(pair, ("", "the Akhand-trained model deployed with squash (a mismatch)"))[1],
                     "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in mine)}
        for split in ("val", "test"):
            for head in ("fused", "dcnn", "scn"):
                out[pair][f"{split}_{head}"] = stat([r[f"{split}_acc"][head] for r in mine])
    return out


def write_markdown(path: Path, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    lines = [f"# Crop geometry comparison ({doc['date']})", "", f"Command: `{doc['command']}`", "",
             f"Config: {json.dumps(doc['config'])}; machine: {doc['machine']}; training {doc['train_seconds_total']} s in all; load average "
             f"{min(doc['load']):.2f}-{max(doc['load']):.2f} around the cells.", "",
             "| pair | train -> eval | val fused (mean +- sd) | val DCNN | val SCN | test fused | test DCNN | test SCN |",
             "|---|---|---|---|---|---|---|---|"]
    for pair, v in s.items():
        def f(k: str) -> str:
            return f"{100 * v[k]['mean']:.1f} +- {100 * v[k]['sd']:.1f}"
        lines.append(f"| {pair} | {v['train_geometry']} -> {v['eval_geometry']} | {f('val_fused')} | {f('val_dcnn')} | "
                     f"{f('val_scn')} | {f('test_fused')} | {f('test_dcnn')} | {f('test_scn')} |")
    lines += ["", f"Chosen (best mean validation fused accuracy among the consistent pairs scn and akhand): "
              f"**{doc['chosen']}** (geometry {doc['chosen_geometry']})", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if doc["name"] == "compare_geometry":  # the pages quote this table: regenerate their block from it
        publish("compare-geometry", "\n".join(lines[2:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=Path("runs/compare_geometry"))
    ap.add_argument("--name", default="compare_geometry")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    cfg = Config()
    for item in args.set:
        k, _, v = item.partition("=")
        val = json.loads(v)
        cfg = replace(cfg, **{k: tuple(val) if isinstance(val, list) else val})
    work = args.work / args.name
    data = work / "data.csv"
    if not data.exists():
        write_fer2013_csv(data, SyntheticSpec(samples_per_class=cfg.samples_per_class, seed=cfg.data_seed),
                          cfg.fractions)
    # Each finished training's rows are appended to NAME.jsonl at once; a rerun skips finished cells.
    key = json.dumps([asdict(replace(cfg, seeds=())), code_digest()], sort_keys=True)
    jsonl = args.out / f"{args.name}.jsonl"
    rows = read_rows(jsonl, key)
    start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cells = [(t, s) for s in cfg.seeds for t in TRAININGS]
    for i, (training, seed) in enumerate(cells, 1):
        if any(r["training"] == training and r["seed"] == seed for r in rows):
            continue
        cell = load_around(lambda: run_cell(cfg, training, seed, data, work / f"{training}_seed{seed}"))
        got = append_rows(jsonl, cell.pop("result"), key=key, **cell)  # this training's rows, at once
        rows += got
        print(f"[{i}/{len(cells)} {time.perf_counter() - start:.0f}s] " + "; ".join(
            f"{r['pair']} seed {r['seed']}: val fused {r['val_acc']['fused']:.3f}" for r in got)
            + f"  {got[0]['train_seconds']}s", flush=True)
    if {(t, s) for t, s in cells} - {(r["training"], r["seed"]) for r in rows}:
        print("not every cell has finished: rerun to resume; no report written")
        return
    summary = summarize(rows)
    # Only a pair whose training and deployment agree can be the product's one geometry.
    chosen = max(("scn", "akhand"), key=lambda p: summary[p]["val_fused"]["mean"])
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    doc = {"name": args.name, "config": asdict(cfg), "recipe": rows[0]["recipe"], "pairs": {k: v[1] for k, v in PAIRS.items()}, "runs": sorted(
        rows, key=lambda r: (r["pair"], r["seed"])), "summary": summary, "chosen": chosen,
           "chosen_geometry": summary[chosen]["eval_geometry"],
           "command": " ".join(["python benchmarks/compare_geometry.py", *sys.argv[1:]]),
           "train_seconds_total": round(sum({(r["training"], r["seed"]): r["train_seconds"] for r in rows}.values())),
           "load": sorted({r["load_before"] for r in rows} | {r["load_after"] for r in rows}), "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "machine": f"{cpu}, {multiprocessing.cpu_count()} cores, torch {torch.__version__}"}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", doc)
    write_markdown(args.out / f"{args.name}.md", doc)
    print(json.dumps({k: {m: round(v[m]["mean"], 4) for m in ("val_fused", "test_fused")} for k, v in summary.items()}))
    print("chosen:", chosen)


if __name__ == "__main__":
    main()
