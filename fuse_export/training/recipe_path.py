"""Where recipe names are found: `synthetic-quick` -> recipes/synthetic-quick.toml on the search path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fuse_export.errors import RecipeError


def recipe_search_path() -> list[Path]:
    """Where recipe names are looked up: ./recipes, the source checkout, then the installed data files."""
    here = Path(__file__).resolve().parents[1]  # the fuse_export package
    return [Path.cwd() / "recipes", here.parent / "recipes", Path(sys.prefix) / "share" / "fuse-export" / "recipes"]


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file path, or a bare name such as `synthetic-quick` found on the search path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        return p
    for folder in recipe_search_path():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe {name_or_path!r} not found in {', '.join(str(f) for f in recipe_search_path())}; "
                      "pass a path to a .toml file")
