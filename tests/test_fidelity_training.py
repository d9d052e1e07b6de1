"""The core as its sources describe it: pretrained real-data recipes, staged fine-tuning, and a stacker whose
features let alpha shift trust between the heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split
from fuse_export.data.transforms import train_transform
from fuse_export.errors import RecipeError
from fuse_export.model.stacker import Stacker, fit_stacker
from fuse_export.train.build import build_model, make_optimizer, training_network
from fuse_export.train.distributed import DistContext
from fuse_export.train.loaders import train_loader
from fuse_export.train.loop import LabelState, train_one_epoch
from fuse_export.train.recipe import load_recipe, recipe_from_dict
from fuse_export.train.speed import make_precision

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
DEMO = {"synthetic-quick"}  # the generated faces: trains from scratch, offline, by design


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem not in DEMO], ids=lambda p: p.stem)
def test_every_real_data_recipe_starts_from_pretrained_weights(path):
    r = load_recipe(path)
    assert r.model.pretrained, f"{path.name} trains from scratch"
    text = path.read_text()
    # Each recipe states its staged fine-tuning and where the choice comes from.
    assert "freeze_backbone_epochs" in text and "backbone_lr_mult" in text and "Staged fine-tuning" in text
    if path.stem == "fer2013":
        assert r.model.pretrained == "imagenet" and "ijba_res18_naive.pth.tar" in text  # the seed's MS-Celeb file
    if path.stem == "kdef":  # Akhand et al.: dense layers first, then the convolutional blocks
        assert 0 < r.train.freeze_backbone_epochs < r.train.epochs


@pytest.mark.parametrize("table, message", [
    ({"train": {"backbone_lr_mult": 0.0}}, "train.backbone_lr_mult must be a finite number > 0"),
    ({"train": {"freeze_backbone_epochs": -1}}, "train.freeze_backbone_epochs must be >= 0"),
    ({"stacking": {"kind": "deep"}}, "stacking.kind is 'deep'; choose one of linear, interaction"),
    ({"data": {"geometry": "stretch"}}, "data.geometry is 'stretch'; choose one of squash, resize-crop"),
])
def test_new_recipe_fields_are_validated(table, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipe_from_dict(table, "r.toml")


def _tiny_setup(freeze: int, mult: float):
    recipe = load_recipe(ROOT / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 32}, model={"dcnn_hidden": [16]},
        train={"epochs": 2, "batch_size": 8, "freeze_backbone_epochs": freeze, "backbone_lr_mult": mult},
        scn={"relabel_epoch": 0})
    rng = np.random.default_rng(0)
    split = Split(labels=np.arange(24) % 3, images=rng.integers(0, 256, (24, 40, 40), dtype=np.uint8))
    torch.manual_seed(0)
    model = build_model(recipe, 3, log=lambda *_: None)
    ctx = DistContext()
    net = training_network(model, recipe, ctx)
    optimizer, _ = make_optimizer(model, recipe)
    loader = train_loader(split, train_transform(Preprocessing(32, ("a", "b", "c"))), 8, ctx, seed=0, num_workers=0)
    labels = LabelState(torch.from_numpy(split.labels.copy()), torch.from_numpy(split.labels.copy()))
    return recipe, model, net, optimizer, loader, labels, ctx


def test_staged_fine_tuning_trains_the_heads_first_then_the_trunk():
    recipe, model, net, optimizer, loader, labels, ctx = _tiny_setup(freeze=1, mult=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1e-3), pytest.approx(1e-4)]
    trunk_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == trunk_ids
    trunk0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BatchNorm statistics
    head0 = model.dcnn.net[0].weight.detach().clone()
    precision = make_precision("none", ctx.device)

    def epoch(n: int) -> None:
        loader.sampler.set_epoch(n)
        train_one_epoch(net, model, loader, labels, optimizer, precision, recipe.scn, recipe.train, n, ctx)

    epoch(1)  # heads only
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, trunk0[k]), f"{k} changed while the trunk was frozen"
    assert not torch.equal(model.dcnn.net[0].weight, head0)
    assert all(p not in optimizer.state for p in model.backbone.parameters())  # no Adam moments built up
    epoch(2)  # everything
    assert not torch.equal(model.backbone.conv1.weight, trunk0["conv1.weight"])
    assert not torch.equal(model.backbone.bn1.running_mean, trunk0["bn1.running_mean"])


def test_interaction_stacker_lets_alpha_shift_trust_between_the_heads():
    """Head A is right when alpha is high, head B when it is low: only features with alpha x log p can say so."""
    g = torch.Generator().manual_seed(0)
    n, c = 1200, 5
    y = torch.randint(0, c, (n,), generator=g)
    alpha = torch.rand(n, 1, generator=g)
    right = torch.nn.functional.one_hot(y, c).float() * 4.0
    wrong = torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).float() * 4.0
    noise = 0.3 * torch.randn(n, c, generator=g)
    a_logits = torch.where(alpha > 0.5, right, wrong) + noise
    b_logits = torch.where(alpha > 0.5, wrong, right) + noise
    acc = {}
    for kind in ("linear", "interaction"):
        st = Stacker(c, kind)
        fit_stacker(st, st.features(a_logits[:800], b_logits[:800], alpha[:800]), y[:800])
        with torch.no_grad():
            acc[kind] = float((st(a_logits[800:], b_logits[800:], alpha[800:]).argmax(1) == y[800:]).float().mean())
    assert acc["interaction"] > 0.9 and acc["interaction"] - acc["linear"] > 0.15, acc


def test_unfitted_interaction_stacker_combines_the_heads_evenly():
    st = Stacker(4, "interaction")
    d, s = torch.randn(6, 4), torch.randn(6, 4)
    want = 0.5 * (torch.log_softmax(d, 1) + torch.log_softmax(s, 1))
    torch.testing.assert_close(st(d, s, torch.rand(6, 1)), want)
