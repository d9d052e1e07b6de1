"""`fuse-export web`: a static web page that runs an export's ONNX model in the browser (ONNX Runtime Web)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import user_errors


@user_errors
def web(
    export_dir: Annotated[Path, typer.Argument(help="An export folder (with manifest.json) holding an ONNX artifact.")],
    out: Annotated[Path, typer.Option(help="The site folder to write.")] = Path("fuse-export-web"),
    ort_dist: Annotated[Optional[Path], typer.Option(
        help="onnxruntime-web's dist folder (default: node_modules/onnxruntime-web/dist here or in a parent "
             "folder; `npm install --ignore-scripts onnxruntime-web`).")] = None,
    cdn: Annotated[bool, typer.Option(help="Load ONNX Runtime Web from jsDelivr instead of copying its files.")] = False,
    artifact: Annotated[Optional[str], typer.Option(
        help="Which ONNX file of the export (default: the fp32 one).")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it is a site this command wrote.")] = False,
) -> None:
    """A static site (page, JS module, verified model, ONNX Runtime Web) that predicts in the browser."""
    from fuse_export.deploy.web import build_site

    result = build_site(export_dir, out, ort_dist=ort_dist, cdn=cdn, force=force, artifact=artifact)
    typer.echo(f"site: {result.out}  ({len(result.files)} files, {result.size_bytes / 1e6:.1f} MB)")
    typer.echo(f"model: {result.artifact} -> model.onnx (sha256 {result.sha256[:16]}…, verified; the page checks it "
               "again before it runs)")
    typer.echo(f"onnxruntime-web {result.ort_version or '(version unknown)'}: {result.ort_source}")
    typer.echo(f"try it: fuse-export web-serve {result.out}  (2 wasm threads; any static server gives 1)")
