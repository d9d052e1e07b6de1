"""Per-epoch metrics: JSON lines and CSV (rewritten atomically from the history each epoch), TensorBoard
event files when the optional `tensorboard` package is installed, and a PNG of the curves at the end."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

from fuse_export.fileio import atomic_open, os_errors_named


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


def _tag(key: str) -> str:
    """Group scalars in TensorBoard: val/..., loss/..., train/..."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key.startswith("loss"):
        return f"loss/{key[5:] or 'total'}"
    return f"train/{key}"


class TensorBoardLog:
    """Scalars per epoch under `out_dir/tensorboard` (`tensorboard --logdir OUT/tensorboard`).

    Without the `tensorboard` package (pip install 'fuse-export[tensorboard]') it does nothing, quietly:
    metrics.csv and metrics.jsonl carry the same numbers.

    TensorBoard writes from a thread of its own; when a write fails (a full disk) that thread dies with a
    traceback on stderr, and the main thread gets the same error at its next `log`. While open, this class
    silences the thread's report (only for OSErrors of TensorBoard's writer thread), so the error reaches the
    user once, as one line naming the folder.
    """

    def __init__(self, out_dir: Path, start_epoch: int = 1, enabled: bool = True) -> None:
        self.writer: Any = None
        self.folder = out_dir / "tensorboard"
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_error
        try:
            with os_errors_named(self.folder):
                # purge_step: after a resume, events the interrupted run wrote past its last checkpoint are hidden.
                self.writer = SummaryWriter(str(self.folder), purge_step=start_epoch if start_epoch > 1 else None)
        except BaseException:
            self._restore_hook()
            raise

    def _thread_error(self, args: Any) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return  # the main thread re-raises it from its next log() or close()
        self._previous_hook(args)

    def _restore_hook(self) -> None:
        if threading.excepthook == self._thread_error:
            threading.excepthook = self._previous_hook

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        with os_errors_named(self.folder):
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(_tag(key), value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            with os_errors_named(self.folder):
                writer.close()  # joins the writer thread: its error, if any, has gone through _thread_error now
        finally:
            self._restore_hook()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        with contextlib.suppress(OSError):  # the error already on its way out (e.g. a checkpoint's) is the one told
            self.close()
