"""`fuse-export bench`: latency, throughput, parity and accuracy of every backend; table, JSON, CSV, plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import check_output_file, int_list, user_errors


@user_errors
def bench(
    folder: Annotated[Path, typer.Argument(help="An export folder (with manifest.json).")],
    backends: Annotated[Optional[str], typer.Option(help="Comma-separated backends; default all.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    warmup: Annotated[int, typer.Option(min=0)] = 5,
    iterations: Annotated[int, typer.Option(min=1)] = 30,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads for every backend.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="A data set (any supported format): parity and accuracy on its test split.")] = None,
    data_format: Annotated[Optional[str], typer.Option(
        help="Format of --data (default: fer2013-csv for a .csv, image-folder for a folder).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Eager reference (default: the manifest's).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV line per row here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also plot latency and throughput vs batch (PNG).")] = None,
    min_time: Annotated[float, typer.Option(min=0.0, help="Minimum timed seconds per row (adaptive count).")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds across all rows.")] = 3,
    reference: Annotated[Optional[Path], typer.Option(
        help="Compare against saved results (reference.npz) instead of running the checkpoint.")] = None,
    save_results: Annotated[Optional[Path], typer.Option(
        help="Save the inputs and reference outputs (.npz) for a later --reference.")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Override the parity bound (see export).")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative part of the parity bound.")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="cpu: CPU backends only; cuda or cuda:N: the CUDA backends, on that GPU.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    verify: Annotated[bool, typer.Option(help="Check every artifact against its manifest sha256 first.")] = True,
) -> None:
    """Latency, throughput, parity and accuracy for every backend available here (exit 1 on a parity failure)."""
    from fuse_export.compare.bench import BenchOptions
    from fuse_export.compare.report import bench_csv, bench_json, bench_plot, bench_table, table_console
    from fuse_export.exporters.options import parse_device
    from fuse_export.fileio import atomic_open, write_json
    from fuse_export.cpuinfo import check_threads
    from fuse_export.extras import require
    from fuse_export.app.api import bench as bench_api

    sizes = int_list(batch_sizes, "--batch-sizes")
    check_threads(threads)
    if plot is not None:  # before the bench runs, not after it
        require("plot", "--plot")
    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (plot, "--plot"), (save_results, "--save-results")):
        if path is not None:
            check_output_file(path, option)
    if checkpoint is not None:  # a refused or broken file is the command line's problem (exit 2), found up front
        from fuse_export.training.checkpoint import read_checkpoint

        read_checkpoint(checkpoint)
    keys = tuple(k.strip().lower() for k in backends.split(",") if k.strip()) if backends else None
    opts = BenchOptions(keys, tuple(sizes), warmup, iterations, min_time, rounds, threads, data, data_format,
                        checkpoint=str(checkpoint) if checkpoint else None,
                        reference=str(reference) if reference else None,
                        save_results=str(save_results) if save_results else None, atol=atol, rtol=rtol,
                        device=parse_device(device), verify=verify)
    report = bench_api(folder, opts, progress=progress)
    table_console().print(bench_table(report))
    if json_out:
        write_json(json_out, bench_json(report, {"batch_sizes": sizes, "warmup": warmup, "iterations": iterations,
                                                 "min_time_s": min_time, "rounds": rounds, "threads": threads,
                                                 "atol": atol, "rtol": rtol, "device": opts.device}))
        typer.echo(f"json: {json_out}")
    if csv_out:
        with atomic_open(csv_out, "w") as fh:
            fh.write(bench_csv(report))
        typer.echo(f"csv: {csv_out}")
    if plot:
        typer.echo(f"plot: {bench_plot(report, plot)}")
    if save_results:
        typer.echo(f"results: {save_results}  (fuse-export bench {folder} --reference {save_results})")
    if report.failures():
        for r in report.failures():
            typer.echo(f"error: {r.parity.explain() if r.parity is not None else r.reason}", err=True)
        raise typer.Exit(1)


