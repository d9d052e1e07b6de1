"""Atomic writes, folder swaps, locks and hashing: nothing half-written is ever left under a real name.

Files are created with the process umask (0644 by default), not mkstemp's 0600, so a server running as
another user can read what fuse-export wrote; folders likewise (0755). Whole folders (an export folder, a
Triton repository) are built beside their target and swapped in with one rename-exchange.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

STAGE = "stage"  # .<name>.stage-XXXX: a folder being built beside its target
OLD = "old"  # .<name>.old-XXXX: the previous folder, removed once the new one is in place


def process_umask() -> int:
    """The umask, read without changing it (Linux: /proc); falls back to the set-and-restore idiom."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_by_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain open()/mkdir() would have (mkstemp/mkdtemp make 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~process_umask())


def named_os_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc` with `path` as its file name when it has none: a write to an open file that fails (a full disk)
    names no file, and "?: No space left on device" tells the user nothing."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))


@contextlib.contextmanager
def os_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError of the block that names no file as one naming `path` (see named_os_error)."""
    try:
        yield
    except OSError as exc:
        named = named_os_error(exc, path)
        if named is exc:
            raise
        raise named from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. An OSError that
    names no file (a failed write or fsync: a full disk) is raised naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with os_errors_named(path):
            yield tmp_path
            if tmp_path.is_file():
                chmod_by_umask(tmp_path)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive fcntl lock on a folder (flock on its own descriptor: no lock file left behind).

    Held while a writer builds and swaps a sibling folder, so two writers into one parent take turns, and
    whatever stale staging folder the holder finds was left by a dead process. Released when the process
    dies, so a kill -9 never leaves it stuck.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def try_lock(folder: str | os.PathLike) -> int | None:
    """A non-blocking exclusive lock on a folder: its descriptor (keep it open to hold it), or None if taken."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def stage_dir(target: Path) -> Path:
    """A new empty folder beside `target` to build its replacement in (mode by umask, not mkdtemp's 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{STAGE}-", dir=target.parent))
    chmod_by_umask(tmp, directory=True)
    return tmp


def stale_siblings(target: Path) -> list[Path]:
    """Staging / old folders of `target` left by killed runs (call only while holding the parent's lock),
    including the names earlier versions used (.NAME.XXXXXXXX and .NAME.old.XXXXXXXX from mkdtemp)."""
    if not target.parent.is_dir():
        return []
    name = re.escape(target.name)
    ours = re.compile(rf"\.{name}\.({STAGE}|{OLD})-\w+")
    legacy = re.compile(rf"\.{name}\.(old\.)?\w{{8}}")
    out = []
    for p in target.parent.iterdir():
        if not p.is_dir() or p.is_symlink():
            continue
        if ours.fullmatch(p.name) or (legacy.fullmatch(p.name) and _looks_like_ours(p, target.name)):
            out.append(p)
    return sorted(out)


def _looks_like_ours(folder: Path, name: str) -> bool:
    """A legacy-named folder is removed only if it holds what an old run left there (so a user's own
    .NAME.backup01 survives): nothing, the moved-aside target, a manifest, or model folders with configs."""
    children = list(folder.iterdir())
    return (not children or (folder / name).is_dir() or (folder / "manifest.json").is_file()
            or any((c / "config.pbtxt").is_file() for c in children if c.is_dir()))


def remove_stale_siblings(target: Path) -> list[Path]:
    """Delete what `stale_siblings` finds; a missing `target` whose previous folder survives is restored first
    (a kill between the two renames of the fallback swap)."""
    stale = stale_siblings(target)
    if not os.path.lexists(target):
        olds = [p for p in stale if p.name.startswith(f".{target.name}.{OLD}-")]
        if olds:
            os.replace(olds[-1], target)
            stale = [p for p in stale if p != olds[-1]]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel, or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target`; the old `target` stays whole and usable until the new one is in place.

    Linux: one renameat2(RENAME_EXCHANGE), so every reader sees the old folder or the new one, never none.
    Elsewhere: the old folder is renamed aside, then the new one in; a kill between the two leaves the old one
    at .NAME.old-XXXX, which the next run restores (remove_stale_siblings).
    """
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if target.is_symlink() or not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{OLD}-", dir=target.parent))
    os.replace(target, old)  # a rename onto an empty folder replaces it
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` (resolved, symlinks followed) is `folder` or below it."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
