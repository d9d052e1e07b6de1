"""What a loaded data set leaves next to a run: the bad files it skipped and the label noise it injected."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fuse_export.data.base import FerDataset
from fuse_export.fileio import atomic_open, write_json

BAD_FILES = "bad_files.txt"
LABEL_NOISE = "label_noise.json"


def write_data_reports(ds: FerDataset, out_dir: str | os.PathLike) -> list[str]:
    """Write bad_files.txt / label_noise.json into `out_dir` when there is something to say; returns one
    line per fact for the console (nothing is left out without a trace), and a warning line when classes have
    no training samples."""
    out = Path(out_dir)
    messages = [f"data: {ds.name} from {ds.source}: " + ", ".join(f"{k} {v}" for k, v in ds.counts().items())
                + f"; classes {', '.join(ds.class_names)}"]
    train = ds.splits.get("train")
    if train is not None and len(train):
        present = set(np.unique(np.asarray(train.labels)).tolist())
        empty = [c for i, c in enumerate(ds.class_names) if i not in present]
        if empty:  # e.g. a CSV holding one class: the model still gets an output per class, never trained
            messages.append(f"warning: no training samples of {len(empty)} of the {ds.num_classes} classes "
                            f"({', '.join(empty)}) in {ds.source}; the model keeps an output for each but cannot "
                            "learn them")
    for reason, count in ds.skipped.items():
        if count:
            messages.append(f"data: left out {count} sample(s): {reason}")
    if ds.bad_files:
        with atomic_open(out / BAD_FILES) as fh:
            fh.write("".join(f"{line}\n" for line in ds.bad_files))
        messages.append(f"data: skipped {len(ds.bad_files)} bad file(s); list in {out / BAD_FILES}")
    if ds.label_noise is not None:
        write_json(out / LABEL_NOISE, ds.label_noise.to_dict())
        messages.append(f"data: flipped {ds.label_noise.flipped.size} training label(s) "
                        f"(rate {ds.label_noise.rate:g}, seed {ds.label_noise.seed}); record in {out / LABEL_NOISE}")
    return messages
