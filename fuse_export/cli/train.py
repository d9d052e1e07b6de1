"""`fuse-export train`: a recipe, with the command line's overrides, through the trainer."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fuse_export.cli.common import OnBad, key_values, run_device, user_errors


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


@user_errors
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe TOML file, or a name from recipes/ (e.g. fer2013).")],
    data: Annotated[Optional[str], typer.Option(help="Data set path (overrides the recipe's data.path).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and metrics.")] = Path("runs/train"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override train.epochs.")] = None,
    device: Annotated[str, typer.Option(help="Where to train: auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Override train.seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    limit: Annotated[Optional[int], typer.Option(min=0, help="At most N samples per split (data.limit; 0 = all).")] = None,
    on_bad: Annotated[Optional[OnBad], typer.Option(help="Bad files: fail at the first, or skip and list them.")] = None,
    angles: Annotated[Optional[str], typer.Option(help="KDEF views, e.g. S,HL,HR (data.options.angles).")] = None,
    data_option: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE into data.options, e.g. fold=3 (repeatable).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Trunk weights file, or 'imagenet' (torch hub cache; downloaded if absent).")] = None,
    offline: Annotated[bool, typer.Option(help="Never download weights (also FUSE_EXPORT_OFFLINE=1).")] = False,
    allow_partial_weights: Annotated[bool, typer.Option(help="Accept weights that fill only part of the trunk.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help="Override train.batch_size (the GLOBAL batch).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(min=0, help="Override train.num_workers (per process).")] = None,
    amp: Annotated[Optional[Amp], typer.Option(help="Override train.amp (mixed precision).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option(help="Override train.channels_last.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Override train.compile.")] = None,
) -> None:
    """Train the fused network (stage 1: trunk + DCNN + SCN heads; stage 2: the stacker).

    Multi-GPU / multi-node: `torchrun --nproc-per-node N -m fuse_export train RECIPE ...` (DDP).
    """
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training
    from fuse_export.training.recipe_path import resolve_recipe

    r = load_recipe(resolve_recipe(recipe))
    if offline:
        from fuse_export.model.weights_fetch import OFFLINE_ENV

        os.environ[OFFLINE_ENV] = "1"  # read where `imagenet` is resolved (also by torchrun's child processes)
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seed is not None:
        changes["seed"] = seed
    speed = {"batch_size": batch_size, "num_workers": num_workers, "amp": amp.value if amp else None,
             "channels_last": channels_last, "compile": compile}
    changes.update({k: v for k, v in speed.items() if v is not None})
    if changes:
        r = r.replace(train=changes)
    data_options = {**r.data.options, **key_values(data_option or [], "--data-option"),
                    **({"on_bad": on_bad.value} if on_bad else {}), **({"angles": angles} if angles else {})}
    r = r.replace(data={"options": data_options, **({"limit": limit} if limit is not None else {})})
    if pretrained is not None or allow_partial_weights:
        r = r.replace(model={"pretrained": r.model.pretrained if pretrained is None else pretrained,
                             "allow_partial_weights": allow_partial_weights or r.model.allow_partial_weights})
    result = run_training(r, data, out, device=run_device(device), resume=resume, progress=progress)
    typer.echo(f"best checkpoint: {result.best} (epoch {result.best_epoch}); last: {result.last}")

