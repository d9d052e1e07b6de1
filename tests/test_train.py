import json

import torch

from fuse_export.training.checkpoint import load_model, read_checkpoint

class Evil:
    """An arbitrary object: loading a checkpoint must never unpickle one."""


EXPECTED_COLUMNS = {"epoch", "loss_dcnn", "loss_scn", "loss_rank", "val_acc_dcnn", "val_acc_scn", "val_acc_fused",
                    "relabeled_epoch", "relabeled_total", "images_per_s"}


def test_run_writes_checkpoints_metrics_summary(tiny_run):
    out = tiny_run.out_dir
    for name in ("best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "summary.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert EXPECTED_COLUMNS <= set(rows[0])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert EXPECTED_COLUMNS <= set(header)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test_accuracy"]) == {"dcnn", "scn", "fused"}
    assert summary["holdout_samples"] > 0 and summary["train_samples"] > summary["holdout_samples"]


def test_checkpoint_is_plain_data_and_rebuilds_the_model(tiny_run):
    state = torch.load(tiny_run.best, weights_only=True)  # no arbitrary unpickling
    assert state["class_names"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert state["preprocessing"]["image_size"] == 40
    assert {"torch", "torchvision", "fuse_export"} <= set(state["versions"])
    loaded = load_model(tiny_run.best)
    assert loaded.preprocessing.num_classes == 7
    last = read_checkpoint(tiny_run.last)
    assert {"optimizer", "scheduler", "labels", "rng", "history"} <= set(last)


def test_relabeled_labels_are_counted(tiny_run):
    last = read_checkpoint(tiny_run.last)
    rows = tiny_run.history
    assert rows[-1]["relabeled_total"] == tiny_run.relabeled
    assert last["labels"].shape[0] == json.loads((tiny_run.out_dir / "summary.json").read_text())["train_samples"]


def test_foreign_checkpoint_is_refused(tmp_path):
    import pytest

    from fuse_export.errors import CheckpointError

    p = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="not a fuse-export checkpoint"):
        read_checkpoint(p)
    torch.save({"format": "fuse-export-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(tmp_path / "evil.pt")
