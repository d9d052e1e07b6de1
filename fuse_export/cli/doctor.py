"""`fuse-export doctor`: every backend, whether it can run here and why not."""

from __future__ import annotations

from typing import Annotated

import typer

from fuse_export.cli.common import user_errors


@user_errors
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text and a table.")] = False,
) -> None:
    """Every backend, whether it can run here and why not (CUDA, onnxruntime-gpu, TensorRT, versions)."""
    import json

    from fuse_export.compare.report import table_console
    from fuse_export.app.doctor import doctor_report, doctor_table, environment_lines

    report = doctor_report()
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in environment_lines(report["environment"]):
        typer.echo(line)
    table_console().print(doctor_table(report["backends"]))

