"""`serve`: an export folder behind a real Triton Inference Server, any fuse-export runner inside.

The `tritonserver` binary and its Python backend come from the nvidia-pytriton wheel; `serve` writes a model
repository of two Python-backend models and starts the server on it. Each model instance is a backend stub
process that loads the runner the backend table picks (the same selection as `predict`) and runs Triton's
batches itself (fuse_export.deploy.models). MODEL takes the artifact's tensor contract (`image`), BYTES_MODEL
one encoded JPEG/PNG per item (`image_bytes`), decoded and preprocessed with the model's preprocessing
contract. Both answer logits, probabilities, confidence and the label.

Why not PyTriton's own `Triton().bind()`: its proxy model hands every batch from the stub to the binding
process and back (a ZeroMQ message, a shared-memory tensor store run by a manager process): an earlier session
measured 5-6 ms per request with a model that does nothing, against 0.5 ms for a stub that runs the model
itself (not yet recorded in benchmarks/RESULTS.md). The wheel's traps are handled in fuse_export.deploy.environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_export.errors import BackendUnavailable, IntegrityError, UserError
from fuse_export.deploy.environment import (check_ports_free, check_serving_numpy, die_with_parent, find_tritonserver,
                                   prepare_backends, runner_threads, server_environment, server_temp_dir)
from fuse_export.deploy.models import BYTES, TENSOR, model_tensors

# What Triton's Python backend loads. The stub's Python runs isolated (no PYTHONPATH): the folder holding this
# very fuse_export goes first on its path, so the stub runs the same code as `serve`, installed or not.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
MODEL_PY = """import sys
if {root} not in sys.path:
    sys.path.insert(0, {root})
from fuse_export.deploy.models import TritonPythonModel  # noqa: E402,F401
"""
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
    # 0: a batch is whatever queued while the runner was busy. On CPU the runner is the bottleneck, so batches
    # form under load without waiting, while a delay only adds itself to every lone request (RESULTS.md,
    # "Serving at the speed of the runner": 500 us cost 0.5-1.7 ms at concurrency 1 and no throughput).
    max_queue_delay_us: int = 0
    dynamic_batching: bool = True
    instances: int = 1
    threads: int | None = None  # intra-op threads per runner (None: physical cores / instances, never unset)
    spin: str = "run"  # how runner threads wait for work (runners.base.SPIN_MODES; benchmarks/RESULTS.md)
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
        from fuse_export.runners.base import SPIN_MODES

        if self.spin not in SPIN_MODES:
            raise UserError(f"--spin {self.spin}: must be one of {', '.join(SPIN_MODES)}")
        if self.max_queue_delay_us < 0 or self.drain_timeout_s < 0:
            raise UserError("--max-queue-delay-us and --drain-timeout must not be negative")


@dataclass
class Server:
    """A running Triton server for one export folder (a context manager: `with Server(folder, opts) as s:`)."""

    export_dir: Path
    options: ServeOptions = field(default_factory=ServeOptions)
    selected: Any = None  # fuse_export.inference.selection.Selected once started
    threads: int = 0  # intra-op threads of each runner (ServeOptions.threads, or resolved by runner_threads)
    start_timeout_s: float = 300.0  # loading the runners included
    _proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    def start(self) -> Server:
        """Select the runner, write the model repository, start Triton and wait until both models are ready.
        Every user error (a runner that cannot load included) is raised before the server listens."""
        from fuse_export.extras import require
        from fuse_export.inference.selection import select
        from fuse_export.runners.registry import BACKENDS

        require("serve", "`serve`")  # before anything is checked, hashed or loaded
        opts = self.options
        opts.check()
        check_ports_free(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port,
                                     "--metrics-port": opts.metrics_port})
        dist = find_tritonserver()
        check_serving_numpy()
        self.selected = sel = select(self.export_dir, opts.backend)
        ok, why = BACKENDS[sel.backend].available()
        if not ok:
            raise BackendUnavailable(f"backend {sel.backend}: {why}")
        if sel.static_batch:
            raise UserError(f"{sel.path}: a static-batch export cannot take Triton's batches; "
                            "serve a dynamic-batch export (fuse-export export without --static-batch)")
        self.threads = runner_threads(opts.threads, opts.instances)
        try:
            self._tmp = server_temp_dir()
            self._launch(dist, self._write_repository())
            self._wait_ready()
        except BaseException as exc:
            last = self.log_tail(1).strip()
            self.stop()
            if isinstance(exc, UserError) or not isinstance(exc, Exception):  # interrupts pass through
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise BackendUnavailable(f"the Triton server did not start ({exc.__class__.__name__}: {first})"
                                     + (f"; its log ends: {last[:300]}" if last else "")) from None
        return self

    def _write_repository(self) -> Path:
        """MODEL and BYTES_MODEL as Python-backend models whose parameters name the runner to load."""
        from pytriton.model_config.common import DeviceKind, DynamicBatcher
        from pytriton.model_config.generator import ModelConfigGenerator
        from pytriton.model_config.triton_model_config import TritonModelConfig

        from fuse_export.contract import io_contract

        opts, sel, repo = self.options, self.selected, self._tmp / "models"
        tensor_in, bytes_in, outputs = model_tensors(io_contract(sel.embed), sel.pre)
        batcher = DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us) if opts.dynamic_batching \
            else None
        # No dynamic batcher for encoded images: a corrupt one fails its own request only, never the requests
        # of other clients that Triton would have merged into the same batch.
        for name, kind, spec, batching in ((MODEL, TENSOR, tensor_in, batcher), (BYTES_MODEL, BYTES, bytes_in, None)):
            params = {"kind": kind, "export": str(Path(self.export_dir).resolve()), "backend": sel.backend,
                      "threads": str(self.threads), "spin": opts.spin,
                      "status": str(self._tmp / f"{name}.status.json")}
            config = TritonModelConfig(model_name=name, max_batch_size=opts.max_batch_size, batching=True,
                                       batcher=batching, instance_group={DeviceKind.KIND_CPU: opts.instances},
                                       backend_parameters=params, inputs=[spec], outputs=outputs)
            (repo / name / "1").mkdir(parents=True)
            ModelConfigGenerator(config).to_file(repo / name / "config.pbtxt")
            (repo / name / "1" / "model.py").write_text(MODEL_PY.format(root=repr(PACKAGE_ROOT)))
        return repo

    def _launch(self, dist: Any, repo: Path) -> None:
        opts, tmp = self.options, self._tmp
        backends = prepare_backends(dist, tmp / "backends")
        cmd = [str(dist.binary), "--model-repository", str(repo), "--backend-directory", str(backends),
               "--http-address", opts.host, "--http-port", str(opts.http_port),
               "--grpc-address", opts.host, "--grpc-port", str(opts.grpc_port),
               "--metrics-address", opts.host, "--metrics-port", str(opts.metrics_port),
               "--exit-timeout-secs", str(opts.drain_timeout_s), "--log-file", str(tmp / "tritonserver.log"),
               # Shared-memory regions named after this process: two servers on one machine must not collide.
               "--backend-config", f"python,shm-region-prefix-name=fuse_export_{os.getpid()}_",
               "--backend-config", "python,shm-default-byte-size=4194304",
               "--backend-config", "python,shm-growth-byte-size=1048576"]
        if not Path("/dev/nvidiactl").exists():  # elsewhere tritonserver prints an NVML error at start
            cmd += ["--allow-gpu-metrics", "false"]
        with open(tmp / "tritonserver.out", "wb") as out:
            self._proc = subprocess.Popen(cmd, env=server_environment(dist), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, preexec_fn=die_with_parent())

    def _wait_ready(self) -> None:
        """Until Triton answers ready; a model that failed to load stops it with that runner's own verdict."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.options.host, self.options.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{self.options.http_port}/v2/health/ready"
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            for status in sorted(self._tmp.glob("*.status.json")):
                verdict = json.loads(status.read_text() or "{}")
                cls = IntegrityError if verdict.get("exit_code") == 1 else BackendUnavailable
                raise cls(verdict.get("message", "a model failed to load"))
            if self._proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self._proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {self.start_timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Drain and stop: Triton finishes in-flight requests (up to drain_timeout_s), unloads, and exits."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:  # the drain, then Triton's own unload and the stubs' exit
                proc.wait(timeout=self.options.drain_timeout_s + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The tritonserver process (the backend stubs are its children)."""
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of tritonserver's own log and console (kept in files so the console stays readable)."""
        text = "".join((self._tmp / f).read_text(errors="replace") for f in ("tritonserver.log", "tritonserver.out")
                       if self._tmp and (self._tmp / f).is_file())
        return "\n".join(text.splitlines()[-lines:])

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
        f"serving {sel.path or sel.checkpoint} with {sel.backend} ({o.instances} instance(s) of "
        f"{server.threads} thread(s), spin {o.spin}, max batch {o.max_batch_size}, "
        f"{batching})",
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
    stop, starting = threading.Event(), [True]

    def on_signal(*_: Any) -> None:
        stop.set()
        if starting[0]:  # loading the runners can take long: interrupt the start, do not wait it out
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
