from pathlib import Path

import pytest
import torch

from fuse_export.errors import RecipeError
from fuse_export.training.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_names_its_source(path):
    r = load_recipe(path)
    assert r.name == path.stem
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Source:"), "each recipe starts with a comment naming its source"
    assert r.scn.beta == 0.7 and r.scn.margin2 == 0.2


def test_quick_and_fer2013_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"synthetic-quick", "fer2013"} <= names
    fer = load_recipe(Path(__file__).parents[1] / "recipes" / "fer2013.toml")
    assert fer.data.image_size == 224 and fer.data.format == "fer2013-csv"


@pytest.mark.parametrize(
    "body, message",
    [
        ("[train]\nepochz = 3\n", "unknown field train.epochz"),
        ("[train]\nepochs = 'three'\n", "train.epochs must be an integer"),
        ("[scn]\nrelabel_scope = 'some'\n", "scn.relabel_scope is 'some'; choose one of low, all"),
        ("[scn]\nbeta = 1.5\n", "scn.beta must be in (0, 1)"),
        ("[trian]\n", "unknown section or field 'trian'"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_recipes_name_file_and_field(tmp_path, body, message):
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_replace_overrides_fields():
    r = load_recipe(RECIPES[0]).replace(train={"epochs": 1}, data={"image_size": 32})
    assert r.train.epochs == 1 and r.data.image_size == 32


class _Params(torch.nn.Module):
    """The two parameter groups make_optimizer builds (heads, trunk), without a network behind them."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.backbone = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)


def trunk_lr_by_epoch(recipe: Recipe) -> list[float]:
    """The trunk's learning rate in epochs 1..train.epochs, from the trainer's own scheduler (stepped once after
    every epoch, frozen epochs included, as the trainer does)."""
    from fuse_export.training.build import make_optimizer

    optimizer, scheduler = make_optimizer(_Params(), recipe)  # type: ignore[arg-type]
    rates = []
    for _ in range(recipe.train.epochs):
        rates.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_trunk_unfreezes_well_before_the_first_learning_rate_drop(path):
    """A frozen stage (train.freeze_backbone_epochs: epochs 1..N heads only) counts towards the rate schedule: a
    trunk unfrozen just before the first drop fine-tunes almost entirely at a tenth of the rate (KDEF's recipe
    did: step 6 after 5 frozen epochs, one full-rate epoch)."""
    r = load_recipe(path)
    if r.train.freeze_backbone_epochs == 0:
        return  # the trunk trains from epoch 1 with the heads: nothing unfreezes
    rates = trunk_lr_by_epoch(r)
    unfreeze = r.train.freeze_backbone_epochs + 1
    first_drop = next((e for e, lr in enumerate(rates, 1) if lr < rates[0] * (1 - 1e-9)), r.train.epochs + 1)
    assert first_drop - unfreeze >= 2, (f"{path.name}: the trunk unfreezes at epoch {unfreeze}, the rate first "
                                        f"drops at epoch {first_drop}")


def test_kdef_schedule_as_its_comment_says():
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "kdef.toml")
    rates = trunk_lr_by_epoch(r)
    assert r.train.freeze_backbone_epochs == 5 and rates[5:11] == [r.train.lr] * 6  # epochs 6-11 at full rate
    assert rates[11:] == pytest.approx([r.train.lr * 0.1] * 9)  # epochs 12-20 at 0.1x
