"""What a loaded data set leaves next to a run: the bad files it skipped and the label noise it injected."""

from __future__ import annotations

import os
from pathlib import Path

from fuse_export.data.base import FerDataset
from fuse_export.fileio import atomic_open, write_json

BAD_FILES = "bad_files.txt"
LABEL_NOISE = "label_noise.json"


def write_data_reports(ds: FerDataset, out_dir: str | os.PathLike) -> list[str]:
    """Write bad_files.txt / label_noise.json into `out_dir` when there is something to say; returns one
    line per fact for the console (nothing is left out without a trace)."""
    out = Path(out_dir)
    messages = [f"data: {ds.name} from {ds.source}: " + ", ".join(f"{k} {v}" for k, v in ds.counts().items())
                + f"; classes {', '.join(ds.class_names)}"]
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
