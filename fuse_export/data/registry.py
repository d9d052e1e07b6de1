"""Data set formats by name: the recipe's `data.format` picks a loader here, `data.options` are its arguments.

Options every format takes: `on_bad` ("fail" | "skip"), and `noise_rate` / `noise_seed` / `noise_kind`
(label noise injected into the training split, "symmetric" or "asymmetric" flips to a confusable class,
recorded in `FerDataset.label_noise`). The rest are per format;
an option a format does not know is a RecipeError that lists the ones it does.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from fuse_export.data import options as opt
from fuse_export.data.base import FerDataset
from fuse_export.data.fer2013 import load_fer2013_csv
from fuse_export.data.fer_folders import load_fer2013_folders
from fuse_export.data.ferplus import load_ferplus
from fuse_export.data.image_folder import load_image_folder
from fuse_export.data.kdef import load_kdef
from fuse_export.data.noise import NOISE_KINDS, inject_asymmetric_noise, inject_symmetric_noise
from fuse_export.data.rafdb import load_rafdb
from fuse_export.errors import RecipeError

Loader = Callable[..., FerDataset]

LOADERS: dict[str, Loader] = {
    "fer2013-csv": load_fer2013_csv,
    "fer2013-folders": load_fer2013_folders,
    "ferplus": load_ferplus,
    "kdef": load_kdef,
    "rafdb": load_rafdb,
    "image-folder": load_image_folder,
}
NOISE_OPTIONS = ("noise_rate", "noise_seed", "noise_kind")


def format_options(fmt: str) -> list[str]:
    """The option names format `fmt` accepts in `data.options`."""
    params = list(inspect.signature(LOADERS[fmt]).parameters)[1:]  # the first is the path
    return sorted([p for p in params if p != "require_splits"] + list(NOISE_OPTIONS))


def load_dataset(fmt: str, path: str | os.PathLike, **options) -> FerDataset:
    """Load a data set in format `fmt` from `path` (options are the recipe's format-specific fields)."""
    if fmt not in LOADERS:
        raise RecipeError(f"data.format {fmt!r} is unknown; choose one of {', '.join(sorted(LOADERS))}")
    known = format_options(fmt)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise RecipeError(f"data.options.{unknown[0]} is not an option of format {fmt!r}; "
                          f"its options are {', '.join(known)}")
    noise_rate = opt.fraction("noise_rate", options.pop("noise_rate", 0.0))
    noise_seed = opt.integer("noise_seed", options.pop("noise_seed", 0))
    noise_kind = opt.choice("noise_kind", options.pop("noise_kind", "symmetric"), NOISE_KINDS)
    ds = LOADERS[fmt](path, **options)
    if noise_rate > 0 and noise_kind == "asymmetric":
        ds.splits["train"], ds.label_noise = inject_asymmetric_noise(ds.splits["train"], noise_rate, noise_seed,
                                                                     ds.class_names)
    elif noise_rate > 0:
        ds.splits["train"], ds.label_noise = inject_symmetric_noise(ds.splits["train"], noise_rate, noise_seed,
                                                                    ds.num_classes)
    return ds
