"""`serve`: an export folder behind a real Triton Inference Server (PyTriton), any fuse-export runner inside.

PyTriton starts the `tritonserver` binary its wheel bundles; each Triton model is a Python-backend proxy that
hands batches to a callable in this process, where the runner the backend table picks (the same selection as
`predict`) does the inference. Two models share the runners: MODEL takes the artifact's tensor contract
(`image`), BYTES_MODEL takes one encoded JPEG/PNG per item (`image_bytes`), decoded and preprocessed here with
the model's preprocessing contract. Both answer logits, probabilities, confidence and the label.

Two traps of the wheel are handled here, not left to the docs: its Python-backend stub must load the running
interpreter's own libpython (LD_LIBRARY_PATH = sysconfig LIBDIR), and the stub needs numpy < 2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_export.errors import BackendUnavailable, UserError
from fuse_export.serve_env import (check_ports_free, check_serving_numpy, import_pytriton, server_temp_dir,
                                   stub_environment)
from fuse_export.serve_models import Instance, model_tensors

MODEL = "fer"  # tensor contract: `image` as the artifact takes it
BYTES_MODEL = "fer_image"  # encoded image bytes, preprocessed server-side


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: which runner, where to listen, how to batch. The CLI builds it; `Server` takes it."""

    backend: str | None = None  # None: the same default order as `predict`
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 32
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    instances: int = 1
    threads: int | None = None  # intra-op threads per runner (None: the runtime's default)
    drain_timeout_s: int = 30  # SIGTERM: how long in-flight requests (and open connections) may take

    def check(self) -> None:
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= port <= 65535:
                raise UserError(f"{flag} {port}: a TCP port is 1..65535")
        if len(set(ports.values())) != len(ports):
            got = ", ".join(map(str, ports.values()))
            raise UserError(f"--http-port/--grpc-port/--metrics-port must differ (got {got})")
        for flag, value in (("--max-batch-size", self.max_batch_size), ("--instances", self.instances)):
            if value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        if self.max_queue_delay_us < 0 or self.drain_timeout_s < 0:
            raise UserError("--max-queue-delay-us and --drain-timeout must not be negative")


@dataclass
class Server:
    """A running Triton server for one export folder (a context manager: `with Server(folder, opts) as s:`)."""

    export_dir: Path
    options: ServeOptions = field(default_factory=ServeOptions)
    selected: Any = None  # fuse_export.predict.Selected once started
    _instances: list[Instance] = field(default_factory=list)
    _triton: Any = None
    _tmp: Path | None = None

    def start(self) -> Server:
        """Select and load the runners, then start Triton; every user error is raised before it listens."""
        from fuse_export.predict import select
        from fuse_export.runners.registry import BACKENDS

        opts = self.options
        opts.check()
        check_ports_free(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port,
                                     "--metrics-port": opts.metrics_port})
        triton = import_pytriton()
        check_serving_numpy()
        self.selected = sel = select(self.export_dir, opts.backend)
        backend = BACKENDS[sel.backend]
        ok, why = backend.available()
        if not ok:
            raise BackendUnavailable(f"backend {sel.backend}: {why}")
        if sel.static_batch:
            raise UserError(f"{sel.path}: a static-batch export cannot take Triton's batches; "
                            "serve a dynamic-batch export (fuse-export export without --static-batch)")
        try:
            for _ in range(opts.instances):
                runner = backend.factory(sel.path, sel.checkpoint, sel.pre, opts.threads, sel.embed)
                self._instances.append(Instance(runner.activate(), sel.pre, sel.embed))
        except UserError:
            self._close_runners()
            raise
        except Exception as exc:  # a runtime's own load error (a corrupt file, an unsupported op): one line
            self._close_runners()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendUnavailable(f"{sel.path or sel.checkpoint}: the {sel.backend} runner failed to load "
                                     f"({exc.__class__.__name__}: {first[:200]})") from None
        try:
            self._start_triton(triton)
        except BaseException as exc:
            last = self.log_tail(1).strip()
            self.stop()
            if isinstance(exc, UserError) or not isinstance(exc, Exception):  # interrupts pass through
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise BackendUnavailable(f"the Triton server did not start ({exc.__class__.__name__}: {first})"
                                     + (f"; its log ends: {last[:300]}" if last else "")) from None
        return self

    def _start_triton(self, triton: Any) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig

        opts = self.options
        self._tmp = server_temp_dir()
        config = triton.TritonConfig(
            http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host, grpc_port=opts.grpc_port,
            metrics_address=opts.host, metrics_port=opts.metrics_port, exit_timeout_secs=opts.drain_timeout_s,
            log_file=self._tmp / "tritonserver.log",
            # GPU metrics only where an NVIDIA driver is (elsewhere tritonserver prints an NVML error at start).
            allow_gpu_metrics=None if Path("/dev/nvidiactl").exists() else False)
        self._triton = triton.Triton(config=config, workspace=self._tmp / "workspace")
        tensor_in, bytes_in, outputs = model_tensors(self._instances[0].runner.contract, self.selected.pre)
        batcher = (DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us)
                   if opts.dynamic_batching else None)
        self._triton.bind(MODEL, [batch(i.infer_tensor) for i in self._instances], [tensor_in], outputs,
                          config=ModelConfig(max_batch_size=opts.max_batch_size, batcher=batcher))
        # No dynamic batcher for encoded images: a corrupt one fails its own request only, never the requests
        # of other clients that Triton would have merged into the same batch.
        self._triton.bind(BYTES_MODEL, [batch(i.infer_bytes) for i in self._instances], [bytes_in], outputs,
                          config=ModelConfig(max_batch_size=opts.max_batch_size, batcher=None))
        with stub_environment():
            self._triton.run()

    def stop(self) -> None:
        """Drain and stop: Triton finishes in-flight requests (up to drain_timeout_s), then the runners close."""
        if self._triton is not None:
            with contextlib.suppress(Exception):
                self._triton.stop()
            self._triton = None
        self._close_runners()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _close_runners(self) -> None:
        for inst in self._instances:
            with contextlib.suppress(Exception):
                inst.runner.deactivate()
        self._instances.clear()

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of tritonserver's own log (kept in a file so the console stays readable)."""
        path = self._tmp / "tritonserver.log" if self._tmp else None
        if path is None or not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def endpoints(self) -> dict[str, str]:
        h = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        o = self.options
        return {"http": f"http://{h}:{o.http_port}", "grpc": f"{h}:{o.grpc_port}",
                "metrics": f"http://{h}:{o.metrics_port}/metrics"}

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def ready_lines(server: Server) -> list[str]:
    """What `serve` prints once ready: models, endpoints, and requests to paste."""
    sel, ep, o = server.selected, server.endpoints, server.options
    host = "127.0.0.1" if o.host in ("0.0.0.0", "::") else o.host
    http = ep["http"].replace(o.host, host)
    batching = (f"dynamic batching, max queue delay {o.max_queue_delay_us} us" if o.dynamic_batching
                else "no dynamic batching")
    return [
        f"serving {sel.path or sel.checkpoint} with {sel.backend} ({o.instances} instance(s), max batch "
        f"{o.max_batch_size}, {batching})",
        f"models: {MODEL} (input 'image', the artifact's tensor contract), {BYTES_MODEL} (input 'image_bytes', "
        "one encoded JPEG/PNG per item); outputs logits, probabilities, confidence, label",
        f"HTTP (KServe v2): {ep['http']}   gRPC: {ep['grpc']}   metrics: {ep['metrics']}",
        f"ready check:  curl -s -o /dev/null -w '%{{http_code}}\\n' {http}/v2/health/ready",
        "request:      python -c \"import numpy as np, tritonclient.http as h; "
        f"c = h.InferenceServerClient('{http.split('://')[1]}'); i = h.InferInput('image_bytes', [1, 1], 'BYTES'); "
        "i.set_data_from_numpy(np.array([[open('face.jpg', 'rb').read()]], dtype=object)); "
        f"r = c.infer('{BYTES_MODEL}', [i]); print(r.as_numpy('label'), r.as_numpy('probabilities'))\"",
        "stop:         Ctrl-C or SIGTERM (in-flight requests finish first)",
    ]


class _Interrupted(BaseException):
    """SIGINT/SIGTERM while the server is still starting (a BaseException, like KeyboardInterrupt)."""


def serve_forever(export_dir: str | os.PathLike, options: ServeOptions, echo=print) -> int:
    """Start, print the endpoints, serve until SIGINT/SIGTERM, drain, stop. Returns the exit code (0: clean)."""
    import logging
    import signal

    # PyTriton logs every failed request with a traceback; the client already gets the error.
    logging.getLogger("pytriton").setLevel(logging.ERROR)
    # multiprocessing's resource tracker (a child started with this process's -W options) would report
    # PyTriton's shared memory, which PyTriton itself unlinks, as leaked at every stop.
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    stop, starting = threading.Event(), [True]

    def on_signal(*_: Any) -> None:
        stop.set()
        if starting[0]:  # PyTriton's start-up waits with long timeouts: interrupt it, do not wait it out
            raise _Interrupted

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = Server(Path(export_dir), options)
    try:
        try:
            server.start()
            starting[0] = False
        except _Interrupted:  # Triton may already have answered requests: start() drained them on its way out
            echo("stopping: signalled while starting; in-flight requests drained")
            return 0
        for line in ready_lines(server):
            echo(line)
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not server.is_alive():
                echo(f"error: the Triton server stopped unexpectedly; its log ends:\n{server.log_tail()}")
                return 1
        echo("stopping: draining in-flight requests")
        return 0
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
