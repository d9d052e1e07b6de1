"""`fuse-export audit-labels`: samples ranked by how likely their label is wrong."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import run_device, user_errors


class AuditSplit(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class AuditMethod(str, Enum):
    auto = "auto"
    aum = "aum"
    crossfit = "crossfit"
    model = "model"


@user_errors
def audit_labels(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `fuse-export train` (best.pt).")],
    data: Annotated[str, typer.Option(help="The data set to audit (in the checkpoint recipe's data format).")],
    split: Annotated[AuditSplit, typer.Option(help="Which split's labels to audit.")] = AuditSplit.train,
    method: Annotated[AuditMethod, typer.Option(
        help="What ranks the samples: aum (training dynamics saved with the run), crossfit (--folds models, each "
             "scoring the fold it did not train on), model (the checkpoint's own probabilities: in-sample on the "
             "train split), or auto (the measured best: aum on train, model elsewhere).")] = AuditMethod.auto,
    folds: Annotated[int, typer.Option(min=2, help="crossfit: fold models to train (the recipe, capped epochs).")] = 5,
    fold_epochs: Annotated[int, typer.Option(min=0, help="crossfit: epochs per fold model (0: the recipe's, at "
                                                         "most 8).")] = 0,
    per_class: Annotated[bool, typer.Option(help="Per-class thresholds (confident learning), so classes the model "
                                                 "is unsure of (rare ones) do not flood the top: for imbalanced "
                                                 "sets.")] = False,
    top: Annotated[int, typer.Option(min=1, help="Rows of the table (the CSV holds every sample).")] = 20,
    out: Annotated[Optional[Path], typer.Option(help="Write every sample, most suspicious first, to this CSV.")] = None,
    device: Annotated[str, typer.Option(help="Where to run the model: auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
) -> None:
    """Rank samples by how likely their label is wrong (out-of-sample evidence), with SCN's alpha and margin."""
    from fuse_export.audit import AuditOptions, audit_checkpoint, audit_table, write_audit_csv
    from fuse_export.compare.report import table_console

    options = AuditOptions(split=split.value, method=method.value, folds=folds, fold_epochs=fold_epochs,
                           per_class=per_class, batch_size=batch_size, device=run_device(device))
    audit = audit_checkpoint(checkpoint, data, options)
    for line in audit.warnings:
        typer.echo(line, err=True)
    table_console().print(audit_table(audit, top))
    if out is not None:
        write_audit_csv(audit, out)
        typer.echo(f"csv: {out} ({len(audit)} samples, most suspicious first, ranked by {audit.method})")

