"""Fuzzing (hypothesis, bounded) the recipe schema and the CLI's numeric options: every generated value is either
refused up front (RecipeError / exit 2, one line, before any work) or accepted and then works: one real
training step (stage-1 loss, optimizer and scheduler step, stacker fit) stays finite with a positive learning
rate, and an accepted export/triton-repo option value writes what it promises."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuse_export.errors import RecipeError
from fuse_export.training.recipe import Recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
BASE = load_recipe(ROOT / "recipes" / "synthetic-quick.toml")

EDGE_INTS = st.sampled_from([-2**63, -2**31, -1, 0, 1, 2, 3, 9, 10, 31, 32, 1024, 1025, 2**31, 2**32, 2**63])
EDGE_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -2.0, -1e-9, 0.0, 1e-12, 0.5, 0.999,
                               1.0, 1.5, 10.0, 1e30])
INTS = st.one_of(EDGE_INTS, st.integers(-10**6, 10**6))
FLOATS = st.one_of(EDGE_FLOATS, st.floats(allow_nan=True, allow_infinity=True, width=64))
# The numeric fields of the schema (a field added to the recipe is fuzzed once listed here).
NUMERIC = {
    ("data", "image_size"): INTS, ("data", "limit"): INTS,
    ("model", "dcnn_dropout"): FLOATS, ("model", "scn_dropout"): FLOATS,
    ("model", "dcnn_hidden"): st.lists(INTS, min_size=0, max_size=3),
    ("scn", "beta"): FLOATS, ("scn", "margin1"): FLOATS, ("scn", "margin2"): FLOATS,
    ("scn", "relabel_epoch"): INTS, ("scn", "rank_weight"): FLOATS,
    ("train", "epochs"): INTS, ("train", "batch_size"): INTS, ("train", "lr"): FLOATS,
    ("train", "weight_decay"): FLOATS, ("train", "momentum"): FLOATS, ("train", "gamma"): FLOATS,
    ("train", "step_size"): INTS, ("train", "num_workers"): INTS, ("train", "seed"): INTS,
    ("train", "dcnn_weight"): FLOATS, ("train", "scn_weight"): FLOATS,
    ("stacking", "holdout_fraction"): FLOATS, ("stacking", "weight_decay"): FLOATS,
    ("stacking", "max_iter"): INTS,
}
WRONG_TYPES = st.one_of(st.text(max_size=5), st.booleans(), st.none().map(lambda _: {}), st.just([1, "a"]))


@st.composite
def recipe_dicts(draw) -> dict:
    """The quick recipe with 1-3 numeric fields replaced (now and then by a value of the wrong type)."""
    d = BASE.to_dict()
    d.pop("name"), d.pop("source")
    keys = draw(st.lists(st.sampled_from(sorted(NUMERIC)), min_size=1, max_size=3, unique=True))
    for section, key in keys:
        d[section][key] = draw(st.one_of(NUMERIC[(section, key)], WRONG_TYPES) if draw(st.integers(0, 9)) == 0
                               else NUMERIC[(section, key)])
    d["train"]["scheduler"] = draw(st.sampled_from(["exponential", "step", "cosine", "none"]))
    d["train"]["optimizer"] = draw(st.sampled_from(["adam", "sgd"]))
    return d


def one_step(r: Recipe) -> None:
    """One stage-1 step, two scheduler steps and a stacker fit, as the trainer does them, on 4 random images
    (at the recipe's input size up to 64 px, else 64 px: the size is validated, the convolution is the same;
    the stacker's L-BFGS capped at 50 iterations)."""
    from fuse_export.model.scn import rank_regularization
    from fuse_export.model.stacker import fit_stacker
    from fuse_export.training.build import build_model, make_optimizer

    torch.manual_seed(r.train.seed % 2**31)
    model = build_model(r, 7, log=lambda *_: None)
    opt, sched = make_optimizer(model, r)
    size = min(r.data.image_size, 64)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    heads = model.forward_heads(x)
    loss = (r.train.dcnn_weight * F.cross_entropy(heads.dcnn_logits, y) + r.train.scn_weight * (
        F.cross_entropy(heads.scn_logits, y) + r.scn.rank_weight * rank_regularization(heads.alpha, r.scn.beta,
                                                                                        r.scn.margin1)))
    assert torch.isfinite(loss), loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    for _ in range(2):
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs), lrs
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        h = model.forward_heads(x)
        feats = model.stacker.features(h.dcnn_logits, h.scn_logits, h.alpha)
    fit_stacker(model.stacker, feats, y, r.stacking.weight_decay, min(r.stacking.max_iter, 50))
    assert all(torch.isfinite(p).all() for p in model.stacker.parameters())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe_dicts())
def test_recipe_values_are_refused_with_a_recipe_error_or_accepted(d: dict) -> None:
    try:
        r = recipe_from_dict(d, "fuzz.toml")
    except RecipeError as exc:
        assert str(exc).startswith("fuzz.toml: ") and "\n" not in str(exc)
        return
    for section, key in NUMERIC:
        value = getattr(getattr(r, section), key)
        for v in (value if isinstance(value, tuple) else (value,)):
            assert not isinstance(v, float) or math.isfinite(v), (section, key, v)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe_dicts())
def test_every_accepted_recipe_trains_one_step(d: dict) -> None:
    try:
        r = recipe_from_dict(d, "fuzz.toml")
    except RecipeError:
        return
    one_step(r)


@pytest.fixture(scope="module")
def cli_world(tiny_run, tiny_export):
    return tiny_run, tiny_export


NUMERIC_OPTIONS = [
    ("train", "--epochs"), ("train", "--seed"), ("train", "--limit"), ("train", "--batch-size"),
    ("train", "--num-workers"), ("export", "--batch"), ("export", "--opset"), ("export", "--calibration-samples"),
    ("bench", "--warmup"), ("bench", "--iterations"), ("bench", "--threads"), ("bench", "--batch-sizes"),
    ("triton-repo", "--max-batch-size"), ("triton-repo", "--instances"),
]
FIELDS = {"--epochs": "train.epochs", "--seed": "train.seed", "--limit": "data.limit",
          "--batch-size": "train.batch_size", "--num-workers": "train.num_workers"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.sampled_from(NUMERIC_OPTIONS), st.one_of(EDGE_INTS, st.integers(-10**9, 10**9),
                                                    st.sampled_from(["1e3", "x", "", "1,2", "-0", "0x10"])))
def test_numeric_options_refused_in_one_line_or_accepted(cli_world, tmp_path_factory, opt, value) -> None:
    """A refused value: exit 2, one 'error:' line naming the option (or its recipe field), before any work.
    An accepted one must reach the work. train, export and bench are pointed at something that stops them
    right there (a missing data file, an --out that is a file, a missing --checkpoint), so the one-line error
    that follows proves the value passed every check; the recipe fuzz above trains a step with such values.
    triton-repo runs for real: an accepted value writes a repository with that value in every config."""
    from test_hostile_inputs import run_cli

    run, export = cli_world
    command, option = opt
    d = tmp_path_factory.mktemp("opt")
    (d / "file").write_text("x")
    argv: list = {
        "train": ["train", ROOT / "recipes" / "synthetic-quick.toml", "--data", d / "missing.csv", "--out",
                  d / "run", "--no-progress"],
        "export": ["export", run.best, "--out", d / "file", "-f", "onnx"],
        "bench": ["bench", export, "--checkpoint", d / "missing.pt", "--no-progress"],
        "triton-repo": ["triton-repo", export, "--out", d / "repo"],
    }[command] + [option, str(value)]
    stop = {"train": "missing.csv", "export": "not a folder", "bench": "missing.pt"}
    code, out, err, exc = run_cli(argv)
    assert exc is None, exc
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if command == "triton-repo" and code == 0:
        n = int(str(value), 0) if str(value).strip() else None
        configs = list((d / "repo").glob("*/config.pbtxt"))
        key = "max_batch_size" if option == "--max-batch-size" else "count"
        assert configs and all(f"{key}: {n}" in c.read_text() for c in configs)
        return
    assert code == 2 and len(lines) >= 1 and lines[-1].startswith("error: "), (code, err)
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err
    if command in stop and stop[command] in lines[-1]:
        return  # accepted: stopped by the planted obstacle, after every check of the value
    assert option in lines[-1] or FIELDS.get(option, option) in lines[-1], lines[-1]
    assert not (d / "repo").exists() and not (d / "run" / "last.pt").exists()
