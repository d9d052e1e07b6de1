"""Deployment commands: `fuse-export triton-repo` (a model repository) and `fuse-export serve` (a tritonserver)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import user_errors


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
    from fuse_export.deploy.triton_repo import build_triton_repo

    result = build_triton_repo(artifacts_dir, out, max_batch_size, instances, force, verify)
    for m in result.models:
        typer.echo(f"{m.name:<24} {m.platform:<18} {m.config}")
    for file, why in result.skipped:
        typer.echo(f"skipped {file}: {why}")
    typer.echo(f"repository: {out}  (tritonserver --model-repository {out})")



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
                                                                "for others to join its batch (0: batch what "
                                                                "queued while the runner was busy).")] = 0,
    dynamic_batching: Annotated[bool, typer.Option(help="Merge concurrent requests into batches.")] = True,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (runners working in parallel).")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads per runner (default: physical "
                                                              "cores / instances).")] = None,
    spin: Annotated[str, typer.Option(help="How runner threads wait for work (ONNX Runtime): on (spin, also "
                                           "after a batch), off (never), run (only inside a batch).")] = "run",
    drain_timeout: Annotated[int, typer.Option(min=0, help="Seconds in-flight requests get after SIGTERM.")] = 30,
) -> None:
    """Serve an export inside a real Triton Inference Server (PyTriton): KServe v2 HTTP/gRPC, metrics."""
    from fuse_export.cpuinfo import check_threads
    from fuse_export.deploy.server import ServeOptions, serve_forever

    check_threads(threads)
    opts = ServeOptions(backend=None if backend == "auto" else backend, host=host, http_port=http_port,
                        grpc_port=grpc_port, metrics_port=metrics_port, max_batch_size=max_batch_size,
                        max_queue_delay_us=max_queue_delay_us, dynamic_batching=dynamic_batching,
                        instances=instances, threads=threads, spin=spin, drain_timeout_s=drain_timeout)
    code = serve_forever(export_dir, opts, echo=typer.echo)
    if code:
        raise typer.Exit(code)

