"""Checkpoints: a plain dict of tensors and JSON-like metadata, loaded with `torch.load(weights_only=True)`.

Nothing but tensors, numbers, strings, lists and dicts is stored, so loading never unpickles arbitrary
objects. Writes are atomic: an interrupted save never leaves a broken file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fuse_export import __version__
from fuse_export.contract import Preprocessing
from fuse_export.errors import CheckpointError, UserError
from fuse_export.fileio import atomic_open, try_lock
from fuse_export.model.fused import FusedFER, ModelConfig
from fuse_export.model.weights import describe_load_error
from fuse_export.training.distributed import DistContext, broadcast_object

FORMAT = "fuse-export-checkpoint"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    import torchvision

    return {"fuse_export": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike, model: FusedFER, preprocessing: Preprocessing, recipe: dict[str, Any],
                    **extra: Any) -> None:
    """Save weights plus everything needed to rebuild, preprocess and name the outputs."""
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(preprocessing.class_names),
        "recipe": recipe,
        "versions": package_versions(),
        **extra,
    }
    # atomic_open fsyncs before the rename: after a crash or power loss, the real name holds either the
    # previous complete checkpoint or this one, never a torn file.
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries that a killed save left beside checkpoints (`.last.pt.*.tmp`); returns them."""
    stale = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict safely, with clear errors for missing, foreign or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with `fuse-export train RECIPE`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, OSError: see describe_load_error
        raise CheckpointError(f"{path}: {describe_load_error(exc, 'checkpoint')}; pass a checkpoint written by "
                              "`fuse-export train` (best.pt or last.pt)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fuse-export checkpoint (field 'format' is missing or differs); "
                              "for backbone weights use the recipe's model.pretrained")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {state['format_version']} is newer than this "
                              f"fuse-export supports ({FORMAT_VERSION}); upgrade fuse-export")
    return state


@dataclass
class LoadedModel:
    model: FusedFER
    preprocessing: Preprocessing
    state: dict[str, Any]
    path: Path


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the fused model from a checkpoint, in eval mode on the CPU."""
    state = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(state["model_config"])
        pre = Preprocessing.from_dict(state["preprocessing"])
        model = FusedFER(config)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match this model ({type(exc).__name__}: "
                              f"{_one_line(exc)}); re-train it, or use the fuse-export version that wrote it") from None
    return LoadedModel(model.eval(), pre, state, Path(path))


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one line (load_state_dict's list of keys starts on its second line)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


RESUME_KEYS = ("optimizer", "scheduler", "labels", "history", "epoch", "best_metric", "best_epoch", "rng")


def check_resume_state(state: dict[str, Any], path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Refuse to resume from a file that is not a last.pt of this architecture, before anything is loaded."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a resumable checkpoint (no {missing[0]!r}: best.pt and copies of it hold "
                              "the weights only); resume from the run's own last.pt, or train without --resume")
    mine = model.state_dict()
    theirs = state.get("model")
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{path}: field 'model' is missing; resume from the run's own last.pt")
    odd = sorted(set(mine) ^ set(theirs)) or [k for k in mine if tuple(mine[k].shape) != tuple(theirs[k].shape)]
    if odd:
        raise CheckpointError(f"{path}: written for another architecture (e.g. {odd[0]!r} differs); resume with "
                              "the recipe that run was trained with, or train into a new --out")


@contextlib.contextmanager
def run_folder(out: str | os.PathLike, resume: bool) -> Iterator[None]:
    """Hold a training run folder for one run: one writer at a time, no silent overwrite of an earlier run.

    The lock (flock on the folder) is released when the run ends or the process dies; stale temporaries of
    killed saves are removed only while holding it, so a concurrent run's temporary file is never touched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose a folder path")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = try_lock(out)
    if fd is None:
        raise UserError(f"--out {out}: another training is writing to this folder; wait for it or choose another "
                        "--out")
    try:
        existing = [p.name for p in (out / "last.pt", out / "best.pt") if p.exists()]
        if existing and not resume:
            raise UserError(f"--out {out}: holds a training run ({', '.join(existing)}); pass --resume to continue "
                            "it, or choose a new --out (nothing was overwritten)")
        remove_stale_temporaries(out)
        yield
    except BaseException:
        # A run that failed before its first checkpoint leaves no folder it created (bad data, bad weights...).
        if created and not any((out / n).exists() for n in ("last.pt", "best.pt")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def read_checkpoint_on_main(path: str | os.PathLike, ctx: DistContext) -> dict[str, Any]:
    """Rank 0 reads the checkpoint and broadcasts it, so other nodes need no shared disk; every rank raises
    the same CheckpointError if rank 0 cannot read it (rather than waiting forever for a broadcast)."""
    state, error = None, None
    if ctx.is_main:
        try:
            state = read_checkpoint(path)
        except CheckpointError as exc:
            error = str(exc)
    state, error = broadcast_object((state, error), ctx)
    if error is not None:
        raise CheckpointError(error)
    return state
