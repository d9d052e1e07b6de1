"""The label audit: its scores on hand-made outputs, and `fuse-export audit-labels` finding planted flips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fuse_export.audit import audit_heads, percentile_rank, precision_at_k, roc_auc
from fuse_export.cli import app
from fuse_export.model.fused import HeadOutputs

NOISE_RATE = 0.25


def test_percentile_rank_and_roc_auc_against_hand_computation():
    np.testing.assert_allclose(percentile_rank(np.array([3.0, 1.0, 2.0, 2.0])), [1.0, 0.0, 0.5, 0.5])
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (pos, neg) pairs are ordered right.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == pytest.approx(0.5)  # a tie counts 1/2
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([False, False])))
    assert precision_at_k(np.array([2, 1, 0, 3]), np.array([True, False, True, False]), 2) == 0.5
    assert precision_at_k(np.array([2, 0, 1, 3]), np.array([True, False, True, False]), 2) == 1.0


def test_audit_ranks_by_probability_that_the_label_is_wrong():
    # Fused probabilities: sample 0 is sure of class 2 but labelled 0 (most suspicious); sample 3 agrees with
    # its label (least). Samples 1 and 2 tie on P(given) = 0.5; the larger SCN margin breaks the tie.
    fused = torch.log(torch.tensor([[0.05, 0.05, 0.9], [0.25, 0.5, 0.25], [0.5, 0.1, 0.4], [0.8, 0.1, 0.1]]))
    scn_logits = torch.tensor([[0.0, 0.0, 6.0], [0.0, 3.0, 0.0], [1.0, 0.0, 1.2], [5.0, 0.0, 0.0]])
    alpha = torch.tensor([[0.2], [0.6], [0.4], [0.9]])
    heads = HeadOutputs(torch.zeros(4, 3), scn_logits, alpha)
    audit = audit_heads(heads, fused, np.array([0, 1, 0, 0]), ("a", "b", "c"), names=["w", "x", "y", "z"],
                        margin2=0.2, beta=0.7)
    assert audit.order.tolist() == [0, 2, 1, 3]
    assert audit.suggested.tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(audit.score, [0.95, 0.5, 0.5, 0.2], rtol=1e-6)
    p = torch.softmax(scn_logits, 1).numpy()
    np.testing.assert_allclose(audit.scn_margin, p.max(1) - p[np.arange(4), [0, 1, 0, 0]], rtol=1e-6)
    # SCN's rule: margin > delta2 and alpha in the lowest 30%: only sample 0 (sample 2's margin is 0.05).
    assert audit.scn_rule.tolist() == [True, False, False, False]
    assert audit.suspects == 1
    first = audit.row(0)
    assert first["rank"] == 1 and first["name"] == "w" and first["given_name"] == "a"
    assert first["suggested_name"] == "c" and first["scn_rule"] == 1


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory):
    """A small, easy synthetic set with NOISE_RATE of its training labels flipped, and a model trained on it."""
    from fuse_export.data.fer2013 import load_fer2013_csv
    from fuse_export.data.noise import inject_symmetric_noise
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training

    root = tmp_path_factory.mktemp("audit")
    clean = root / "clean.csv"
    # Few identities, no blends or occlusions: a from-scratch ResNet-18 learns enough in ~190 small steps to rank
    # the flips well above chance (about 0.5 at K = 84 flips where chance is 0.25), in seconds on 2 idle cores.
    write_fer2013_csv(clean, SyntheticSpec(samples_per_class=60, identities=2, blend_fraction=0.0,
                                           occlusion_fraction=0.0, noise_std=2.0, seed=5))
    train = load_fer2013_csv(clean).splits["train"]
    noisy_split, record = inject_symmetric_noise(train, NOISE_RATE, 0, 7)
    noisy = root / "noisy.csv"
    lines = clean.read_text().splitlines(keepends=True)
    i = 0
    with open(noisy, "w") as fh:
        fh.write(lines[0])
        for line in lines[1:]:
            if line.rstrip().endswith(",Training"):
                line = f"{noisy_split.labels[i]},{line.split(',', 1)[1]}"
                i += 1
            fh.write(line)
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 32}, train={"epochs": 10, "batch_size": 16, "gamma": 0.9, "seed": 0},
        scn={"relabel_epoch": 0})
    result = run_training(recipe, str(noisy), root / "run", device="cpu", progress=False)
    return result.last, noisy, record.flipped_mask(len(train))


def test_audit_labels_finds_planted_flips_better_than_chance(noisy_run, tmp_path: Path):
    checkpoint, data, flipped = noisy_run
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--top", "5",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "label audit" in result.output and "Suggested" in result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == flipped.size  # every training sample, most suspicious first
    assert [int(r["rank"]) for r in rows] == list(range(1, flipped.size + 1))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    k = int(flipped.sum())
    hits = np.mean([flipped[int(r["index"])] for r in rows[:k]])
    # Chance is NOISE_RATE with a standard deviation of ~0.05 at this K: 1.5x chance is ~2.7 deviations above it.
    assert hits > 1.5 * NOISE_RATE, f"precision at K={k} is {hits:.2f}; chance is {NOISE_RATE}"
    # A suggestion differs from the given label only where the model puts at most half on the given label.
    assert all(float(r["p_given"]) <= 0.5 or r["given"] == r["suggested"] for r in rows)
    assert {r["ranked_by"] for r in rows} == {"aum"}  # the default on the training split: training dynamics
    assert "ranked by aum" in " ".join(result.output.split())


def test_audit_labels_other_split_and_bad_inputs(noisy_run, tmp_path: Path):
    checkpoint, data, _ = noisy_run
    runner = CliRunner()
    ok = runner.invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--split", "val", "--top", "3",
                             "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "val split" in ok.output
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    cases = [
        ["audit-labels", str(tmp_path / "missing.pt"), "--data", str(data)],
        ["audit-labels", str(junk), "--data", str(data)],
        ["audit-labels", str(checkpoint), "--data", str(tmp_path / "missing.csv")],
        ["audit-labels", str(checkpoint), "--data", str(data), "--split", "holdout"],
        ["audit-labels", str(checkpoint), "--data", str(data), "--top", "0"],
        ["audit-labels", str(checkpoint)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
    missing = runner.invoke(app, cases[0])
    assert "missing.pt" in missing.output and "Traceback" not in missing.output


def test_per_class_thresholds_keep_an_unsure_class_from_flooding_the_top():
    """Class 2 is rare and the model is unsure of it (its clean samples get P = 0.3); class 0's flips, which the
    model half fits, are what the audit should find. Raw 1 - P(given) puts every clean class-2 sample first; the
    per-class threshold margin does not."""
    from fuse_export.audit import confident_thresholds, probability_score, ranking

    clean0 = [[0.9, 0.05, 0.05]] * 20  # confident, right
    flips = [[0.35, 0.6, 0.05]] * 4  # labelled 0, look like class 1 (wrong labels)
    clean1 = [[0.05, 0.9, 0.05]] * 20
    rare = [[0.3, 0.4, 0.3]] * 6  # labelled 2, right, but the model is unsure of the whole class
    probs = np.array(clean0 + flips + clean1 + rare)
    labels = np.array([0] * 24 + [1] * 20 + [2] * 6)
    wrong = np.zeros(labels.size, bool)
    wrong[20:24] = True
    t = confident_thresholds(probs, labels)
    np.testing.assert_allclose(t, [(20 * 0.9 + 4 * 0.35) / 24, 0.9, 0.3])
    raw = ranking(probability_score(probs, labels, per_class=False))
    adjusted = ranking(probability_score(probs, labels, per_class=True))
    assert precision_at_k(raw, wrong, 4) == 0.0  # the six unsure rare samples come first
    assert precision_at_k(adjusted, wrong, 4) == 1.0
    # The margin itself, by hand for a flip: max_{j != 0}(p_j - t_j) = max(0.6 - 0.9, 0.05 - 0.3); own = 0.35 - t_0.
    np.testing.assert_allclose(probability_score(probs, labels)[20], -0.25 - (0.35 - t[0]))


def test_aum_score_ranks_each_group_within_itself_and_centres_classes():
    from fuse_export.audit import aum_score

    # Stage-1 rows (in-sample) have large margins, holdout rows small ones: ranked together raw, every holdout row
    # would look suspicious. Within groups, the lowest margin of each group ranks first.
    aum = np.array([5.0, 4.0, -1.0, 6.0, 0.5, 0.4, -3.0, 0.6])
    labels = np.zeros(8, np.int64)
    trained = np.array([True] * 4 + [False] * 4)
    score = aum_score(aum, labels, trained, per_class=False)
    assert score[2] == score[6] == 1.0  # each group's lowest margin
    assert score[3] == score[7] == 0.0
    # Class centring: class 1's margins are all lower (a hard class); its worst sample is not ranked above
    # class 0's worst one only because of the class.
    aum2 = np.array([3.0, 3.1, 2.9, -2.0, 0.0, 0.1, -0.1, 0.05])
    labels2 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = aum_score(aum2, labels2, np.ones(8, bool))
    assert np.argmax(s) == 3
    assert np.isneginf(aum_score(np.array([np.nan, 1.0]), np.zeros(2, np.int64), np.ones(2, bool))[0])


def test_fold_assignment_is_stratified_and_complete():
    from fuse_export.audit.crossfit import fold_assignment

    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    fold = fold_assignment(labels, 3, seed=1)
    assert set(fold.tolist()) == {0, 1, 2}
    for c, n in ((0, 10), (1, 7), (2, 3)):
        counts = np.bincount(fold[labels == c], minlength=3)
        assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_training_records_label_margins_for_every_training_sample(noisy_run):
    from fuse_export.training.checkpoint import read_checkpoint
    from fuse_export.training.dynamics import TrainingDynamics

    checkpoint, data, flipped = noisy_run
    state = read_checkpoint(checkpoint)
    dyn = TrainingDynamics.from_state(state["training_dynamics"], checkpoint)
    assert dyn.epochs == list(range(1, state["epoch"] + 1))  # relabeling is off in this run: every epoch counts
    counts = dyn.count.numpy()
    # Holdout rows: one eval pass per epoch; stage-1 rows: every sample of every full batch (batch 16, the last
    # partial batch dropped), so each one at least once.
    trained = dyn.trained.numpy()
    assert (counts[~trained] == len(dyn.epochs)).all()
    assert counts[trained].sum() == len(dyn.epochs) * (int(trained.sum()) // 16) * 16
    assert counts[trained].min() >= 1
    aum = dyn.aum().mean(1)
    # Wrong labels are learnt late: lower margins (this small model learns little; chance is an AUC of 0.5).
    auc = roc_auc(-aum, flipped)
    assert aum[flipped].mean() < aum[~flipped].mean() and auc > 0.65, auc


def test_audit_methods_and_their_errors(noisy_run, tmp_path: Path):
    checkpoint, data, flipped = noisy_run
    runner = CliRunner()
    model = runner.invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--method", "model",
                                "--device", "cpu", "--out", str(tmp_path / "model.csv")])
    assert model.exit_code == 0, model.output
    assert "in-sample" in model.output  # the warning (CliRunner mixes stderr into the output)
    with open(tmp_path / "model.csv", newline="") as fh:
        assert {r["ranked_by"] for r in csv.DictReader(fh)} == {"model"}
    # AUM needs the train split, and a checkpoint that recorded dynamics.
    val = runner.invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--split", "val", "--method",
                              "aum", "--device", "cpu"])
    assert val.exit_code == 2 and "train split only" in val.output
    from fuse_export.training.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint)
    del state["training_dynamics"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    legacy = runner.invoke(app, ["audit-labels", str(old), "--data", str(data), "--device", "cpu"])
    assert legacy.exit_code == 2 and "no training dynamics" in legacy.output and "Traceback" not in legacy.output


def test_audit_crossfit_scores_every_sample_out_of_fold(noisy_run, tmp_path: Path):
    checkpoint, data, flipped = noisy_run
    out = tmp_path / "cf.csv"
    result = CliRunner().invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--method", "crossfit",
                                      "--folds", "2", "--fold-epochs", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == flipped.size and {r["ranked_by"] for r in rows} == {"crossfit (2 folds, 2 epochs)"}
    assert sorted(int(r["index"]) for r in rows) == list(range(flipped.size))
    # Out of sample: the checkpoint's model trained 10 epochs on these very labels and has memorised part of the
    # wrong ones; a fold model never saw the sample it scores, so it gives a wrong label less probability.
    model = CliRunner().invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--method", "model",
                                     "--device", "cpu", "--out", str(tmp_path / "model.csv")])
    assert model.exit_code == 0, model.output
    with open(tmp_path / "model.csv", newline="") as fh:
        in_sample = {int(r["index"]): float(r["p_given"]) for r in csv.DictReader(fh)}
    out_of_fold = {int(r["index"]): float(r["p_given"]) for r in rows}
    wrong = np.flatnonzero(flipped)
    assert np.mean([out_of_fold[i] for i in wrong]) < np.mean([in_sample[i] for i in wrong])
    few = CliRunner().invoke(app, ["audit-labels", str(checkpoint), "--data", str(data), "--method", "crossfit",
                                   "--folds", "500", "--device", "cpu"])
    assert few.exit_code == 2 and "use fewer folds" in few.output


def test_default_audit_of_a_run_with_injected_noise_and_a_limit_audits_what_it_trained_on(tmp_path: Path):
    """A checkpoint trained with the recipe's own label noise (data.options noise_*) and data.limit: the default
    (AUM) audit loads the file as training did, so its training dynamics line up (it used to refuse), and the
    audited labels are the trained ones: flipped exactly where the run's own label_noise.json says."""
    from fuse_export.data.fer2013 import load_fer2013_csv
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training

    clean = tmp_path / "clean.csv"
    write_fer2013_csv(clean, SyntheticSpec(samples_per_class=30, identities=2, blend_fraction=0.0,
                                           occlusion_fraction=0.0, noise_std=2.0, seed=9))
    limit = 120
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 32, "limit": limit, "options": {"noise_rate": 0.25, "noise_seed": 3}},
        train={"epochs": 3, "batch_size": 16, "seed": 4}, scn={"relabel_epoch": 0})
    result = run_training(recipe, str(clean), tmp_path / "run", device="cpu", progress=False)
    record = json.loads((tmp_path / "run" / "label_noise.json").read_text())
    flipped = {f["name"]: f for f in record["flipped"]}
    out = tmp_path / "audit.csv"
    r = CliRunner().invoke(app, ["audit-labels", str(result.last), "--data", str(clean), "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "injected label noise" in r.output and f"data.limit {limit}" in r.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == limit and {row["ranked_by"] for row in rows} == {"aum"}
    truth = dict(zip(load_fer2013_csv(clean).splits["train"].names, load_fer2013_csv(clean).splits["train"].labels))
    audited_flips = [row for row in rows if row["name"] in flipped]
    assert audited_flips, "the limit kept none of the flipped samples: this test would prove nothing"
    for row in rows:
        if row["name"] in flipped:
            assert int(row["given"]) == flipped[row["name"]]["noisy"] != truth[row["name"]]
        else:
            assert int(row["given"]) == truth[row["name"]]
