"""What the Triton server that `serve` starts needs from this machine, checked or arranged before it starts.

nvidia-pytriton's Python-backend stub runs in this environment (numpy < 2), links libpython by name (so this
interpreter's own library folder must come first on LD_LIBRARY_PATH), and needs free ports; a server killed
outright (SIGKILL) cannot clean its temporary folder, so the next start removes the folders of dead servers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.errors import BackendUnavailable, UserError

PYTRITON_PIP = "pip install 'fuse-export[serve]'"
TMP_PREFIX = "fuse-export-serve-"


def check_serving_numpy(version: str | None = None) -> None:
    """nvidia-pytriton's Python-backend stub runs in this environment and needs numpy < 2: with numpy 2 every
    response fails ("output tensor shape does not match size of output"), so refuse to start instead."""
    version = version or np.__version__
    if int(version.split(".")[0]) >= 2:
        raise BackendUnavailable(f"numpy {version}: Triton's Python backend (nvidia-pytriton) needs numpy < 2 "
                                 f"in this environment; {PYTRITON_PIP} installs a supported numpy")


def import_pytriton() -> Any:
    """The PyTriton package, or one line saying how to get it."""
    try:
        import pytriton.triton as triton
    except ImportError:
        raise BackendUnavailable(f"`serve` needs nvidia-pytriton (bundles tritonserver): {PYTRITON_PIP}") from None
    return triton


def stub_library_dir() -> str | None:
    """The folder holding the running interpreter's shared libpython, or None for a statically linked Python.

    The backend stub links `libpython3.X.so`; without this folder first on LD_LIBRARY_PATH it may load the
    system's libpython (another patch release) beside this interpreter's standard library, and PyTriton's
    model then fails to load ('_thread.RLock' object has no attribute '_recursion_count')."""
    libdir = sysconfig.get_config_var("LIBDIR")
    names = [sysconfig.get_config_var(v) for v in ("INSTSONAME", "LDLIBRARY")]  # the soname is what links
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED") and any(n and (Path(libdir) / n).is_file()
                                                                        for n in names):
        return str(libdir)
    return None


@contextlib.contextmanager
def stub_environment():
    """LD_LIBRARY_PATH with this interpreter's libpython first, for the server process started inside."""
    old = os.environ.get("LD_LIBRARY_PATH")
    libdir = stub_library_dir()
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = libdir + (f":{old}" if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


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
