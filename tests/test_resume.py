"""Exact resume: an interrupted run continued with --resume ends with the same tensors as an uninterrupted
one (CPU, default settings); an interrupted checkpoint write never leaves a broken file under the real name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from fuse_export.errors import CheckpointError
from fuse_export.training.checkpoint import read_checkpoint, remove_stale_temporaries
from fuse_export.training.recipe import Recipe, load_recipe
from fuse_export.training.trainer import run_training

ROOT = Path(__file__).parents[1]
TIMING = {"seconds", "images_per_s"}  # wall-clock figures: the only things allowed to differ
PROVENANCE = {"recipe", "versions"}  # the resumed run's recipe differs in num_workers only


def resume_recipe(**train: Any) -> Recipe:
    """3 epochs of 2 steps, relabeling from epoch 2 (labels change), dropout on (the RNG matters)."""
    return load_recipe(ROOT / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 32, "limit": 80}, model={"dcnn_dropout": 0.3},
        train={"epochs": 3, "batch_size": 32, **train}, scn={"relabel_epoch": 2, "relabel_scope": "all"})


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Every tensor bit for bit, every number and string equal, timing fields aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        keys = set(a) - TIMING - PROVENANCE
        assert keys == set(b) - TIMING - PROVENANCE, f"{where}: keys {sorted(keys ^ (set(b) - TIMING))}"
        for k in sorted(keys, key=str):
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Interrupt(KeyboardInterrupt):
    """Ctrl-C right after an epoch's checkpoint was written."""


@pytest.fixture(scope="module")
def straight(noisy_bars, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = run_training(resume_recipe(), str(noisy_bars[0]), out, device="cpu", progress=False)
    assert result.relabeled > 0, "the case must exercise relabeled labels"
    return out


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_at_an_epoch_boundary_gives_the_same_final_state(straight, noisy_bars, tmp_path, stop_after):
    def interrupt(epoch: int, _row: dict) -> None:
        if epoch == stop_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(resume_recipe(), str(noisy_bars[0]), tmp_path, device="cpu", progress=False,
                     on_epoch_end=interrupt)
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == stop_after
    # Workers load the resumed half: augmentation is seeded per sample, so this must not change a bit.
    run_training(resume_recipe(num_workers=2), str(noisy_bars[0]), tmp_path, device="cpu", resume=True,
                 progress=False)
    for name in ("last.pt", "best.pt"):
        # model (trunk, heads, BatchNorm statistics, stacker), optimizer moments and steps, scheduler,
        # grad scaler, relabeled labels, every RNG state, history and best-epoch bookkeeping
        assert_identical(read_checkpoint(straight / name), read_checkpoint(tmp_path / name), name)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, tmp_path))
    assert a["test_accuracy"] == b["test_accuracy"] and a["relabeled_total"] == b["relabeled_total"]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")  # fp16 skips overflowed steps
def test_resume_with_fp16_grad_scaler(noisy_bars, tmp_path):
    """The grad scaler's state (scale, growth tracker) is saved and restored; CPU fp16 autocast here
    (one step of 8 per epoch: fp16 convolutions are very slow on the CPU)."""
    recipe = resume_recipe(amp="fp16", epochs=2, batch_size=8).replace(data={"limit": 16, "image_size": 32})
    whole = run_training(recipe, str(noisy_bars[0]), tmp_path / "whole", device="cpu", progress=False)
    scaler = read_checkpoint(whole.last)["scaler"]
    # It must have moved from its initial state (scale 2**16, tracker 0), or restoring it proves nothing.
    assert scaler["scale"] != 2.0**16 or scaler["_growth_tracker"] > 0

    def stop(epoch: int, _row: dict) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        run_training(recipe, str(noisy_bars[0]), tmp_path / "split", device="cpu", progress=False, on_epoch_end=stop)
    run_training(recipe, str(noisy_bars[0]), tmp_path / "split", device="cpu", resume=True, progress=False)
    assert_identical(read_checkpoint(whole.last), read_checkpoint(tmp_path / "split" / "last.pt"))


def test_resume_without_a_checkpoint_is_a_clear_error(noisy_bars, tmp_path):
    with pytest.raises(CheckpointError, match="last.pt: checkpoint not found"):
        run_training(resume_recipe(), str(noisy_bars[0]), tmp_path, device="cpu", resume=True, progress=False)


def test_tensorboard_events_hold_the_epoch_metrics(straight):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(straight / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/acc_fused")] == [1, 2, 3]
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("loss/dcnn")] == pytest.approx([r["loss_dcnn"] for r in rows])


# ------------------------------------------------------------------ interrupted writes


def test_a_failed_save_keeps_the_previous_checkpoint(tiny_run, tmp_path, monkeypatch):
    import shutil

    from fuse_export.training import checkpoint

    last = tmp_path / "last.pt"
    shutil.copy(tiny_run.last, last)
    before = last.read_bytes()
    loaded = checkpoint.load_model(last)

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(last, loaded.model, loaded.preprocessing, {}, epoch=99)
    assert last.read_bytes() == before
    assert read_checkpoint(last)["epoch"] != 99
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temporary file is cleaned up"


def test_a_killed_save_leaves_the_real_name_intact(tiny_run, tmp_path):
    """SIGKILL mid-write: no cleanup code runs at all; the real name must still hold the old checkpoint."""
    import shutil

    last = tmp_path / "last.pt"
    shutil.copy(tiny_run.last, last)
    before = last.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, torch
        from fuse_export.training import checkpoint
        loaded = checkpoint.load_model({str(last)!r})
        def killed(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = killed
        checkpoint.save_checkpoint({str(last)!r}, loaded.model, loaded.preprocessing, {{}}, epoch=99)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert last.read_bytes() == before
    stale = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(stale) == 1 and stale[0].startswith(".last.pt.") and stale[0].endswith(".tmp")
    # the trainer sweeps such leftovers when it starts in that folder
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == stale
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
