"""manifest.json: every artifact of an export folder with its hash, format, precision, I/O and provenance."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from fuse_export import __version__
from fuse_export.contract import Preprocessing, io_contract
from fuse_export.errors import UserError
from fuse_export.fileio import sha256_file, write_json

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def tool_versions() -> dict[str, str]:
    """Versions of the tools involved (optional ones only when importable)."""
    import importlib.metadata as md

    out = {"fuse_export": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


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
        **extra,
    }


def write_manifest(out_dir: Path, checkpoint: Path, pre: Preprocessing, artifacts: list[dict[str, Any]]) -> Path:
    """Write (or update, keeping entries for other files) the folder's manifest.json."""
    path = out_dir / MANIFEST
    merged: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            for a in json.loads(path.read_text()).get("artifacts", []):
                if (out_dir / a["file"]).is_file():
                    merged[a["file"]] = a
        except (json.JSONDecodeError, KeyError, TypeError):
            merged = {}
    for a in artifacts:
        merged[a["file"]] = a
    manifest = {
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


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check an export folder's manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no manifest; point at a folder written by `fuse-export export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for key in ("artifacts", "preprocessing", "class_names", "source_checkpoint"):
            manifest[key]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); re-run `fuse-export export`") from None
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: field {exc} is missing; re-run `fuse-export export`") from None
    return manifest
