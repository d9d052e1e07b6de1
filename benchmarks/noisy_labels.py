"""Does the fusion cure noisy labels? DCNN alone vs SCN alone vs the fused network under symmetric label noise.

On the synthetic faces with 0/10/20/30% of the training labels flipped to another class (SCN's protocol;
validation and test labels stay clean), every model trains with the same recipe and budget, over several
seeds. Per run: clean test accuracy of the reported head at the final epoch (no test-set selection), and for
SCN and fused: how many flips relabeling restored, how many clean labels it damaged, the ROC AUC of alpha
separating flipped from clean training samples, and the label audit's precision at K = number of flips.
Ablations of the fused network at the highest rate: no rank regularization, no relabeling, relabeling every
sample instead of the low-importance group, and two separate backbones (with their inference latency).

    python benchmarks/noisy_labels.py            # the default size: under an hour on 2 idle CPU cores
    python benchmarks/noisy_labels.py --quick    # minutes, for a smoke test
Results: --out (default benchmarks/results): noisy_labels.json, noisy_labels.md, noisy_labels.png.
Runs are cached under --work, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noisy_labels_report import latency_ms, write_report  # noqa: E402

from fuse_export.audit import audit_heads, percentile_rank, precision_at_k, roc_auc  # noqa: E402
from fuse_export.data.fer2013 import load_fer2013_csv  # noqa: E402
from fuse_export.data.noise import inject_symmetric_noise  # noqa: E402
from fuse_export.data.synthetic import SyntheticSpec  # noqa: E402
from fuse_export.data.synthetic_csv import write_fer2013_csv  # noqa: E402
from fuse_export.data.torchdata import eval_batches  # noqa: E402
from fuse_export.data.transforms import eval_transform  # noqa: E402
from fuse_export.fileio import atomic_open, write_json  # noqa: E402
from fuse_export.training.build import holdout_split  # noqa: E402
from fuse_export.training.checkpoint import load_model  # noqa: E402
from fuse_export.training.loop import head_accuracies, predict_heads  # noqa: E402
from fuse_export.training.recipe import Recipe, recipe_from_dict  # noqa: E402
from fuse_export.training.trainer import run_training  # noqa: E402


@dataclass(frozen=True)
class Config:
    """Everything that decides the numbers (hashed into the run cache key)."""

    samples_per_class: int = 300
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test shares of the synthetic set
    image_size: int = 40
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    gamma: float = 0.85
    margin1: float = 0.07
    margin2: float = 0.2
    relabel_epoch: int = 6
    rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0

    def recipe(self, seed: int) -> Recipe:
        """The shared recipe: SCN's own settings (Adam 1e-3, beta 0.7, delta1 0.07 at batch 64, delta2 0.2)."""
        return recipe_from_dict({
            "name": "noisy-labels",
            "data": {"format": "fer2013-csv", "image_size": self.image_size},
            "model": {"dcnn_hidden": [256], "dcnn_dropout": 0.3},
            "scn": {"beta": 0.7, "margin1": self.margin1, "margin2": self.margin2,
                    "relabel_epoch": self.relabel_epoch, "relabel_scope": "low", "rank_weight": 1.0},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "optimizer": "adam", "lr": self.lr,
                      "weight_decay": 1e-4, "scheduler": "exponential", "gamma": self.gamma, "seed": seed},
            "stacking": {"holdout_fraction": 0.1},
        }, "benchmarks/noisy_labels.py")


# A smoke test of the whole pipeline (its models barely learn: the figures mean nothing).
QUICK = Config(samples_per_class=60, image_size=32, epochs=4, relabel_epoch=2, rates=(0.0, 0.3), seeds=(0, 1))


@dataclass(frozen=True)
class Variant:
    """A model of the comparison: recipe changes and the head whose test accuracy is reported."""

    key: str
    title: str
    head: str  # dcnn | scn | fused
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


MODELS = (
    # DCNN alone: no SCN loss, and no relabeling (an untrained SCN head's relabels would corrupt the targets).
    Variant("dcnn", "DCNN alone", "dcnn", {"train": {"scn_weight": 0.0}, "scn": {"relabel_epoch": 0}}),
    Variant("scn", "SCN alone", "scn", {"train": {"dcnn_weight": 0.0}}),
    Variant("fused", "fused", "fused"),
)
ABLATIONS = (
    Variant("no_rank", "fused, no rank regularization", "fused", {"scn": {"rank_weight": 0.0}}),
    Variant("no_relabel", "fused, no relabeling", "fused", {"scn": {"relabel_epoch": 0}}),
    Variant("relabel_all", "fused, relabel all samples", "fused", {"scn": {"relabel_scope": "all"}}),
    Variant("separate", "fused, separate backbones", "fused", {"model": {"shared_backbone": False}}),
)


def rewrite_training_labels(clean_csv: Path, out_csv: Path, train_labels: np.ndarray) -> None:
    """Copy a FER-2013 CSV with the labels of its Training rows (in file order) replaced; atomic."""
    i = 0
    with open(clean_csv, encoding="utf-8") as src, atomic_open(out_csv, "w") as dst:
        dst.write(src.readline())
        for line in src:
            if line.rstrip("\n").rsplit(",", 1)[-1].strip() == "Training":
                line = f"{int(train_labels[i])},{line.split(',', 1)[1]}"
                i += 1
            dst.write(line)
    if i != len(train_labels):
        raise RuntimeError(f"{clean_csv}: {i} Training rows, expected {len(train_labels)}")


def make_data(cfg: Config, work: Path) -> tuple[Path, dict[tuple[float, int], Path], dict[str, Any]]:
    """The clean synthetic CSV and one CSV per (noise rate, seed) with flipped training labels."""
    clean = work / "data" / "clean.csv"
    if not clean.exists():
        write_fer2013_csv(clean, SyntheticSpec(samples_per_class=cfg.samples_per_class, seed=cfg.data_seed),
                          cfg.fractions)
    train = load_fer2013_csv(clean).splits["train"]
    noisy_paths, flips = {}, {}
    for rate in cfg.rates:
        for seed in cfg.seeds:
            path = work / "data" / f"noise{int(round(rate * 100)):02d}_seed{seed}.csv"
            noisy, record = inject_symmetric_noise(train, rate, seed, 7)
            if not path.exists():
                rewrite_training_labels(clean, path, noisy.labels)
                if not np.array_equal(load_fer2013_csv(path).splits["train"].labels, noisy.labels):
                    raise RuntimeError(f"{path}: training labels do not round-trip")
            noisy_paths[(rate, seed)] = path
            flips[f"{rate}/{seed}"] = int(record.flipped.size)
    return clean, noisy_paths, {"train": len(train), "flipped": flips}


def code_digest() -> str:
    """Hash of the code a run's numbers depend on, so a cached run from older code is never reused."""
    root = Path(__file__).resolve().parents[1] / "fuse_export"
    files = [*sorted((root / "audit").glob("*.py")), root / "contract.py", *sorted((root / "data").glob("*.py")),
             *sorted((root / "model").glob("*.py")), *sorted((root / "training").glob("*.py"))]
    here = "".join(inspect.getsource(f) for f in (make_data, rewrite_training_labels, measure_run))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files) + here.encode()).hexdigest()[:16]


def run_key(cfg: Config, variant: Variant, rate: float, seed: int) -> str:
    blob = json.dumps([asdict(replace(cfg, rates=(), seeds=())), variant.changes, variant.head, rate, seed,
                       code_digest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def relabel_record(given: np.ndarray, truth: np.ndarray, final: np.ndarray) -> dict[str, Any]:
    """SCN's relabeling against the truth: flips made, restored (recall), right among changes (precision), and the
    share of clean labels it changed."""
    flipped, changed = given != truth, final != given
    return {
        "flipped": int(flipped.sum()), "changed": int(changed.sum()),
        "restored": int((flipped & (final == truth)).sum()),
        "recall": float((flipped & (final == truth)).sum() / flipped.sum()) if flipped.any() else None,
        "precision": float((final[changed] == truth[changed]).mean()) if changed.any() else None,
        "clean_changed": float((changed & ~flipped).sum() / max((~flipped).sum(), 1)),
    }


def measure_run(cfg: Config, variant: Variant, rate: float, seed: int, clean_csv: Path, noisy_csv: Path,
                run_dir: Path) -> dict[str, Any]:
    """Train one model and measure it at its final epoch."""
    recipe = cfg.recipe(seed).replace(**variant.changes) if variant.changes else cfg.recipe(seed)
    start = time.perf_counter()
    result = run_training(recipe, str(noisy_csv), run_dir, device="cpu", progress=False)
    train_s = time.perf_counter() - start
    loaded = load_model(result.last)  # the final epoch: same budget for all, no selection on val or test
    model, pre = loaded.model, loaded.preprocessing
    tf = eval_transform(pre)
    clean_ds, noisy_ds = load_fer2013_csv(clean_csv), load_fer2013_csv(noisy_csv)
    test = clean_ds.splits["test"]
    test_acc = head_accuracies(model, predict_heads(model, eval_batches(test, tf, 128), torch.device("cpu")),
                               torch.from_numpy(test.labels))
    row: dict[str, Any] = {"model": variant.key, "rate": rate, "seed": seed, "head": variant.head,
                           "test_acc": test_acc[variant.head], "test_acc_heads": test_acc,
                           "val_acc_final": {h: result.history[-1][f"val_acc_{h}"] for h in ("dcnn", "scn", "fused")},
                           "train_seconds": round(train_s, 1), "epochs": recipe.train.epochs}
    if variant.head == "dcnn":
        return row
    # Relabeling against the truth, on the samples stage 1 trained on (the holdout is reproducible).
    noisy_train, clean_train = noisy_ds.splits["train"], clean_ds.splits["train"]
    train_idx, _ = holdout_split(noisy_train, recipe.stacking.holdout_fraction, recipe.train.seed)
    truth, given = clean_train.labels[train_idx], noisy_train.labels[train_idx]
    final = result.labels.numpy() if result.labels is not None else given
    flipped = given != truth
    row["relabel"] = relabel_record(given, truth, final)
    full = predict_heads(model, eval_batches(noisy_train, tf, 128), torch.device("cpu"))
    alpha = full.alpha.reshape(-1).numpy()[train_idx]
    row["alpha_auc"] = roc_auc(-alpha, flipped) if flipped.any() else None
    # The label audit over the whole training split as a user would run it (`audit-labels --split train`).
    with torch.no_grad():
        audit = audit_heads(full, model.stack(full), noisy_train.labels, pre.class_names, margin2=cfg.margin2)
    wrong = noisy_train.labels != clean_train.labels
    k = int(wrong.sum())

    def p_at_k(score: np.ndarray) -> float | None:
        return precision_at_k(np.argsort(-score, kind="stable"), wrong, k) if k else None

    row["audit"] = {
        "k": k, "precision_at_k": precision_at_k(audit.order, wrong, k) if k else None,
        # The alternatives the score was chosen against (on training labels; see fuse_export/audit.py).
        "scn_margin_only": p_at_k(audit.scn_margin), "alpha_only": p_at_k(-audit.alpha),
        "rank_mean_margin_alpha": p_at_k(percentile_rank(audit.scn_margin) + percentile_rank(-audit.alpha)),
        "scn_rule_flagged": int(audit.scn_rule.sum()),
        "scn_rule_precision": float(wrong[audit.scn_rule].mean()) if audit.scn_rule.any() else None,
    }
    return row


def cached_run(cfg: Config, variant: Variant, rate: float, seed: int, clean: Path, noisy: Path, run_dir: Path,
               threads: int, keep_checkpoints: bool = False) -> dict[str, Any]:
    """One run in a worker process (its training log goes to run_dir/train.log); reuses a cached result."""
    torch.set_num_threads(threads)
    cache, key = run_dir / "measured.json", run_key(cfg, variant, rate, seed)
    if cache.exists() and json.loads(cache.read_text()).get("key") == key:
        return json.loads(cache.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        row = measure_run(cfg, variant, rate, seed, clean, noisy, run_dir) | {"key": key}
    write_json(cache, row)
    if not keep_checkpoints:  # ~185 MB a run (weights + Adam state); the measurement is all the report needs
        for ckpt in run_dir.glob("*.pt"):
            ckpt.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny data, 2 rates, 2 seeds")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--work", type=Path, default=Path("runs/noisy_labels"), help="data and run cache")
    ap.add_argument("--name", default="", help="result file stem (default noisy_labels, or noisy_labels_quick)")
    # Parallel single-threaded runs use 2 cores better than one run on 2 threads (small images scale poorly
    # across threads), and far better on a shared machine, where spinning OpenMP threads stall each other.
    ap.add_argument("--jobs", type=int, default=2, help="training runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each run's best.pt/last.pt (~185 MB)")
    ap.add_argument("--report-split", choices=("test", "val"), default="test",
                    help="val: report validation accuracy instead of test (for choosing settings)")
    ap.add_argument("--models", default="", help="only these models (comma-separated keys: dcnn,scn,fused)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Config field (JSON value), e.g. --set margin1=0.15 --set 'seeds=[0]'")
    ap.add_argument("--from-json", type=Path, help="only re-render the report from a results JSON of this script")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        c = doc["config"]
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
        keys = {r["model"] for r in doc["runs"]}
        write_report(args.out, args.name or args.from_json.stem, cfg, tuple(v for v in MODELS if v.key in keys),
                     ABLATIONS, doc["runs"], doc["data"], doc["latency_ms"], doc["command"], doc["wall_seconds"],
                     doc.get("accuracy_split", "test"))
        return
    cfg = QUICK if args.quick else Config()
    for item in args.set:
        name, _, value = item.partition("=")
        v = json.loads(value)
        cfg = replace(cfg, **{name: tuple(v) if isinstance(v, list) else v})
    name = args.name or ("noisy_labels_quick" if args.quick else "noisy_labels")
    work = args.work / name
    clean, noisy, data_info = make_data(cfg, work)
    models = [v for v in MODELS if not args.models or v.key in args.models.split(",")]
    plan = [(v, r, s) for r in cfg.rates for v in models for s in cfg.seeds]
    if not args.no_ablations:
        plan += [(v, max(cfg.rates), s) for v in ABLATIONS for s in cfg.seeds]
    jobs = [(cfg, v, r, s, clean, noisy[(r, s)], work / "runs" / f"{v.key}_noise{int(round(r * 100)):02d}_seed{s}",
             args.threads, args.keep_checkpoints) for v, r, s in plan]
    # Longest first (two backbones cost twice), so parallel workers finish together.
    jobs.sort(key=lambda j: -int(not j[1].changes.get("model", {}).get("shared_backbone", True)))
    rows, started = [], time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(cached_run, *j) for j in jobs]
        for i, fut in enumerate(as_completed(futures), 1):
            row = fut.result()
            rows.append(row)
            extra = (f"  restored {row['relabel']['recall']}  clean changed {row['relabel']['clean_changed']:.3f}  "
                     f"alpha AUC {row['alpha_auc']}  audit {row['audit']}") if "relabel" in row else ""
            # Progress shows validation accuracy only: settings are chosen on val, never on test.
            val = row["val_acc_final"][row["head"]]
            print(f"[{i}/{len(jobs)} {time.perf_counter() - started:.0f}s] {row['model']} noise {row['rate']:.0%} "
                  f"seed {row['seed']}: val acc {val:.3f}  {row['train_seconds']}s{extra}", flush=True)
    if args.report_split == "val":
        # Tuning runs: every accuracy in the report is the clean validation split's, never the test split's.
        rows = [r | {"test_acc": r["val_acc_final"][r["head"]], "test_acc_heads": r["val_acc_final"]} for r in rows]
    latency = latency_ms(cfg.image_size, args.threads) if not args.no_ablations else {}
    command = " ".join(["python benchmarks/noisy_labels.py", *sys.argv[1:]])
    write_report(args.out, name, cfg, tuple(models), ABLATIONS, rows, data_info, latency, command,
                 time.perf_counter() - started, args.report_split)


if __name__ == "__main__":
    main()
