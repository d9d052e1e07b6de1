"""Evidence on a pretrained trunk: the noisy-label experiment from scratch and on an identity-pretrained trunk,
and the label audit's scores against the truth (issue 14).

The synthetic faces with symmetric noise (0/10/20/30% of the training labels flipped to another class) and one
asymmetric setting (30% of fear, surprise, sad, neutral, angry and disgust carry their confusable partner's
label), DCNN alone / SCN alone / fused, several seeds, two trunks: from scratch, and the face-identity stand-in
for MS-Celeb-1M (benchmarks/pretrain_identity.py). Every model trains with the same recipe and budget; the
test accuracy is the final epoch's (no selection on val or test). For the fused runs the label audit is
evaluated against the truth: AUM from the training dynamics saved with the run, cross-fitted probabilities (K
fold models), the in-sample probabilities, with and without per-class thresholds; and `audit_checkpoint` with
its defaults, as `fuse-export audit-labels CHECKPOINT --data PATH` runs it.

    python benchmarks/pretrain_identity.py --image-size 64 --epochs 6 \\
        --out runs/pretrain/identity_resnet18.pth                     # the trunk (about 10 min on 2 cores)
    python benchmarks/trunk_noise.py --tuning                          # the tuning data set (other faces)
    setsid nohup python benchmarks/trunk_noise.py > runs/trunk_noise.log 2>&1 &   # one 60-minute chunk
    python benchmarks/trunk_noise.py --report-only                     # re-render from the log
Each finished job is appended at once to benchmarks/results/NAME.jsonl, its arrays (labels, probabilities, AUM;
a fold model's out-of-fold probabilities) to benchmarks/results/NAME/, both committed: a rerun, in this session or
the next, on this machine or another, skips every job the log holds for the same configuration, STUDY_VERSION
and trunk file (its digest is part of the key: a re-pretrained trunk that differs starts its own rows, and
pairs are only ever formed within one trunk). --max-minutes (default 60) stops submitting new jobs after a
while; the grid as a whole is several hours on 2 cores (a 64 px run takes about 3.6 min on 2 threads), so it is
run in chunks, the issue's targets first (see plan()). A machine with N cores runs N single-threaded jobs at once.
Choices of the audit's defaults are made on the tuning data set (data seed 1), never on the reported runs.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noisy_labels import MODELS, Variant, relabel_record, rewrite_training_labels  # noqa: E402
from study_log import append_rows, read_rows  # noqa: E402
from trunk_noise_report import write_report  # noqa: E402

from fuse_export.audit import AuditOptions, audit_checkpoint, precision_at_k, recall_at_k, roc_auc  # noqa: E402
from fuse_export.audit.crossfit import fold_assignment, fold_probabilities  # noqa: E402
from fuse_export.data.fer2013 import load_fer2013_csv  # noqa: E402
from fuse_export.data.noise import inject_asymmetric_noise, inject_symmetric_noise  # noqa: E402
from fuse_export.data.synthetic import SyntheticSpec  # noqa: E402
from fuse_export.data.synthetic_csv import write_fer2013_csv  # noqa: E402
from fuse_export.data.torchdata import eval_batches  # noqa: E402
from fuse_export.data.transforms import eval_transform  # noqa: E402
from fuse_export.fileio import atomic_path, sha256_file  # noqa: E402
from fuse_export.training.build import holdout_split  # noqa: E402
from fuse_export.training.checkpoint import load_model  # noqa: E402
from fuse_export.training.dynamics import TrainingDynamics  # noqa: E402
from fuse_export.training.loop import head_accuracies, predict_heads  # noqa: E402
from fuse_export.training.recipe import Recipe, recipe_from_dict  # noqa: E402
from fuse_export.training.trainer import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRUNK = ROOT / "runs" / "pretrain" / "identity_resnet18.pth"


@dataclass(frozen=True)
class Config:
    """Everything that decides the numbers (hashed into each run's cache key)."""

    samples_per_class: int = 600  # the quickstart's faces: at 32 px / 300 per class the audit stalled at 0.61-0.72
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    image_size: int = 64
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    gamma: float = 0.85
    margin1: float = 0.07
    margin2: float = 0.2
    relabel_fraction: float = 0.5  # relabeling starts at this share of the epochs
    # In the order they are run: the targets first (30%, then 20% noise, on the pretrained trunk).
    settings: tuple[str, ...] = ("sym30", "sym20", "sym0", "asym30", "sym10")
    trunks: tuple[str, ...] = ("identity", "scratch")
    models: tuple[str, ...] = ("dcnn", "scn", "fused")
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    folds: int = 4
    fold_epochs: int = 8
    crossfit_settings: tuple[str, ...] = ("sym30", "sym20", "asym30")
    crossfit_trunks: tuple[str, ...] = ("identity",)

    @property
    def relabel_epoch(self) -> int:
        return max(2, int(round(self.relabel_fraction * self.epochs)) + 1)

    def recipe(self, seed: int, pretrained: str) -> Recipe:
        """SCN's settings (Adam 1e-3, beta 0.7, delta1 0.07 at batch 64, delta2 0.2), relabel from mid-run."""
        return recipe_from_dict({
            "name": "trunk-noise",
            "data": {"format": "fer2013-csv", "image_size": self.image_size},
            "model": {"dcnn_hidden": [256], "dcnn_dropout": 0.3, "pretrained": pretrained},
            "scn": {"beta": 0.7, "margin1": self.margin1, "margin2": self.margin2,
                    "relabel_epoch": self.relabel_epoch, "relabel_scope": "low", "rank_weight": 1.0},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "optimizer": "adam", "lr": self.lr,
                      "weight_decay": 1e-4, "scheduler": "exponential", "gamma": self.gamma, "seed": seed},
            "stacking": {"holdout_fraction": 0.1},
        }, "benchmarks/trunk_noise.py")


# The tuning data set: other faces (data seed 1), one noise draw, the pretrained trunk, the fused model.
TUNING = dict(data_seed=1, seeds=(100,), settings=("sym30", "sym20"), trunks=("identity",),
              crossfit_settings=("sym30",))
QUICK = dict(samples_per_class=30, epochs=3, folds=2, fold_epochs=2, settings=("sym0", "sym30", "asym30"),
             seeds=(0, 1), crossfit_settings=("sym30",))
# What the reported experiment runs from scratch and cross-fits (CPU time: a run takes ~3 min on one core, so the
# from-scratch reference skips 10% and the asymmetric setting, and the cross-fit the asymmetric setting).
SCRATCH_SETTINGS = ("sym0", "sym20", "sym30")
CROSSFIT_SETTINGS = ("sym20", "sym30")
NARROW_SEEDS = (0, 1)  # the from-scratch reference and the cross-fit run on the first two noise draws
VARIANTS = {v.key: v for v in MODELS}


def parse_setting(name: str) -> tuple[str, float]:
    """'sym30' -> ('symmetric', 0.3); 'asym30' -> ('asymmetric', 0.3)."""
    kind = "asymmetric" if name.startswith("asym") else "symmetric"
    return kind, int(name.removeprefix("asym").removeprefix("sym")) / 100.0


def make_data(cfg: Config, work: Path) -> tuple[Path, dict[tuple[str, int], Path]]:
    """The clean synthetic CSV and one CSV per (setting, seed) with noisy training labels."""
    clean = work / "data" / f"clean_d{cfg.data_seed}.csv"
    if not clean.exists():
        write_fer2013_csv(clean, SyntheticSpec(samples_per_class=cfg.samples_per_class, seed=cfg.data_seed),
                          cfg.fractions)
    ds = load_fer2013_csv(clean)
    train = ds.splits["train"]
    paths = {}
    for setting in cfg.settings:
        kind, rate = parse_setting(setting)
        for seed in cfg.seeds:
            path = work / "data" / f"{setting}_d{cfg.data_seed}_seed{seed}.csv"
            if kind == "asymmetric":
                noisy, _ = inject_asymmetric_noise(train, rate, seed, ds.class_names)
            else:
                noisy, _ = inject_symmetric_noise(train, rate, seed, len(ds.class_names))
            if not path.exists():
                rewrite_training_labels(clean, path, noisy.labels)
                if not np.array_equal(load_fer2013_csv(path).splits["train"].labels, noisy.labels):
                    raise RuntimeError(f"{path}: training labels do not round-trip")
            paths[(setting, seed)] = path
    return clean, paths


def code_digest() -> str:
    """Hash of the code a run's numbers depend on, so a cached run from older code is never reused."""
    pkg = ROOT / "fuse_export"
    files = [pkg / "contract.py", pkg / "preprocess.py", *sorted((pkg / "audit").glob("*.py")),
             *sorted((pkg / "data").glob("*.py")), *sorted((pkg / "model").glob("*.py")),
             *sorted((pkg / "training").glob("*.py"))]
    here = "".join(inspect.getsource(f) for f in (make_data, train_job, fold_job, Config))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files) + here.encode()).hexdigest()[:16]


def trunk_weights(trunk: str, pretrained: Path) -> str:
    return "" if trunk == "scratch" else str(pretrained)


def weights_digest(weights: str) -> str:
    """The trunk file's content hash: a retrained trunk under the same name invalidates the cached runs."""
    return sha256_file(weights)[:16] if weights else ""


# Bumped when a change to the code would change the numbers of finished cells: the committed log's rows are
# reused across sessions and machines as long as it, the configuration and the trunk file are the same (each row
# also records the digest of the code that made it, `code`).
STUDY_VERSION = 2


def job_key(cfg: Config, *parts: Any) -> str:
    base = asdict(replace(cfg, settings=(), trunks=(), models=(), seeds=(), crossfit_settings=(), crossfit_trunks=()))
    return hashlib.sha256(json.dumps([STUDY_VERSION, base, list(map(str, parts))], sort_keys=True).encode()).hexdigest()[:16]


def trunk_tag(trunk: str, digest: str) -> str:
    """A trunk's name in the stored arrays' file names: rows of two different trunk files never mix."""
    return f"{trunk}-{digest[:8]}" if digest else trunk


def train_job(cfg: Config, trunk: str, setting: str, model: str, seed: int, clean: Path, noisy: Path, run: Path,
              pretrained: str) -> dict[str, Any]:
    """Train one model; measure accuracy, relabeling and (fused) the label audit against the truth."""
    variant: Variant = VARIANTS[model]
    recipe = cfg.recipe(seed, pretrained)
    recipe = recipe.replace(**variant.changes) if variant.changes else recipe
    start = time.perf_counter()
    result = run_training(recipe, str(noisy), run, device="cpu", progress=False)
    train_s = time.perf_counter() - start
    final = load_model(result.last)  # the final epoch: same budget for all, no selection on val or test
    tf = eval_transform(final.preprocessing)
    clean_ds, noisy_ds = load_fer2013_csv(clean), load_fer2013_csv(noisy)
    test = clean_ds.splits["test"]
    cpu = torch.device("cpu")
    acc = head_accuracies(final.model, predict_heads(final.model, eval_batches(test, tf, 128), cpu),
                          torch.from_numpy(test.labels))
    row: dict[str, Any] = {"trunk": trunk, "setting": setting, "model": model, "seed": seed, "head": variant.head,
                           "test_acc": acc[variant.head], "test_acc_heads": acc,
                           "val_acc_final": {h: result.history[-1][f"val_acc_{h}"] for h in ("dcnn", "scn", "fused")},
                           "train_seconds": round(train_s, 1), "epochs": recipe.train.epochs}
    if variant.head == "dcnn":
        return row
    noisy_train, clean_train = noisy_ds.splits["train"], clean_ds.splits["train"]
    train_idx, _ = holdout_split(noisy_train, recipe.stacking.holdout_fraction, recipe.train.seed)
    truth, given = clean_train.labels[train_idx], noisy_train.labels[train_idx]
    labels = result.labels.numpy() if result.labels is not None else given
    flipped = given != truth
    row["relabel"] = relabel_record(given, truth, labels)
    full = predict_heads(final.model, eval_batches(noisy_train, tf, 128), cpu)
    wrong_all = noisy_train.labels != clean_train.labels
    row["alpha_auc"] = roc_auc(-full.alpha.reshape(-1).numpy()[train_idx], flipped) if flipped.any() else None
    if variant.head != "fused":
        return row
    # Everything the audit's scores need, against the truth (analysed in the report, for every score variant),
    # from the checkpoint a user audits (best.pt): its model and the training dynamics saved with it.
    best = load_model(result.best)
    with torch.no_grad():
        probs = torch.softmax(best.model.stack(predict_heads(best.model, eval_batches(noisy_train, tf, 128), cpu)),
                              1).numpy()
    dyn = TrainingDynamics.from_state(best.state["training_dynamics"], result.best)
    np.savez_compressed(run / "audit.npz", given=noisy_train.labels, truth=clean_train.labels, probs=probs,
                        aum=dyn.aum(), trained=dyn.trained.numpy())
    # ... and the audit exactly as `fuse-export audit-labels CHECKPOINT --data PATH` runs it (its defaults).
    k = int(wrong_all.sum())
    if k:
        audit = audit_checkpoint(result.best, noisy, AuditOptions(device="cpu", progress=False))
        row["audit_default"] = {"method": audit.method, "k": k,
                                "precision_at_k": precision_at_k(audit.order, wrong_all, k),
                                "recall_at_2k": recall_at_k(audit.order, wrong_all, 2 * k)}
    return row


def fold_job(cfg: Config, trunk: str, setting: str, seed: int, k: int, noisy: Path, run: Path,
             pretrained: str) -> dict[str, Any]:
    """One fold model of the cross-fit (the fused recipe, capped epochs): its out-of-fold probabilities."""
    ds = load_fer2013_csv(noisy)
    split = ds.splits["train"]
    recipe = cfg.recipe(seed, pretrained).replace(train={"epochs": cfg.fold_epochs})
    fold = fold_assignment(split.labels, cfg.folds, seed=0)
    from fuse_export.contract import Preprocessing

    pre = Preprocessing(image_size=cfg.image_size, class_names=ds.class_names, color_mode=ds.color_mode)
    probs = fold_probabilities(recipe, noisy, split, pre, fold, k, run, progress=False)
    np.savez_compressed(run / "fold.npz", rows=np.flatnonzero(fold == k), probs=probs)
    return {"trunk": trunk, "setting": setting, "seed": seed, "fold": k}


def run_job(fn: Any, key: str, run: Path, threads: int, *args: Any) -> dict[str, Any]:
    """One job in a worker process (its log in run/train.log), from a fresh folder; returns its row."""
    import contextlib

    torch.set_num_threads(threads)
    if run.exists():  # a run cut short (chunk stopped, machine lost): start it afresh
        shutil.rmtree(run)
    run.mkdir(parents=True)
    started = time.time()
    load_before = round(os.getloadavg()[0], 2)
    with open(run / "train.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        row = fn(*args)
    for ckpt in run.glob("*.pt"):  # weights + Adam state; the row and the arrays are what is kept
        ckpt.unlink()
    return row | {"key": key, "code": code_digest(), "load_before": load_before,
                  "load_after": round(os.getloadavg()[0], 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                          time.gmtime()),
                  "job_seconds": round(time.time() - started, 1)}


@dataclass(frozen=True)
class Job:
    fn: Any
    key: str
    run: Path
    args: tuple[Any, ...]
    trunk: str
    tag: str  # trunk_tag(): the trunk and its file's digest
    setting: str
    seed: int
    fold: int | None = None  # a cross-fit fold model; None: a full run

    @property
    def array_name(self) -> str:
        """Where its arrays are kept under the store's folder (committed with the log)."""
        if self.fold is not None:
            return f"folds/{self.tag}_{self.setting}_seed{self.seed}_fold{self.fold}.npz"
        return f"{self.tag}_{self.setting}_fused_seed{self.seed}.npz"


def plan(cfg: Config, work: Path, clean: Path, noisy: dict[tuple[str, int], Path], pretrained: Path,
         threads: int, scratch: tuple[str, ...] | None = None,
         crossfit: tuple[str, ...] | None = None,
         narrow_seeds: tuple[int, ...] | None = None) -> list[Job]:
    """Every job, in the order they run: the pretrained trunk first; its first two settings' full runs (the
    issue's targets), then their cross-fits, then the other settings; `scratch` / `crossfit` narrow the settings
    run from scratch / cross-fitted, `narrow_seeds` their seeds (CPU time)."""
    scratch = cfg.settings if scratch is None else scratch
    crossfit = cfg.crossfit_settings if crossfit is None else crossfit
    narrow_seeds = cfg.seeds if narrow_seeds is None else narrow_seeds
    jobs = []
    for trunk in cfg.trunks:
        weights = trunk_weights(trunk, pretrained)
        digest = weights_digest(weights)
        tag = trunk_tag(trunk, digest)
        for setting in cfg.settings:
            if trunk == "scratch" and setting not in scratch:
                continue
            for seed in cfg.seeds:
                if trunk == "scratch" and seed not in narrow_seeds:
                    continue
                for model in cfg.models:
                    run = work / "runs" / f"{tag}_{setting}_{model}_seed{seed}"
                    key = job_key(cfg, "train", trunk, setting, model, seed, digest)
                    jobs.append(Job(train_job, key, run, (cfg, trunk, setting, model, seed, clean,
                                                          noisy[(setting, seed)], run, weights), trunk, tag, setting,
                                    seed))
                if trunk in cfg.crossfit_trunks and setting in crossfit and seed in narrow_seeds and "fused" in cfg.models:
                    for k in range(cfg.folds):
                        run = work / "folds" / f"{tag}_{setting}_seed{seed}_fold{k}"
                        key = job_key(cfg, "fold", trunk, setting, seed, k, digest)
                        jobs.append(Job(fold_job, key, run, (cfg, trunk, setting, seed, k, noisy[(setting, seed)],
                                                             run, weights), trunk, tag, setting, seed, k))
    first = set(cfg.settings[:2])

    def order(j: Job) -> tuple[Any, ...]:
        stage = (0 if j.fold is None else 1) if j.setting in first else 2
        return (cfg.trunks.index(j.trunk), stage, cfg.settings.index(j.setting), j.fold is not None, j.seed)

    return sorted(jobs, key=order)


def store_row(job: Job, row: dict[str, Any], log: Path, arrays: Path) -> None:
    """Keep a finished job: its arrays under `arrays` (float32 probabilities), then its row in the log."""
    src = job.run / ("fold.npz" if job.fold is not None else "audit.npz")
    if src.exists():
        data = dict(np.load(src))
        data = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in data.items()}
        dest = arrays / job.array_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append .npz to a name
            np.savez_compressed(fh, **data)
        row = row | {"arrays": job.array_name}
    append_rows(log, [row | {"tag": job.tag, "cpu": cpu_model()}])


def collect_crossfit(cfg: Config, jobs: list[Job], done: dict[str, dict[str, Any]], arrays: Path) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities per (trunk, setting, seed), where every fold has finished."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        if j.fold is not None:
            groups.setdefault(f"{j.trunk}/{j.setting}/{j.seed}", []).append(j)
    out = {}
    for name, parts in groups.items():
        if not all(j.key in done and "arrays" in done[j.key] for j in parts):
            continue
        loaded = [np.load(arrays / done[j.key]["arrays"]) for j in parts]
        n = sum(len(d["rows"]) for d in loaded)
        probs = np.zeros((n, loaded[0]["probs"].shape[1]))
        for d in loaded:
            probs[d["rows"]] = d["probs"]
        out[name] = probs
    return out


def cpu_model() -> str:
    from fuse_export.cpuinfo import cpu_features

    return cpu_features().summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuning", action="store_true", help="the tuning data set (other faces): choose defaults here")
    ap.add_argument("--quick", action="store_true", help="a smoke test of the whole pipeline (figures meaningless)")
    ap.add_argument("--pretrained", type=Path, default=DEFAULT_TRUNK, help="the identity-pretrained trunk")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="the report, the log of finished jobs (NAME.jsonl) and their arrays (NAME/)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "trunk_noise", help="data and run folders")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (single-threaded runs use 2 cores best)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=60,
                    help="stop submitting new runs after this long (0: no limit); a rerun continues")
    ap.add_argument("--report-only", action="store_true", help="only re-render the report from the log")
    ap.add_argument("--cleanlab", type=Path, default=None, help="a JSON of benchmarks/cleanlab_compare.py to merge")
    args = ap.parse_args()
    cfg = Config(**(TUNING if args.tuning else QUICK if args.quick else {}))
    name = "trunk_noise_tuning" if args.tuning else "trunk_noise_quick" if args.quick else "trunk_noise"
    work = args.work / name
    log, arrays = args.out / f"{name}.jsonl", args.out / name
    if "identity" in cfg.trunks and not args.pretrained.is_file():
        sys.exit(f"{args.pretrained}: no pretrained trunk; run benchmarks/pretrain_identity.py first")
    clean, noisy = make_data(cfg, work)
    narrow = not (args.tuning or args.quick)
    jobs = plan(cfg, work, clean, noisy, args.pretrained, args.threads, SCRATCH_SETTINGS if narrow else None,
                CROSSFIT_SETTINGS if narrow else None, NARROW_SEEDS if narrow else None)
    done = {r["key"]: r for r in read_rows(log)}
    started = time.perf_counter()
    if not args.report_only:
        pending = [j for j in jobs if j.key not in done]
        print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs already in {log}; running the rest "
              f"(--max-minutes {args.max_minutes:g})", flush=True)
        finished_count = len(jobs) - len(pending)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Any, Job] = {}
            while pending or running:
                while pending and len(running) < args.jobs and not (
                        args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes):
                    job = pending.pop(0)
                    running[pool.submit(run_job, job.fn, job.key, job.run, args.threads, *job.args)] = job
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = running.pop(fut)
                    row = fut.result()
                    store_row(job, row, log, arrays)
                    done[job.key] = read_rows(log, job.key)[-1]
                    finished_count += 1
                    what = f"{job.tag} {job.setting} {row.get('model', f'fold {job.fold}')} seed {job.seed}"
                    extra = f" test {row['test_acc']:.3f}" if "test_acc" in row else ""
                    print(f"[{finished_count}/{len(jobs)} {time.perf_counter() - started:.0f}s] {what}{extra}",
                          flush=True)
        if pending:
            print(f"stopped after --max-minutes {args.max_minutes:g}: {len(pending)} jobs not started; rerun to "
                  "continue", flush=True)
    rows = [done[j.key] | {"audit_npz": str(arrays / done[j.key]["arrays"]) if "arrays" in done[j.key] else None}
            for j in jobs if j.fold is None and j.key in done]
    cleanlab = json.loads(args.cleanlab.read_text()) if args.cleanlab else None
    command = " ".join(["python benchmarks/trunk_noise.py", *sys.argv[1:]])
    write_report(args.out, name, cfg, rows, collect_crossfit(cfg, jobs, done, arrays), command,
                 time.perf_counter() - started, json.loads(args.pretrained.with_suffix(".json").read_text())
                 if args.pretrained.with_suffix(".json").exists() else {}, cleanlab,
                 {"planned": len(jobs), "finished": sum(j.key in done for j in jobs), "log": str(log.relative_to(ROOT))
                  if log.is_relative_to(ROOT) else str(log)})


if __name__ == "__main__":
    main()
