"""The data a checkpoint trained on, loaded again for its label audit: same format, options, noise and limit."""

from __future__ import annotations

import os
from typing import Any


def trained_data(recipe: dict[str, Any], data: str | os.PathLike, data_format: str | None = None
                 ) -> tuple[Any, list[str]]:
    """(data set, notes): `data` loaded as the checkpoint's training loaded it, so the audited labels are
    the ones it trained on and its training dynamics line up: the recipe's format and options, label noise
    injection included (same seed, same flips), and its `data.limit` subset (same seed, same rows). With
    `data_format` given, the data is another set: that format, no options, no limit."""
    from fuse_export.data.registry import NOISE_OPTIONS, load_dataset
    from fuse_export.training.build import prepare_data
    from fuse_export.training.recipe import recipe_from_dict

    if data_format is not None:
        return load_dataset(data_format, data), []
    section = recipe.get("data", {})
    ds = prepare_data(recipe_from_dict(recipe, str(data)), str(data))  # training's own loading, limit and all
    limit = int(section.get("limit", 0) or 0)
    notes = []
    if ds.label_noise is not None:
        injected = {k: v for k, v in section.get("options", {}).items() if k in NOISE_OPTIONS}
        said = ", ".join(f"{k} {v}" for k, v in injected.items())
        notes.append(f"the checkpoint's recipe injected label noise ({said}): the audited labels are the ones it "
                     f"trained on, {ds.label_noise.flipped.size} of them flipped from the file's (the run's "
                     "label_noise.json lists them)")
    if limit:
        notes.append(f"data.limit {limit}: the audit covers the {limit} samples per split the checkpoint trained on")
    return ds, notes
