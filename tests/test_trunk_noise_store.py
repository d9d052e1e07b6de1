"""benchmarks/trunk_noise.py's committed store: what a later session resumes from must come back exactly.

The study keeps each finished job as a line of a JSONL log and its arrays in a folder beside it; a rerun skips
every job whose key the log holds, and the cross-fitted probabilities are reassembled from the fold models'
files. These tests write jobs' outputs the way the workers do and read them back through the study's own
functions, against arrays built here independently.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tn():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("trunk_noise", ROOT / "benchmarks" / "trunk_noise.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["trunk_noise"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _plan(tn, tmp_path: Path, trunk_bytes: bytes = b"trunk A"):
    cfg = tn.Config(settings=("sym30", "sym20", "sym0"), seeds=(0, 1), crossfit_settings=("sym30", "sym20"),
                    folds=2)
    trunk = tmp_path / "trunk.pth"
    trunk.write_bytes(trunk_bytes)
    noisy = {(s, seed): tmp_path / f"{s}_{seed}.csv" for s in cfg.settings for seed in cfg.seeds + cfg.extra_seeds}
    return cfg, tn.plan(cfg, tmp_path / "work", tmp_path / "clean.csv", noisy, trunk, 1)


def test_plan_runs_the_targets_first_and_keys_name_the_trunk_file(tn, tmp_path: Path) -> None:
    cfg, jobs = _plan(tn, tmp_path)
    kinds = [(j.trunk, j.setting, "fold" if j.fold is not None else "train") for j in jobs]
    # The pretrained trunk's 30% and 20% full runs, then their cross-fits, then the rest; from scratch last.
    first_fold = kinds.index(("identity", "sym30", "fold"))
    assert set(kinds[:first_fold]) == {("identity", "sym30", "train"), ("identity", "sym20", "train")}
    assert kinds[:first_fold].index(("identity", "sym20", "train")) == 2 * len(cfg.models)  # all of sym30 first
    assert kinds.index(("identity", "sym0", "train")) > max(i for i, k in enumerate(kinds) if k[2] == "fold")
    # Seeds added to the 30% cell run after the design's runs, before the cross-fits, and are never cross-fitted.
    added = [i for i, j in enumerate(jobs) if j.seed in cfg.extra_seeds]
    assert added and all(jobs[i].setting == "sym30" and jobs[i].trunk == "identity" and jobs[i].fold is None
                         for i in added)
    assert max(added) < first_fold and min(added) > kinds.index(("identity", "sym20", "train"))
    assert all(k[0] == "scratch" for k in kinds[kinds.index(("scratch", "sym30", "train")):])
    assert len({j.key for j in jobs}) == len(jobs)
    # Same trunk file -> same keys (a rerun resumes); another file -> other keys and other array names; which seeds
    # are added changes no key.
    _, again = _plan(tn, tmp_path)
    _, other = _plan(tn, tmp_path, b"trunk B")
    assert [j.key for j in again] == [j.key for j in jobs]
    ident = [(a, b) for a, b in zip(jobs, other) if a.trunk == "identity"]
    assert all(a.key != b.key and a.array_name != b.array_name for a, b in ident)
    assert all(a.key == b.key for a, b in zip(jobs, other) if a.trunk == "scratch")
    (tmp_path / "trunk.pth").write_bytes(b"trunk A")
    fewer = tn.plan(tn.Config(**{**cfg.__dict__, "extra_seeds": ()}), tmp_path / "work", tmp_path / "clean.csv",
                    {(s, seed): tmp_path / "x.csv" for s in cfg.settings for seed in cfg.seeds}, tmp_path / "trunk.pth", 1)
    assert {j.key for j in fewer} == {j.key for j in jobs if j.seed in cfg.seeds}


def test_store_and_crossfit_round_trip(tn, tmp_path: Path) -> None:
    cfg, jobs = _plan(tn, tmp_path)
    folds = [j for j in jobs if j.fold is not None and j.setting == "sym30" and j.seed == 0]
    assert len(folds) == 2
    rng = np.random.default_rng(0)
    n, classes = 11, 7
    assignment = rng.integers(0, 2, n)
    truth = rng.dirichlet(np.ones(classes), n)  # the out-of-fold probabilities, built here
    log, arrays = tmp_path / "study.jsonl", tmp_path / "study"
    stored = []
    for job in folds:
        job.run.mkdir(parents=True)
        rows = np.flatnonzero(assignment == job.fold)
        np.savez_compressed(job.run / "fold.npz", rows=rows, probs=truth[rows])  # as fold_job writes it
        stored.append(tn.store_row(job, {"trunk": job.trunk, "setting": job.setting, "seed": job.seed,
                                         "fold": job.fold, "key": job.key}, log, arrays))
    done = {r["key"]: r for r in tn.read_rows(log)}
    assert stored == list(done.values())  # the row the runner keeps is the one a later session reads back
    assert set(done) == {j.key for j in folds}
    assert all((arrays / r["arrays"]).is_file() and r["tag"].startswith("identity-") for r in done.values())
    got = tn.collect_crossfit(cfg, jobs, done, arrays)
    assert list(got) == ["identity/sym30/0"]  # the other groups have no finished folds: left out, not zero-filled
    np.testing.assert_allclose(got["identity/sym30/0"], truth, rtol=1e-6)  # stored as float32
    # A torn last line (the study killed mid-write) is skipped; the finished rows still count.
    with open(log, "a") as fh:
        fh.write('{"key": "torn", "tri')
    assert {r["key"] for r in tn.read_rows(log)} == set(done)


def test_a_unit_finished_on_an_earlier_trunk_file_is_reused_whole(tn, tmp_path: Path) -> None:
    """Another machine pretrains another trunk file: units (a setting and seed's paired runs, or its folds) the
    log finished under the earlier file are reused; a unit the earlier file only began runs again, all of it, on
    the current file, so no paired difference is ever formed across two files."""
    cfg, earlier_a = _plan(tn, tmp_path, b"trunk A")
    digest_a = earlier_a[0].digest
    _, current = _plan(tn, tmp_path, b"trunk B")
    assert digest_a and current[0].digest and current[0].digest != digest_a
    # The same plan, named by the earlier file's digest without that file (plan(digests=...)): job for job.
    noisy = {(s, seed): tmp_path / f"{s}_{seed}.csv" for s in cfg.settings for seed in cfg.seeds + cfg.extra_seeds}
    replay = tn.plan(cfg, tmp_path / "work", tmp_path / "clean.csv", noisy, tmp_path / "trunk.pth", 1,
                     digests={"identity": digest_a})
    assert [j.key for j in replay] == [j.key for j in earlier_a]
    full = [j for j in earlier_a if j.trunk == "identity" and j.setting == "sym30" and j.seed == 0 and j.fold is None]
    begun = [j for j in earlier_a if j.trunk == "identity" and j.setting == "sym20" and j.seed == 0
             and j.fold is None][:1]
    rows = [{"key": j.key, "trunk": j.trunk, "trunk_digest": j.digest} for j in full + begun]
    done = {r["key"]: r for r in rows}
    assert tn.logged_digests(rows) == {"identity": [digest_a]}
    chosen = tn.choose(current, [replay], done)
    by_unit = {}
    for j in chosen:
        by_unit.setdefault(j.unit, set()).add(j.digest)
    assert all(len(d) == 1 for d in by_unit.values())  # one trunk file per unit
    assert by_unit[("identity", "sym30", 0, True)] == {digest_a}
    assert by_unit[("identity", "sym20", 0, True)] == {current[0].digest}  # begun under A, not finished: rerun
    assert by_unit[("identity", "sym30", 0, False)] == {current[0].digest}  # its folds are their own unit
    assert [j.key for j in chosen if j.trunk == "scratch"] == [j.key for j in current if j.trunk == "scratch"]
    # Once the current file has finished a unit too, its own rows are the ones reported.
    done |= {j.key: {"key": j.key} for j in current if j.unit == ("identity", "sym30", 0, True)}
    assert {j.digest for j in tn.choose(current, [replay], done) if j.unit == ("identity", "sym30", 0, True)} == {
        current[0].digest}
