"""Per-epoch metrics, written as JSON lines and CSV (rewritten atomically from the history each epoch)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from fuse_export.fileio import atomic_open


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl (one object per epoch) and metrics.csv (same columns) in `out_dir`."""
    with atomic_open(out_dir / "metrics.jsonl") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    with atomic_open(out_dir / "metrics.csv") as fh:
        fh.write(buf.getvalue())


def plot_history(out_dir: Path, history: list[dict[str, Any]]) -> Path | None:
    """training_curves.png: losses and the accuracy of each head and of the fused output (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from fuse_export.fileio import atomic_path

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("loss_dcnn", "loss_scn", "loss_rank"):
        ax1.plot(epochs, [r[key] for r in history], marker="o", label=key)
    ax1.set_xlabel("epoch"), ax1.set_title("training losses"), ax1.legend()
    for key in ("val_acc_dcnn", "val_acc_scn", "val_acc_fused"):
        ax2.plot(epochs, [r[key] for r in history], marker="o", label=key)
    ax2.set_xlabel("epoch"), ax2.set_title("validation accuracy"), ax2.legend()
    fig.tight_layout()
    path = out_dir / "training_curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
