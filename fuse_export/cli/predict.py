"""`fuse-export predict`: emotions of photos (or of each face in them) through an exported artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import OnBad, user_errors


@user_errors
def predict(
    model: Annotated[Path, typer.Argument(help="An export folder or one artifact file (model.onnx, ...).")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    backend: Annotated[Optional[str], typer.Option(help="Backend key (default: the fastest available).")] = None,
    detect_faces: Annotated[bool, typer.Option(help="Find faces (OpenCV Haar cascade) and predict each.")] = False,
    margin: Annotated[float, typer.Option(min=0.0, max=1.0, help="Face crop margin, share of the box.")] = 0.2,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verify: Annotated[bool, typer.Option(help="Check the artifact against its manifest sha256 first.")] = True,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N: the fastest artifact there (default: "
                                                       "the fastest anywhere).")] = None,
    on_bad: Annotated[OnBad, typer.Option(help="Unreadable images: fail at the first, or skip and list them "
                                               "(stderr; --json: \"skipped\").")] = OnBad.fail,
) -> None:
    """Emotion, probability and SCN confidence per photo, or per face with --detect-faces."""
    import json

    from fuse_export.cpuinfo import check_threads
    from fuse_export.inference.photos import predict_photos, predictions_console, predictions_table

    check_threads(threads)
    sel, results, skipped = predict_photos(model, images, backend, detect_faces, margin, threads, verify=verify,
                                           device=device, on_bad=OnBad(on_bad).value)
    if sel.warning:  # a lone artifact, or an unlisted one under --no-verify: ran, but nothing checked its bytes
        typer.echo(f"warning: {sel.warning}", err=True)
    for s in skipped:  # --on-bad skip: one line per image left out
        typer.echo(f"skipped {s.image}: {s.reason}", err=True)
    if json_out:
        doc = {"model": str(sel.path or sel.checkpoint), "backend": sel.backend,
               "class_names": list(sel.pre.class_names), "results": [r.to_dict() for r in results],
               "skipped": [s.to_dict() for s in skipped]}
        typer.echo(json.dumps(doc, indent=2))
    else:
        predictions_console().print(predictions_table(sel, results))

