"""Data set formats by name: the recipe's `data.format` picks a loader here."""

from __future__ import annotations

import os
from collections.abc import Callable

from fuse_export.data.base import FerDataset
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.errors import RecipeError

Loader = Callable[..., FerDataset]

LOADERS: dict[str, Loader] = {
    "fer2013-csv": load_fer2013_csv,
}


def load_dataset(fmt: str, path: str | os.PathLike, **options) -> FerDataset:
    """Load a data set in format `fmt` from `path` (options are the recipe's format-specific fields)."""
    if fmt not in LOADERS:
        raise RecipeError(f"data.format {fmt!r} is unknown; choose one of {', '.join(sorted(LOADERS))}")
    return LOADERS[fmt](path, **options)
