"""What every command shares: the error handler (one line, exit 2), option parsing and the shared option types."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from fuse_export.contract import MAX_BATCH  # the exported graphs' batch axis range
from fuse_export.errors import UserError
from fuse_export.extras import EXTRAS, install_hint

# Packages of the `train` extra: the slim runtime install (`pip install -e .`) runs exported models without them.
TRAIN_ONLY = tuple(module for module, _ in EXTRAS["train"])


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
                       f"install leaves out: {install_hint('train')}", err=True)
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


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option} {text!r}: expected positive integers, e.g. 1,8,32")
    if max(values) > MAX_BATCH:
        raise UserError(f"{option} {text!r}: at most {MAX_BATCH} (the exported batch axis' range)")
    return values


def check_output_file(path: Path, option: str) -> None:
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


def key_values(items: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as a TOML value (3, 0.2, true, "x", [..]) is one, else a string."""
    from fuse_export.training.recipe import tomllib  # the stdlib module, or tomli before Python 3.11

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


def run_device(text: str) -> str:
    """--device of the commands that run a model: auto, cpu, cuda or cuda:N (a UserError otherwise)."""
    from fuse_export.exporters.options import parse_device

    return "auto" if text.strip().lower() == "auto" else str(parse_device(text))


class OnBad(str, Enum):
    fail = "fail"
    skip = "skip"


