"""FER-2013 in its image-folder release: `train/<class>/*.jpg` and `test/<class>/*.jpg`, 48x48 grayscale.

Class folders (angry, disgust, fear, happy, neutral, sad, surprise, and common spellings such as
"happiness" or "surprised") map onto Kaggle's label order (0 angry .. 6 neutral), so a model trained on the
folders and one trained on the CSV carry the same class names in the same order. The release has no
validation folder; a stratified, seeded one is carved from train (a `val` folder is used when present).
"""

from __future__ import annotations

import os
from pathlib import Path

from fuse_export.contract import FER2013_CLASSES
from fuse_export.data import options as opt
from fuse_export.data.badfiles import BadFiles
from fuse_export.data.base import FerDataset
from fuse_export.data.image_folder import build_folder_dataset

# Folder name (lower case) -> FER-2013 label. Spellings seen in circulating copies of the folder release.
FOLDER_ALIASES: dict[str, int] = {
    "angry": 0, "anger": 0,
    "disgust": 1, "disgusted": 1,
    "fear": 2, "fearful": 2, "afraid": 2,
    "happy": 3, "happiness": 3,
    "sad": 4, "sadness": 4,
    "surprise": 5, "surprised": 5,
    "neutral": 6,
}


def load_fer2013_folders(path: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
                         on_bad: str = "fail") -> FerDataset:
    """Load the folder release of FER-2013 with Kaggle's class order."""
    bad = BadFiles(on_bad)
    val_fraction = opt.fraction("val_fraction", val_fraction, 0.0, 0.5, open_low=True)
    seed = opt.integer("seed", seed)
    ds = build_folder_dataset("fer2013-folders", Path(path), FER2013_CLASSES, FOLDER_ALIASES, val_fraction, seed, bad)
    ds.color_mode = "gray"  # the release's images are FER-2013's 48x48 gray faces
    return ds
