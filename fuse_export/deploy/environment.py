"""What the Triton server that `serve` starts needs from this machine, checked or arranged before it starts.

The `tritonserver` binary, its Python backend and the backend stub for each Python version come from the
nvidia-pytriton wheel. The stub runs our model code in this environment (numpy < 2), links libpython by name
(so this interpreter's own library folder must come first on LD_LIBRARY_PATH), and the server needs free
ports; a server killed outright (SIGKILL) cannot clean its temporary folder, so the next start removes the
folders of dead servers. Runner threads are always given explicitly (see `runner_threads`).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.errors import BackendUnavailable, UserError
from fuse_export.extras import install_hint

PYTRITON_PIP = install_hint("serve")
TMP_PREFIX = "fuse-export-serve-"


def check_serving_numpy(version: str | None = None) -> None:
    """The Python-backend stub runs in this environment and needs numpy < 2 (nvidia-pytriton's own pin): with
    numpy 2 every response failed ("output tensor shape does not match size of output"), so refuse to start."""
    version = version or np.__version__
    if int(version.split(".")[0]) >= 2:
        raise BackendUnavailable(f"numpy {version}: Triton's Python backend (nvidia-pytriton) needs numpy < 2 "
                                 f"in this environment; {PYTRITON_PIP} installs a supported numpy")


@dataclass(frozen=True)
class TritonDist:
    """Where the wheel keeps the server: the binary, its shared libraries, the Python backend, this Python's stub."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_tritonserver() -> TritonDist:
    """The tritonserver that nvidia-pytriton bundles, or one line saying how to get it."""
    try:
        import pytriton
    except ImportError:
        raise BackendUnavailable(f"`serve` needs nvidia-pytriton (bundles tritonserver): {PYTRITON_PIP}") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = TritonDist(root / "bin" / "tritonserver", root.parent.parent / "nvidia_pytriton.libs",
                      root / "backends" / "python",
                      root / "python_backend_stubs" / version / "triton_python_backend_stub")
    for what, path in (("tritonserver", dist.binary), ("Python backend", dist.python_backend / "libtriton_python.so"),
                       (f"Python {version} backend stub", dist.stub)):
        if not path.is_file():
            raise BackendUnavailable(f"nvidia-pytriton at {root.parent} has no {what} ({path}); reinstall it: "
                                     f"{PYTRITON_PIP}")
    return dist


def prepare_backends(dist: TritonDist, folder: Path) -> Path:
    """A backend folder for one server: the wheel's Python backend with the stub of this Python beside it."""
    python = folder / "python"
    python.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist.python_backend / f, python / f)
    shutil.copy2(dist.stub, python / "triton_python_backend_stub")
    return folder


def stub_library_dir() -> str | None:
    """The folder holding the running interpreter's shared libpython, or None for a statically linked Python.

    The backend stub links `libpython3.X.so`; without this folder first on LD_LIBRARY_PATH it may load the
    system's libpython (another patch release) beside this interpreter's standard library, and model code then
    fails at import ('_thread.RLock' object has no attribute '_recursion_count')."""
    libdir = sysconfig.get_config_var("LIBDIR")
    names = [sysconfig.get_config_var(v) for v in ("INSTSONAME", "LDLIBRARY")]  # the soname is what links
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED") and any(n and (Path(libdir) / n).is_file()
                                                                        for n in names):
        return str(libdir)
    return None


def server_environment(dist: TritonDist, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver (and the stubs it starts) runs in: this interpreter's libpython first, then
    the wheel's libraries; this interpreter's bin folder first on PATH, which is how the stub finds this
    environment's site-packages (the stub's Python runs isolated: PYTHONPATH and the like are ignored)."""
    env = dict(os.environ if base is None else base)
    libs = [d for d in (stub_library_dir(), str(dist.libs), env.get("LD_LIBRARY_PATH")) if d]
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def physical_cores() -> int:
    """Physical cores this process may run on (what ONNX Runtime and OpenVINO size their thread pools by)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:  # no sysfs topology: count the logical CPU as a core
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def runner_threads(requested: int | None, instances: int) -> int:
    """Intra-op threads per runner: the request, else the physical cores shared among the instances.

    Sharing keeps N instances from running N x cores threads. The count is always explicit, never left to the
    runtime: ONNX Runtime with its default count pins its worker threads to cores 1..N-1 in every process that
    does so (seen here in the backend stubs), so every such process on a machine (replicas, a client, a test
    run) queues its workers on the same cores; an explicit count leaves placement to the OS scheduler. The
    benchmark passes the same count to its in-process runner, so both sides compare like with like."""
    return requested if requested else max(1, physical_cores() // max(1, instances))


def die_with_parent() -> Callable[[], Any] | None:
    """A pre-exec hook that has Linux send the server SIGTERM when `serve` dies, even by SIGKILL (no orphan
    server keeps the ports). The C library is looked up here, before the fork, so the child only makes one
    system call. Linux ties this to the thread that started the child: start servers from a thread that lives
    as long as they do (the main thread, as `serve` does)."""
    import ctypes
    import ctypes.util

    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports the OS calls free on `host` right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fail with one line before anything loads when a port is taken (Triton would only log it and hang)."""
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            # As Triton binds (SO_REUSEADDR): a port whose last connections linger in TIME_WAIT after a server
            # stopped is free to listen on again; only a live listener makes it busy.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
                raise UserError(f"{flag} {port}: {host}:{port} {why}; pick a free port with {flag}") from None


def server_temp_dir() -> Path:
    """A fresh folder for one server's workspace and log, named after this process; folders of servers whose
    process is gone (killed before they could clean up) are removed first."""
    for old in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        pid = old.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
