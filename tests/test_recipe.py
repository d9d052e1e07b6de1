from pathlib import Path

import pytest

from fuse_export.errors import RecipeError
from fuse_export.train.recipe import load_recipe

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
