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
and trunk file (its digest is part of the key). The pretraining is not bit-reproducible across CPU models, so
another machine's trunk file differs: a unit (a setting and seed's paired runs, or its fold models) finished
under an earlier file is reused whole, one only begun there runs again on the current file (choose()), and
pairs are only ever formed within one file. --max-minutes (default 60) stops submitting new jobs after a
while; the grid as a whole is several hours on 2 cores (a 64 px run takes about 3.6 min on 2 threads), so it is
run in chunks, the issue's targets first (see plan()). A machine with N cores runs N single-threaded jobs at once.
Choices of the audit's defaults are made on the tuning data set (data seed 1), never on the reported runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_log import append_rows, read_rows  # noqa: E402
from trunk_noise_jobs import (  # noqa: E402,F401  (the study's configuration and jobs; re-exported for tests)
    CROSSFIT_SETTINGS, DEFAULT_TRUNK, NARROW_SEEDS, QUICK, ROOT, SCRATCH_SETTINGS, TUNING, Config, fold_job,
    make_data, run_job, train_job)
from trunk_noise_report import write_report  # noqa: E402

from fuse_export.fileio import atomic_path, sha256_file  # noqa: E402


def trunk_weights(trunk: str, pretrained: Path) -> str:
    return "" if trunk == "scratch" else str(pretrained)


def weights_digest(weights: str) -> str:
    """The trunk file's content hash: a retrained trunk under the same name invalidates the cached runs."""
    return sha256_file(weights)[:16] if weights else ""


# Bumped when a change to the code would change the numbers of finished cells: the committed log's rows are
# reused across sessions and machines as long as it, the configuration and the trunk file are the same (each row
# also records the digest of the code that made it, `code`).
STUDY_VERSION = 2


# Fields that only say which jobs to run: left out of the key, so adding one keeps every logged job's key.
PLAN_ONLY = ("extra_seeds", "extra_settings")


def job_key(cfg: Config, *parts: Any) -> str:
    base = asdict(replace(cfg, settings=(), trunks=(), models=(), seeds=(), crossfit_settings=(), crossfit_trunks=()))
    for name in PLAN_ONLY:
        base.pop(name)
    return hashlib.sha256(json.dumps([STUDY_VERSION, base, list(map(str, parts))], sort_keys=True).encode()).hexdigest()[:16]


def trunk_tag(trunk: str, digest: str) -> str:
    """A trunk's name in the stored arrays' file names: rows of two different trunk files never mix."""
    return f"{trunk}-{digest[:8]}" if digest else trunk


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
    digest: str = ""  # the trunk file's digest ("" from scratch)

    @property
    def unit(self) -> tuple[Any, ...]:
        """The jobs that must share one trunk file: a setting and seed's full runs (the paired models), or its
        fold models (one cross-fit)."""
        return self.trunk, self.setting, self.seed, self.fold is None

    @property
    def array_name(self) -> str:
        """Where its arrays are kept under the store's folder (committed with the log)."""
        if self.fold is not None:
            return f"folds/{self.tag}_{self.setting}_seed{self.seed}_fold{self.fold}.npz"
        return f"{self.tag}_{self.setting}_fused_seed{self.seed}.npz"


def plan(cfg: Config, work: Path, clean: Path, noisy: dict[tuple[str, int], Path], pretrained: Path,
         threads: int, scratch: tuple[str, ...] | None = None,
         crossfit: tuple[str, ...] | None = None,
         narrow_seeds: tuple[int, ...] | None = None, digests: dict[str, str] | None = None) -> list[Job]:
    """Every job, in the order they run: the pretrained trunk first; its first two settings' full runs (the
    issue's targets), the added seeds, the first two settings' cross-fits, then the other settings; `scratch` /
    `crossfit` narrow the settings run from scratch / cross-fitted, `narrow_seeds` their seeds (CPU time);
    `digests` names another file of a trunk by its digest (the keys of jobs an earlier trunk file ran)."""
    scratch = cfg.settings if scratch is None else scratch
    crossfit = cfg.crossfit_settings if crossfit is None else crossfit
    narrow_seeds = cfg.seeds if narrow_seeds is None else narrow_seeds
    jobs = []
    for trunk in cfg.trunks:
        weights = trunk_weights(trunk, pretrained)
        digest = (digests or {}).get(trunk) or weights_digest(weights)
        tag = trunk_tag(trunk, digest)
        for setting in cfg.settings:
            if trunk == "scratch" and setting not in scratch:
                continue
            extra = cfg.extra_seeds if trunk == "identity" and setting in cfg.extra_settings else ()
            for seed in cfg.seeds + extra:
                if trunk == "scratch" and seed not in narrow_seeds:
                    continue
                for model in cfg.models:
                    run = work / "runs" / f"{tag}_{setting}_{model}_seed{seed}"
                    key = job_key(cfg, "train", trunk, setting, model, seed, digest)
                    jobs.append(Job(train_job, key, run, (cfg, trunk, setting, model, seed, clean,
                                                          noisy[(setting, seed)], run, weights), trunk, tag, setting,
                                    seed, None, digest))
                if (trunk in cfg.crossfit_trunks and setting in crossfit and seed in narrow_seeds and seed in cfg.seeds
                        and "fused" in cfg.models):
                    for k in range(cfg.folds):
                        run = work / "folds" / f"{tag}_{setting}_seed{seed}_fold{k}"
                        key = job_key(cfg, "fold", trunk, setting, seed, k, digest)
                        jobs.append(Job(fold_job, key, run, (cfg, trunk, setting, seed, k, noisy[(setting, seed)],
                                                             run, weights), trunk, tag, setting, seed, k, digest))
    first = set(cfg.settings[:2])

    def order(j: Job) -> tuple[Any, ...]:
        # The design's runs of the first two settings, the added seeds, the cross-fits, then everything else.
        stage = 1 if j.seed not in cfg.seeds else (0 if j.fold is None else 2) if j.setting in first else 3
        return (cfg.trunks.index(j.trunk), stage, cfg.settings.index(j.setting), j.fold is not None, j.seed)

    return sorted(jobs, key=order)


def logged_digests(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every trunk file the log's rows were made with, per trunk, oldest first."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r.get("trunk_digest") and r["trunk_digest"] not in out.setdefault(r["trunk"], []):
            out[r["trunk"]].append(r["trunk_digest"])
    return out


def choose(current: list[Job], earlier: list[list[Job]], done: dict[str, dict[str, Any]]) -> list[Job]:
    """Per unit (Job.unit), the jobs of the current trunk file, unless the unit is unfinished there and complete
    under an earlier file of the same recipe (plan() with `digests`, job for job), whose rows are then reused.

    The identity pretraining is not bit-reproducible across CPU models (a Xeon's and an EPYC's trunks differ from
    the first epoch), so a session on another machine gets another file; a unit's jobs always share one file, so
    the paired differences are never formed across trunks."""
    units: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(current):
        units.setdefault(job.unit, []).append(i)
    chosen = list(current)
    for idx in units.values():
        if all(current[i].key in done for i in idx):
            continue
        for alt in earlier:
            if all(alt[i].key in done for i in idx):
                for i in idx:
                    chosen[i] = alt[i]
                break
    return chosen


def store_trunk_info(job: Job, arrays: Path, pretrained: Path) -> None:
    """Keep what the trunk file a job ran on was (its pretraining record) beside the arrays, once per file."""
    dest = arrays / "trunks" / f"{job.tag}.json"
    meta = pretrained.with_suffix(".json")
    if not job.digest or dest.exists() or not meta.exists():
        return
    info = json.loads(meta.read_text()) | {"sha256_16": job.digest, "cpu": cpu_model()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")


def trunk_infos(rows: list[dict[str, Any]], arrays: Path) -> dict[str, dict[str, Any]]:
    """The pretraining record of each trunk file the reported rows ran on, by tag."""
    tags = sorted({r["tag"] for r in rows if r.get("trunk_digest")})
    return {t: json.loads((arrays / "trunks" / f"{t}.json").read_text()) for t in tags
            if (arrays / "trunks" / f"{t}.json").exists()}


def store_row(job: Job, row: dict[str, Any], log: Path, arrays: Path) -> dict[str, Any]:
    """Keep a finished job: its arrays under `arrays` (float32 probabilities), then its row in the log (returned)."""
    src = job.run / ("fold.npz" if job.fold is not None else "audit.npz")
    if src.exists():
        data = dict(np.load(src))
        data = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in data.items()}
        dest = arrays / job.array_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append .npz to a name
            np.savez_compressed(fh, **data)
        row = row | {"arrays": job.array_name}
    return append_rows(log, [row | {"tag": job.tag, "trunk_digest": job.digest, "cpu": cpu_model()}])[0]


def fold_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    """The fold models of each cross-fit, by "trunk/setting/seed"."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        if j.fold is not None:
            groups.setdefault(f"{j.trunk}/{j.setting}/{j.seed}", []).append(j)
    return groups


def collect_crossfit(cfg: Config, jobs: list[Job], done: dict[str, dict[str, Any]], arrays: Path) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities per (trunk, setting, seed), where every fold has finished."""
    out = {}
    for name, parts in fold_groups(jobs).items():
        if not all(j.key in done and "arrays" in done[j.key] for j in parts):
            continue
        loaded = [np.load(arrays / done[j.key]["arrays"]) for j in parts]
        n = sum(len(d["rows"]) for d in loaded)
        probs = np.zeros((n, loaded[0]["probs"].shape[1]))
        for d in loaded:
            probs[d["rows"]] = d["probs"]
        out[name] = probs
    return out


def crossfit_files(jobs: list[Job], done: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The trunk file (tag) of each finished cross-fit, by collect_crossfit's name."""
    return {name: parts[0].tag for name, parts in fold_groups(jobs).items() if all(j.key in done for j in parts)}


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
    narrowing = (SCRATCH_SETTINGS, CROSSFIT_SETTINGS, NARROW_SEEDS) if narrow else (None, None, None)
    current = plan(cfg, work, clean, noisy, args.pretrained, args.threads, *narrowing)
    done = {r["key"]: r for r in read_rows(log)}
    now = {j.trunk: j.digest for j in current}
    earlier = [plan(cfg, work, clean, noisy, args.pretrained, args.threads, *narrowing, digests={trunk: d})
               for trunk, ds in logged_digests(list(done.values())).items() for d in ds if d != now.get(trunk)]
    jobs = choose(current, earlier, done)
    started = time.perf_counter()
    if not args.report_only:
        pending = [j for j in jobs if j.key not in done]
        print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs already in {log}; running the rest "
              f"(--max-minutes {args.max_minutes:g}; trunk files {now})", flush=True)
        finished_count = len(jobs) - len(pending)
        begun = {j.unit for j in jobs if j.key in done}
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Any, Job] = {}
            while pending or running:
                while len(running) < args.jobs:
                    # Past --max-minutes only the units already begun are finished: a unit's jobs share a trunk
                    # file, and the next session's machine may pretrain another.
                    over = bool(args.max_minutes) and time.perf_counter() - started > 60 * args.max_minutes
                    job = next((j for j in pending if not over or j.unit in begun), None)
                    if job is None:
                        break
                    pending.remove(job)
                    begun.add(job.unit)
                    running[pool.submit(run_job, job.fn, job.key, job.run, args.threads, *job.args)] = job
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = running.pop(fut)
                    row = fut.result()
                    done[job.key] = store_row(job, row, log, arrays)
                    store_trunk_info(job, arrays, args.pretrained)
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
                 time.perf_counter() - started,
                 trunk_infos([done[j.key] for j in jobs if j.key in done], arrays), cleanlab,
                 {"planned": len(jobs), "finished": sum(j.key in done for j in jobs), "log": str(log.relative_to(ROOT))
                  if log.is_relative_to(ROOT) else str(log), "crossfit_files": crossfit_files(jobs, done)})


if __name__ == "__main__":
    main()
