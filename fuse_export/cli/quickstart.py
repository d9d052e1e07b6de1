"""`fuse-export quickstart`: the whole pipeline on generated faces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import user_errors


@user_errors
def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("fuse-export-quickstart"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the quick recipe's epochs.")] = None,
    samples_per_class: Annotated[int, typer.Option(min=20, help="Synthetic faces per expression.")] = 600,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Model input size.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The whole pipeline on generated faces: data, train, export, bench. Minutes on 2 CPU cores."""
    from fuse_export.compare.report import bench_table, table_console
    from fuse_export.app.quickstart import run_quickstart

    result = run_quickstart(out, epochs, samples_per_class, image_size, seed=seed, progress=progress)
    table_console().print(bench_table(result.bench))
    acc = result.train.test_accuracy
    typer.echo(f"test accuracy (chance {1 / 7:.1%}): fused {acc['fused']:.1%}, DCNN head {acc['dcnn']:.1%}, "
               f"SCN head {acc['scn']:.1%}")
    typer.echo("artifacts:")
    for label, path in artifact_rows(result):
        typer.echo(f"  {label:<10} {path}")
    if result.bench.failures():
        raise typer.Exit(1)


def artifact_rows(result) -> list[tuple[str, Path]]:
    """(label, path) of each file the quickstart wrote; the optional ones (the curves need matplotlib, the `plot`
    extra) only when they are there."""
    train = result.train.out_dir
    rows = [("data", result.data), ("checkpoint", result.train.best), ("metrics", train / "metrics.csv"),
            ("curves", train / "training_curves.png"), ("manifest", result.export.manifest),
            ("bench", result.bench_json)]
    rows += [(a["format"], result.export.out_dir / a["file"]) for a in result.export.artifacts]
    return [(label, path) for label, path in rows if label != "curves" or path.is_file()]

