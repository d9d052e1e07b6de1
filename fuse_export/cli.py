"""The `fuse-export` command line: a thin Typer shell over the library. Heavy imports live in the commands."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fuse_export.contract import MAX_BATCH  # the exported graphs' batch axis range
from fuse_export.errors import UserError

app = typer.Typer(
    name="fuse-export",
    help="Train, export, verify and benchmark a fused DCNN + Self-Cure Network facial-emotion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from fuse_export import __version__

        typer.echo(f"fuse-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Train, export, verify and benchmark a fused DCNN + Self-Cure Network facial-emotion model."""


# Packages of the `train` extra: the slim runtime install (`pip install -e .`) runs exported models without them.
TRAIN_ONLY = ("torch", "torchvision", "onnx", "onnxscript", "safetensors")


def train_only_missing(exc: ModuleNotFoundError) -> str | None:
    """The `train`-extra package whose absence raised `exc`, or None (then it is a real error, not the slim install)."""
    import importlib.util

    top = (exc.name or "").partition(".")[0]
    if top not in TRAIN_ONLY:
        return None
    try:
        return top if importlib.util.find_spec(top) is None else None
    except (ImportError, ValueError):  # sys.modules[top] is None: import of it blocked, as absent as it gets
        return top


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into one line on stderr and its exit code (2; 1 for an artifact that fails integrity),
    and a file-system refusal (read-only folder, full disk, a folder where a file goes) into one line, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            missing = train_only_missing(exc)
            if missing is None:
                raise
            typer.echo(f"error: `fuse-export {fn.__name__.replace('_', '-')}` needs {missing}, which the slim runtime "
                       "install leaves out: pip install 'fuse-export[train]'", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno is None or exc.errno == errno.EPIPE:
                raise
            typer.echo(f"error: {os_error_line(exc)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


_OS_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EACCES: "choose a location you may write to (or fix its permissions)",
    errno.EPERM: "choose a location you may write to (or fix its permissions)",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EISDIR: "a folder is in the way where a file goes; remove it or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder goes; choose another path",
    errno.EEXIST: "something is in the way; remove it or choose another path",
    errno.ENOTEMPTY: "a non-empty folder is in the way; remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def os_error_line(exc: OSError) -> str:
    """'PATH: what the system said; the fix' for a refused read or write."""
    where = exc.filename if exc.filename is not None else "?"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and try again")
    return f"{where}: {exc.strerror or exc}; {fix}"


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option} {text!r}: expected positive integers, e.g. 1,8,32")
    if max(values) > MAX_BATCH:
        raise UserError(f"{option} {text!r}: at most {MAX_BATCH} (the exported batch axis' range)")
    return values


def _check_output_file(path: Path, option: str) -> None:
    """Refuse an output file path that cannot be written, before any work: a folder, under a file, or a device,
    pipe or socket (/dev/full, /dev/stdout): writes are atomic (a temporary file renamed over the path), which
    would replace the device node itself rather than write to it."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file path inside it instead")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path}: is not a regular file (a device, pipe or socket); give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder; choose another path")


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as a TOML value (3, 0.2, true, "x", [..]) is one, else a string."""
    from fuse_export.train.recipe import tomllib  # the stdlib module, or tomli before Python 3.11

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"{option} {item!r}: expected KEY=VALUE, e.g. fold=3")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def _run_device(text: str) -> str:
    """--device of the commands that run a model: auto, cpu, cuda or cuda:N (a UserError otherwise)."""
    from fuse_export.export.options import parse_device

    return "auto" if text.strip().lower() == "auto" else str(parse_device(text))


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class OnBad(str, Enum):
    fail = "fail"
    skip = "skip"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Int8Scheme(str, Enum):
    auto = "auto"
    u8s8 = "u8s8"
    s8s8 = "s8s8"


class Int8Weights(str, Enum):  # export/int8_weights.INT8_WEIGHTS
    auto = "auto"
    bits8 = "8"
    bits7 = "7"


@app.command()
@user_errors
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe TOML file, or a name from recipes/ (e.g. fer2013).")],
    data: Annotated[Optional[str], typer.Option(help="Data set path (overrides the recipe's data.path).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and metrics.")] = Path("runs/train"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override train.epochs.")] = None,
    device: Annotated[str, typer.Option(help="Where to train: auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Override train.seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    limit: Annotated[Optional[int], typer.Option(min=0, help="At most N samples per split (data.limit; 0 = all).")] = None,
    on_bad: Annotated[Optional[OnBad], typer.Option(help="Bad files: fail at the first, or skip and list them.")] = None,
    angles: Annotated[Optional[str], typer.Option(help="KDEF views, e.g. S,HL,HR (data.options.angles).")] = None,
    data_option: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE into data.options, e.g. fold=3 (repeatable).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Trunk weights file, or 'imagenet' (torch hub cache; downloaded if absent).")] = None,
    offline: Annotated[bool, typer.Option(help="Never download weights (also FUSE_EXPORT_OFFLINE=1).")] = False,
    allow_partial_weights: Annotated[bool, typer.Option(help="Accept weights that fill only part of the trunk.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help="Override train.batch_size (the GLOBAL batch).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(min=0, help="Override train.num_workers (per process).")] = None,
    amp: Annotated[Optional[Amp], typer.Option(help="Override train.amp (mixed precision).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option(help="Override train.channels_last.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Override train.compile.")] = None,
) -> None:
    """Train the fused network (stage 1: trunk + DCNN + SCN heads; stage 2: the stacker).

    Multi-GPU / multi-node: `torchrun --nproc-per-node N -m fuse_export train RECIPE ...` (DDP).
    """
    from fuse_export.train.recipe import load_recipe
    from fuse_export.train.trainer import run_training
    from fuse_export.workflow import resolve_recipe

    r = load_recipe(resolve_recipe(recipe))
    if offline:
        from fuse_export.model.weights import OFFLINE_ENV

        os.environ[OFFLINE_ENV] = "1"  # read where `imagenet` is resolved (also by torchrun's child processes)
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if seed is not None:
        changes["seed"] = seed
    speed = {"batch_size": batch_size, "num_workers": num_workers, "amp": amp.value if amp else None,
             "channels_last": channels_last, "compile": compile}
    changes.update({k: v for k, v in speed.items() if v is not None})
    if changes:
        r = r.replace(train=changes)
    data_options = {**r.data.options, **_key_values(data_option or [], "--data-option"),
                    **({"on_bad": on_bad.value} if on_bad else {}), **({"angles": angles} if angles else {})}
    r = r.replace(data={"options": data_options, **({"limit": limit} if limit is not None else {})})
    if pretrained is not None or allow_partial_weights:
        r = r.replace(model={"pretrained": r.model.pretrained if pretrained is None else pretrained,
                             "allow_partial_weights": allow_partial_weights or r.model.allow_partial_weights})
    result = run_training(r, data, out, device=_run_device(device), resume=resume, progress=progress)
    typer.echo(f"best checkpoint: {result.best} (epoch {result.best_epoch}); last: {result.last}")


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `fuse-export train` (best.pt).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: torchscript,onnx,pt2,openvino,tensorrt (GPU).")] = "torchscript,onnx",
    out: Annotated[Path, typer.Option(help="Output folder (artifacts + manifest.json).")] = Path("runs/export"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    static_batch: Annotated[bool, typer.Option(help="Fix the batch size instead of a dynamic batch axis.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of a --static-batch export.")] = 1,
    precision: Annotated[str, typer.Option(
        help="Comma-separated: fp32, fp16, int8 (fp16/int8: onnx, tensorrt; int8: openvino).")] = "fp32",
    embed_preprocessing: Annotated[bool, typer.Option(
        help="Take raw uint8 RGB [N, H, W, 3] and normalize inside the graph.")] = False,
    calibration_data: Annotated[Optional[Path], typer.Option(
        help="int8 calibration images: a FER-2013 CSV or a folder of images (also used to verify).")] = None,
    calibration_samples: Annotated[int, typer.Option(min=1, help="How many calibration images to use.")] = 512,
    calibration_method: Annotated[CalibrationMethod, typer.Option(
        help="How int8 activation ranges are set from the calibration images.")] = CalibrationMethod.minmax,
    int8_scheme: Annotated[Int8Scheme, typer.Option(
        help="int8 Q/DQ types: u8s8 (fast on ONNX Runtime CPU), s8s8 (TensorRT); auto: s8s8 with --format "
             "tensorrt.")] = Int8Scheme.auto,
    int8_weights: Annotated[Int8Weights, typer.Option(
        help="int8 weight range: 8 bits, or 7 for x86 CPUs without VNNI (8-bit weights saturate there); auto: 7 "
             "when this CPU lacks VNNI. Recorded in the manifest.")] = Int8Weights.auto,
    force: Annotated[bool, typer.Option(
        help="Replace OUT whole when it holds another checkpoint's artifacts.")] = False,
    atol: Annotated[Optional[float], typer.Option(
        min=0.0, help="Bound on |Δ| of probabilities and confidence (default per precision); recorded.")] = None,
    rtol: Annotated[Optional[float], typer.Option(
        min=0.0, help="Add rtol*|reference| to the bound (default 0); recorded in the manifest.")] = None,
    keep_failed: Annotated[bool, typer.Option(
        help="Keep an artifact that fails parity on disk (NAME.failed.EXT), out of the manifest.")] = False,
    verify_data: Annotated[Optional[Path], typer.Option(
        help="Images to verify on (any data-set format, or a folder of images). Default: the calibration "
             "data, else the data the checkpoint was trained on, else noise (with a warning).")] = None,
    verify_data_format: Annotated[Optional[str], typer.Option(
        help="Format of --verify-data (default: fer2013-csv for a .csv, else a folder of images).")] = None,
    verify_samples: Annotated[int, typer.Option(min=1, help="How many images to verify on.")] = 64,
    simplify: Annotated[bool, typer.Option(
        help="Simplify the fp32 ONNX graph with onnxslim (needs the `simplify` extra).")] = False,
    optimize: Annotated[bool, typer.Option(
        help="torch.onnx.export's graph optimizer; --no-optimize when it breaks a graph.")] = True,
    device: Annotated[Optional[str], typer.Option(
        help="Where GPU formats (TensorRT) are built and verified: cuda or cuda:N.")] = None,
) -> None:
    """Export to TorchScript, ONNX, ...; every artifact is verified against eager PyTorch (exit 1 if one fails)."""
    from fuse_export.export.options import ExportOptions, VerifyOptions, parse_device
    from fuse_export.pipeline import export as export_api

    options = ExportOptions(opset=opset, static_batch=static_batch, batch=batch,
                            embed_preprocessing=embed_preprocessing, calibration_data=calibration_data,
                            calibration_samples=calibration_samples,
                            calibration_method=CalibrationMethod(calibration_method).value,
                            int8_scheme=Int8Scheme(int8_scheme).value, int8_weights=Int8Weights(int8_weights).value,
                            simplify=simplify, optimize=optimize,
                            device=parse_device(device))
    verify = VerifyOptions(atol=atol, rtol=rtol, keep_failed=keep_failed, data=verify_data,
                           data_format=verify_data_format, samples=verify_samples)
    manifest = export_api(checkpoint, format, precision, out, options, verify, force=force)
    for name in manifest.parity:
        a = next(x for x in manifest.artifacts if x["file"] == name)
        typer.echo(f"{a['format']:<12} {a['precision']:<5} {out / a['file']}  ({a['size_bytes'] / 1e6:.1f} MB, "
                   f"sha256 {a['sha256'][:12]})")
    typer.echo(f"manifest: {manifest.path}")
    if manifest.reference is not None:
        typer.echo(f"reference: {manifest.reference}  (fuse-export bench {out} --reference {manifest.reference})")


@app.command()
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
    from fuse_export.export.options import parse_device
    from fuse_export.fileio import atomic_open, write_json
    from fuse_export.cpuinfo import check_threads
    from fuse_export.pipeline import bench as bench_api

    sizes = _int_list(batch_sizes, "--batch-sizes")
    check_threads(threads)
    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (plot, "--plot"), (save_results, "--save-results")):
        if path is not None:
            _check_output_file(path, option)
    if checkpoint is not None:  # a refused or broken file is the command line's problem (exit 2), found up front
        from fuse_export.train.checkpoint import read_checkpoint

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


@app.command("triton-repo")
@user_errors
def triton_repo(
    artifacts_dir: Annotated[Path, typer.Argument(help="An export folder (with manifest.json).")],
    out: Annotated[Path, typer.Option(help="Model repository folder to write.")] = Path("triton-repo"),
    max_batch_size: Annotated[int, typer.Option(min=1, help="Triton max_batch_size of every model.")] = 32,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    force: Annotated[bool, typer.Option(help="Replace OUT (a model repository) if it exists.")] = False,
    verify: Annotated[bool, typer.Option(help="Check every artifact against its manifest sha256 first.")] = True,
) -> None:
    """A Triton Inference Server model repository (config.pbtxt, labels, model files) from an export folder."""
    from fuse_export.triton_repo import build_triton_repo

    result = build_triton_repo(artifacts_dir, out, max_batch_size, instances, force, verify)
    for m in result.models:
        typer.echo(f"{m.name:<24} {m.platform:<18} {m.config}")
    for file, why in result.skipped:
        typer.echo(f"skipped {file}: {why}")
    typer.echo(f"repository: {out}  (tritonserver --model-repository {out})")


@app.command()
@user_errors
def serve(
    export_dir: Annotated[Path, typer.Argument(help="An export folder (with manifest.json) or one artifact file.")],
    backend: Annotated[str, typer.Option(help="Backend key, or auto (the same choice as `predict`).")] = "auto",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="KServe v2 HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="KServe v2 gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch per request and per merged batch.")] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batching: how long a request may wait "
                                                                "for others to join its batch.")] = 500,
    dynamic_batching: Annotated[bool, typer.Option(help="Merge concurrent requests into batches.")] = True,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (runners working in parallel).")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads per runner.")] = None,
    drain_timeout: Annotated[int, typer.Option(min=0, help="Seconds in-flight requests get after SIGTERM.")] = 30,
) -> None:
    """Serve an export inside a real Triton Inference Server (PyTriton): KServe v2 HTTP/gRPC, metrics."""
    from fuse_export.cpuinfo import check_threads
    from fuse_export.serve import ServeOptions, serve_forever

    check_threads(threads)
    opts = ServeOptions(backend=None if backend == "auto" else backend, host=host, http_port=http_port,
                        grpc_port=grpc_port, metrics_port=metrics_port, max_batch_size=max_batch_size,
                        max_queue_delay_us=max_queue_delay_us, dynamic_batching=dynamic_batching,
                        instances=instances, threads=threads, drain_timeout_s=drain_timeout)
    code = serve_forever(export_dir, opts, echo=typer.echo)
    if code:
        raise typer.Exit(code)


@app.command()
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
) -> None:
    """Emotion, probability and SCN confidence per photo, or per face with --detect-faces."""
    import json

    from fuse_export.cpuinfo import check_threads
    from fuse_export.predict import predict_photos, predictions_console, predictions_table

    check_threads(threads)
    sel, results = predict_photos(model, images, backend, detect_faces, margin, threads, verify=verify,
                                  device=device)
    if sel.warning:  # a lone artifact, or an unlisted one under --no-verify: ran, but nothing checked its bytes
        typer.echo(f"warning: {sel.warning}", err=True)
    if json_out:
        doc = {"model": str(sel.path or sel.checkpoint), "backend": sel.backend,
               "class_names": list(sel.pre.class_names), "results": [r.to_dict() for r in results]}
        typer.echo(json.dumps(doc, indent=2))
    else:
        predictions_console().print(predictions_table(sel, results))


class AuditSplit(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class AuditMethod(str, Enum):
    auto = "auto"
    aum = "aum"
    crossfit = "crossfit"
    model = "model"


@app.command("audit-labels")
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
                           per_class=per_class, batch_size=batch_size, device=_run_device(device))
    audit = audit_checkpoint(checkpoint, data, options)
    for line in audit.warnings:
        typer.echo(line, err=True)
    table_console().print(audit_table(audit, top))
    if out is not None:
        write_audit_csv(audit, out)
        typer.echo(f"csv: {out} ({len(audit)} samples, most suspicious first, ranked by {audit.method})")


class EnginePrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@app.command("build-engine")
@user_errors
def build_engine(
    model: Annotated[Path, typer.Argument(help="An ONNX file: model.onnx, model.fp16.onnx, Q/DQ model.int8.onnx.")],
    out: Annotated[Optional[Path], typer.Option(help="Engine file (default: beside the ONNX, .engine).")] = None,
    precision: Annotated[Optional[EnginePrecision], typer.Option(
        help="Default: the ONNX's own. TensorRT 11 takes it from the ONNX only; 10 can lower fp32 to fp16.")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Optimization profile MIN:OPT:MAX (or N). Default: N:N:N for a fixed batch, else 1:32:256.")] = None,
    workspace_gb: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 4.0,
    timing_cache: Annotated[Optional[Path], typer.Option(
        help="Timing-cache file, reused and extended across builds (default: per TensorRT version and GPU "
             "under ~/.cache/fuse-export/tensorrt).")] = None,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization level 0..5.")] = 3,
    verify: Annotated[bool, typer.Option(help="Check parity against eager PyTorch (or ONNX Runtime).")] = True,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Override the parity bound (see export).")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative part of the parity bound.")] = None,
    keep_failed: Annotated[bool, typer.Option(
        help="Keep an engine that fails parity on disk (NAME.failed.engine), out of the manifest.")] = False,
    device: Annotated[Optional[str], typer.Option(help="The GPU to build and verify on: cuda or cuda:N.")] = None,
) -> None:
    """Build a TensorRT engine (raw plan + JSON sidecar) from an ONNX file; needs TensorRT and a CUDA GPU.
    Exit 1 when the engine fails parity, 2 on a user error."""
    from fuse_export.engines import build_engine_file, engine_summary
    from fuse_export.export.options import VerifyOptions, parse_device

    dev = parse_device(device)
    if dev == "cpu":
        raise UserError("--device cpu: TensorRT engines are built on a GPU; pass cuda or cuda:N")
    result = build_engine_file(model, out, precision.value if precision else None, batch, workspace_gb,
                               timing_cache, opt_level, verify,
                               VerifyOptions(atol=atol, rtol=rtol, keep_failed=keep_failed), dev)
    for line in engine_summary(result):
        typer.echo(line)


@app.command()
@user_errors
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text and a table.")] = False,
) -> None:
    """Every backend, whether it can run here and why not (CUDA, onnxruntime-gpu, TensorRT, versions)."""
    import json

    from fuse_export.compare.report import table_console
    from fuse_export.doctor import doctor_report, doctor_table, environment_lines

    report = doctor_report()
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in environment_lines(report["environment"]):
        typer.echo(line)
    table_console().print(doctor_table(report["backends"]))


def main() -> None:
    # Quiet the TorchScript deprecation chatter in every subprocess we might spawn (torch.jit is legacy upstream).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    sys.exit(run_app())


def run_app(args: list[str] | None = None) -> int:
    """Run the app; Click's usage errors (a value out of range, an unknown option) become one line, exit 2."""
    try:  # typer >= 0.2x vendors Click as typer._click (its exceptions are not click's, and click is not installed)
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException, NoArgsIsHelpError

    try:
        code = app(args=args, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except ClickException as exc:
        command = f" {exc.ctx.info_name}" if getattr(exc, "ctx", None) is not None and exc.ctx.parent else ""
        typer.echo(f"error: {exc.format_message()} (see `fuse-export{command} --help`)", err=True)
        return exc.exit_code
    except Abort:
        typer.echo("aborted", err=True)
        return 130
    return code if isinstance(code, int) else 0
