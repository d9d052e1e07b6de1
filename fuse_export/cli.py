"""The `fuse-export` command line: a thin Typer shell over the library. Heavy imports live in the commands."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fuse_export.errors import UserError

app = typer.Typer(
    name="fuse-export",
    help="Train, export, verify and benchmark a fused DCNN + Self-Cure Network facial-emotion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option} {text!r}: expected positive integers, e.g. 1,8,32")
    return values


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
@user_errors
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe TOML file, or a name from recipes/ (e.g. fer2013).")],
    data: Annotated[Optional[str], typer.Option(help="Data set path (overrides the recipe's data.path).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and metrics.")] = Path("runs/train"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override train.epochs.")] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    seed: Annotated[Optional[int], typer.Option(help="Override train.seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train the fused network (stage 1: trunk + DCNN + SCN heads; stage 2: the stacker)."""
    from fuse_export.train.recipe import load_recipe
    from fuse_export.train.trainer import run_training
    from fuse_export.workflow import resolve_recipe

    r = load_recipe(resolve_recipe(recipe))
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seed is not None:
        changes["seed"] = seed
    if changes:
        r = r.replace(train=changes)
    result = run_training(r, data, out, device=device.value, resume=resume, progress=progress)
    typer.echo(f"best checkpoint: {result.best} (epoch {result.best_epoch}); last: {result.last}")


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `fuse-export train` (best.pt).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: torchscript,onnx.")] = "torchscript,onnx",
    out: Annotated[Path, typer.Option(help="Output folder (artifacts + manifest.json).")] = Path("runs/export"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    static_batch: Annotated[bool, typer.Option(help="Fix the batch size instead of a dynamic batch axis.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of a --static-batch export.")] = 1,
) -> None:
    """Export to TorchScript and/or ONNX; every artifact is verified against eager PyTorch."""
    from fuse_export.export.formats import parse_formats
    from fuse_export.workflow import export_checkpoint

    result = export_checkpoint(checkpoint, parse_formats(format), out, opset=opset, static_batch=static_batch,
                               batch=batch)
    for a in result.artifacts:
        typer.echo(f"{a['format']:<12} {out / a['file']}  ({a['size_bytes'] / 1e6:.1f} MB, sha256 {a['sha256'][:12]})")
    typer.echo(f"manifest: {result.manifest}")


@app.command()
@user_errors
def bench(
    folder: Annotated[Path, typer.Argument(help="An export folder (with manifest.json).")],
    backends: Annotated[Optional[str], typer.Option(help="Comma-separated backends; default all.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    warmup: Annotated[int, typer.Option(min=0)] = 5,
    iterations: Annotated[int, typer.Option(min=1)] = 30,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads for every backend.")] = None,
    data: Annotated[Optional[str], typer.Option(help="FER-2013 CSV: parity and accuracy on its test split.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Eager reference (default: the manifest's).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Latency, throughput, parity against eager, and accuracy for every backend available here."""
    from fuse_export.compare.bench import run_bench
    from fuse_export.compare.report import bench_json, bench_table, table_console
    from fuse_export.fileio import write_json
    from fuse_export.runners.registry import parse_backends

    sizes = _int_list(batch_sizes, "--batch-sizes")
    report = run_bench(folder, parse_backends(backends), sizes, warmup, iterations, threads, data,
                       str(checkpoint) if checkpoint else None, progress=progress)
    table_console().print(bench_table(report))
    if json_out:
        write_json(json_out, bench_json(report, {"batch_sizes": sizes, "warmup": warmup, "iterations": iterations,
                                                 "threads": threads}))
        typer.echo(f"json: {json_out}")
    if report.failures():
        for r in report.failures():
            typer.echo(f"error: {r.parity.explain() if r.parity is not None else r.reason}", err=True)
        raise typer.Exit(1)


@app.command()
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
    from fuse_export.quickstart import run_quickstart

    result = run_quickstart(out, epochs, samples_per_class, image_size, seed=seed, progress=progress)
    table_console().print(bench_table(result.bench))
    acc = result.train.test_accuracy
    typer.echo(f"test accuracy (chance {1 / 7:.1%}): fused {acc['fused']:.1%}, DCNN head {acc['dcnn']:.1%}, "
               f"SCN head {acc['scn']:.1%}")
    typer.echo("artifacts:")
    for label, path in (("data", result.data), ("checkpoint", result.train.best),
                        ("metrics", result.train.out_dir / "metrics.csv"),
                        ("curves", result.train.out_dir / "training_curves.png"),
                        ("manifest", result.export.manifest), ("bench", result.bench_json)):
        typer.echo(f"  {label:<10} {path}")
    for a in result.export.artifacts:
        typer.echo(f"  {a['format']:<10} {result.export.out_dir / a['file']}")
    if result.bench.failures():
        raise typer.Exit(1)


def main() -> None:
    # Quiet the TorchScript deprecation chatter in every subprocess we might spawn (torch.jit is legacy upstream).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    app()
