"""manifest.json: every artifact of an export folder with its hash, format, precision, I/O and provenance.

This module writes it: the format's constants, the artifact entries, the manifest itself, and the staged folder
an export writes into (`staged_export`), swapped in whole under a lock, so a folder holds the artifacts of one
checkpoint, each listed, or nothing. Reading and verifying it lives in `fuse_export.exporters.manifest_read`.
numpy-free and torch-free: the torch-less runtime imports it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuse_export import __version__
from fuse_export.contract import Preprocessing, io_contract
from fuse_export.errors import UserError
from fuse_export.fileio import (folder_lock, is_inside, remove_stale_siblings, sha256_file, stage_dir, swap_dir,
                                write_json)

MANIFEST = "manifest.json"
# Written into every manifest: the mark by which `export --force` knows a folder is an export it may replace.
MANIFEST_FORMAT = "fuse-export-manifest"
SCHEMA_VERSION = 1
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def tool_versions() -> dict[str, str]:
    """Versions of the tools involved (optional ones only when importable)."""
    import importlib.metadata as md

    out = {"fuse_export": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt",
                 "openvino"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def preprocessing_sha256(pre: Preprocessing) -> str:
    """sha256 of the canonical JSON of `pre` (sorted keys, no spaces): recorded in each artifact's entry, so the
    manifest's `preprocessing` (and its class names) can be trusted for a format that embeds none (TensorRT)."""
    text = json.dumps(pre.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def artifact_entry(out_dir: Path, file_name: str, fmt: str, backend: str, pre: Preprocessing, precision: str = "fp32",
                   embed_preprocessing: bool = False, **extra: Any) -> dict[str, Any]:
    path = out_dir / file_name
    return {
        "file": file_name,
        "format": fmt,
        "backend": backend,
        "precision": precision,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "embed_preprocessing": embed_preprocessing,
        "io": io_contract(embed_preprocessing).to_dict(pre.num_classes, pre.image_size),
        "preprocessing_sha256": preprocessing_sha256(pre),
        **extra,
    }


def write_manifest(out_dir: Path, checkpoint: Path, pre: Preprocessing, artifacts: list[dict[str, Any]],
                   lock: bool = True) -> Path:
    """Write (or update, keeping entries for other files that exist) the folder's manifest.json.

    Read-merge-write happens under the lock of the folder's parent (the lock `staged_export` holds), so two
    writers never drop each other's entries; pass lock=False from inside `staged_export`.
    """
    ctx = folder_lock(out_dir.parent) if lock else contextlib.nullcontext()
    with ctx:
        path = out_dir / MANIFEST
        merged: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                for a in json.loads(path.read_text()).get("artifacts", []):
                    if (out_dir / a["file"]).is_file():
                        merged[a["file"]] = a
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                merged = {}
        for a in artifacts:
            merged[a["file"]] = a
        manifest = {
            "format": MANIFEST_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source_checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
            "class_names": list(pre.class_names),
            "preprocessing": pre.to_dict(),
            "tool_versions": tool_versions(),
            "artifacts": list(merged.values()),
        }
        write_json(path, manifest)
    return path


def _carry_over(old: Path, stage: Path) -> None:
    """Hard-link (else copy) the folder's files into the stage; stale temporaries of killed runs stay behind."""
    for p in old.iterdir():
        if p.name.endswith(".tmp") or (p.name.startswith(".") and p.is_dir()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, stage / p.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(p), str(stage / p.name))


def _link_or_copy(src: str, dst: str) -> None:
    # Exporters replace files by rename, never write into them, so a shared inode is never modified.
    try:
        if os.path.islink(src):
            raise OSError
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def staged_export(out: str | os.PathLike, checkpoint: str | os.PathLike, force: bool = False,
                  protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder to export into; on success it replaces `out` in one swap.

    Under the lock of `out`'s parent: stale staging folders of killed runs are removed, and `out` is refused
    when it holds another checkpoint's artifacts (unless `force`: then it is replaced whole) or is not an export
    folder at all. Artifacts of the same checkpoint are carried over, so exports of several formats add up.
    `protect`: paths (the checkpoint, calibration data) that `force` must never delete.
    """
    out, checkpoint = Path(out), Path(checkpoint)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose a folder path")
    with folder_lock(out.parent):
        remove_stale_siblings(out)
        keep = _existing_folder(out, checkpoint, force, protect)
        stage = stage_dir(out)
        try:
            if keep:
                _carry_over(out, stage)
            yield stage
            swap_dir(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def is_export_manifest(manifest: Any) -> bool:
    """Whether parsed manifest.json text was written by fuse-export: by its format field, or (written before that
    field existed) by schema version 1 with an artifact list and a checkpoint sha256. Positive recognition:
    another tool's manifest.json (a web app's, a data set's) is never taken for an export."""
    if not isinstance(manifest, dict):
        return False
    if "format" in manifest:
        return manifest["format"] == MANIFEST_FORMAT
    source = manifest.get("source_checkpoint")
    return (manifest.get("schema_version") == SCHEMA_VERSION and isinstance(manifest.get("artifacts"), list)
            and isinstance(source, dict) and isinstance(source.get("sha256"), str)
            and SHA256_HEX.fullmatch(source["sha256"]) is not None)


def _existing_folder(out: Path, checkpoint: Path, force: bool, protect: tuple[Path, ...]) -> bool:
    """Whether `out`'s current contents are kept (same checkpoint); raises when it must not be replaced."""
    if not out.is_dir() or not any(out.iterdir()):
        return False
    for p in (checkpoint, *protect):
        if p.exists() and is_inside(p, out):
            raise UserError(f"--out {out}: holds {p}, an input of this export; choose another --out")
    folders = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if folders:  # an export folder holds files only: a folder named like an artifact would block its write
        raise UserError(f"--out {out}: holds a folder {folders[0]!r} (an export folder holds files only); remove it "
                        "or choose another --out")
    manifest = out / MANIFEST
    if not manifest.is_file():
        # Only temporaries of killed writes (fileio.atomic_path's .NAME.XXXX.tmp files): nothing to lose. Any other
        # hidden entry (a .git folder) is someone's data.
        if all(p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file() and not p.is_symlink()
               for p in out.iterdir()):
            return False
        raise UserError(f"--out {out}: exists, is not empty and holds no {MANIFEST} (not an export folder); "
                        "choose a new or empty folder")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        data = None
    if not is_export_manifest(data):  # --force replaces only what export wrote
        raise UserError(f"--out {out}: its {MANIFEST} was not written by fuse-export (or is unreadable), so it is "
                        "not an export folder and --force would not replace it; nothing was deleted. Choose "
                        "another --out")
    recorded = data.get("source_checkpoint")
    source = recorded.get("sha256") if isinstance(recorded, dict) else None
    if source == sha256_file(checkpoint):
        return not force
    if force:
        return False
    what = f"artifacts of another checkpoint (sha256 {source[:12]})" if isinstance(source, str) else \
        "a manifest without its checkpoint's sha256"
    raise UserError(f"--out {out}: holds {what}; a folder holds the artifacts of one checkpoint: choose another "
                    "--out, or pass --force to replace the whole folder")
