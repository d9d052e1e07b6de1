"""manifest.json: every artifact of an export folder with its hash, format, precision, I/O and provenance.

Reading it is where integrity lives: `read_manifest(folder)` (verify=True) checks the schema, resolves every
`file` strictly inside the folder (no absolute path, no '..', no symlink out, ONNX external data inside too)
and checks each present file's sha256 before any command runs or copies it. Writing happens only through a
staged folder swapped in whole (`staged_export`), under a lock, so a folder holds the artifacts of one
checkpoint, each listed, or nothing. numpy-free and torch-free: the torch-less runtime imports it.
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
from pathlib import Path, PurePosixPath
from typing import Any

from fuse_export import __version__
from fuse_export.contract import Preprocessing, io_contract
from fuse_export.errors import IntegrityError, UserError
from fuse_export.fileio import (folder_lock, is_inside, remove_stale_siblings, sha256_file, stage_dir, swap_dir,
                                write_json)

MANIFEST = "manifest.json"
# Written into every manifest: the mark by which `export --force` knows a folder is an export it may replace.
MANIFEST_FORMAT = "fuse-export-manifest"
SCHEMA_VERSION = 1
NO_VERIFY = "--no-verify"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _bad(path: Path, problem: str) -> IntegrityError:
    return IntegrityError(f"{path}: {problem}; re-run `fuse-export export` (or pass {NO_VERIFY} to skip the "
                          "integrity checks at your own risk)")


def _check_schema(path: Path, manifest: Any) -> None:
    """Types of the fields commands read; a hand-edited or truncated manifest fails here, not in a KeyError."""
    if not isinstance(manifest, dict):
        raise _bad(path, "not a JSON object")
    for key, kind in (("artifacts", list), ("preprocessing", dict), ("class_names", list),
                      ("source_checkpoint", dict)):
        if key not in manifest:
            raise _bad(path, f"field {key!r} is missing")
        if not isinstance(manifest[key], kind):
            raise _bad(path, f"field {key!r} must be a JSON {kind.__name__}")
    if not all(isinstance(c, str) for c in manifest["class_names"]) or not manifest["class_names"]:
        raise _bad(path, "field 'class_names' must be a non-empty list of strings")
    if not isinstance(manifest["source_checkpoint"].get("path"), str):
        raise _bad(path, "field 'source_checkpoint.path' must be a string")
    try:
        pre = Preprocessing.from_dict(manifest["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"field 'preprocessing' is malformed ({type(exc).__name__}: {exc})") from None
    if list(pre.class_names) != manifest["class_names"]:
        raise _bad(path, "fields 'class_names' and 'preprocessing.class_names' differ")
    seen: set[str] = set()
    for i, a in enumerate(manifest["artifacts"]):
        where = f"field 'artifacts[{i}]"
        if not isinstance(a, dict):
            raise _bad(path, f"{where}' must be a JSON object")
        for key in ("file", "format", "sha256"):
            if not isinstance(a.get(key), str) or not a[key]:
                raise _bad(path, f"{where}.{key}' is missing or not a string")
        if not _SHA256.fullmatch(a["sha256"]):
            raise _bad(path, f"{where}.sha256' is not a hex sha256")
        if a["file"] in seen:
            raise _bad(path, f"{where}.file' lists {a['file']!r} twice")
        seen.add(a["file"])
        io = a.get("io")
        if not (isinstance(io, dict) and isinstance(io.get("inputs"), list) and isinstance(io.get("outputs"), list)
                and all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
                        and isinstance(t.get("dtype"), str) for t in io["inputs"] + io["outputs"])):
            raise _bad(path, f"{where}.io' must hold 'inputs' and 'outputs' lists of {{name, dtype, shape}}")
        companions = a.get("companions", [])
        if not isinstance(companions, list) or not all(
                isinstance(c, dict) and isinstance(c.get("file"), str) and isinstance(c.get("sha256"), str)
                for c in companions):
            raise _bad(path, f"{where}.companions' must be a list of {{file, sha256}}")


def artifact_path(folder: str | os.PathLike, file: str, manifest_path: Path | None = None) -> Path:
    """`folder / file`, refused unless it stays inside `folder`: relative, no '..', no symlink pointing out."""
    folder = Path(folder)
    where = manifest_path or folder / MANIFEST
    parts = PurePosixPath(file.replace("\\", "/"))
    if parts.is_absolute() or Path(file).is_absolute() or ".." in parts.parts or "\x00" in file:
        raise _bad(where, f"artifact path {file!r} leaves the folder (absolute or '..'); refused")
    path = folder / file
    if os.path.lexists(path) and not is_inside(path, folder):
        raise _bad(where, f"artifact {file!r} is a link to {path.resolve()}, outside {folder}; refused")
    return path


def _onnx_external_data(path: Path) -> list[str]:
    """Locations of an ONNX file's external tensors (needs the onnx package; [] without it: ONNX Runtime
    then applies its own rule that external data stays beside the model)."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors
    except ImportError:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise IntegrityError(f"{path}: not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    out = []
    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.extend(e.value for e in t.external_data if e.key == "location")
    return sorted(set(out))


def verify_artifact(folder: str | os.PathLike, artifact: dict[str, Any], manifest_path: Path | None = None) -> Path:
    """The artifact's path after checking containment, file type, sha256, companions and ONNX external data.

    Every listed file must be there and be exactly what was verified at export time: a listed file that is gone
    is an IntegrityError too (the folder is not what export wrote). Without verification (`read_manifest(...,
    verify=False)`, the commands' --no-verify) callers skip an absent file with the reason instead.
    """
    folder = Path(folder)
    where = manifest_path or folder / MANIFEST
    path = artifact_path(folder, artifact["file"], where)
    if not os.path.lexists(path):
        raise IntegrityError(f"{path}: listed in {where} but missing; re-export it, or pass {NO_VERIFY} to go on "
                             "without it")
    if not path.is_file():
        raise IntegrityError(f"{path}: listed in {where.name} as an artifact but is not a regular file; "
                             f"re-export it (or pass {NO_VERIFY})")
    files = [(path, artifact["sha256"])] + [(artifact_path(folder, c["file"], where), c["sha256"])
                                           for c in artifact.get("companions", [])]
    for f, expected in files:
        if not f.is_file():
            raise IntegrityError(f"{f}: listed in {where.name} (with {artifact['file']}) but missing; re-export "
                                 f"it (or pass {NO_VERIFY})")
        if sha256_file(f) != expected:
            raise IntegrityError(f"{f}: differs from its sha256 in {where} (edited or corrupted after export); "
                                 f"re-export it, or pass {NO_VERIFY} to use it anyway")
    if artifact.get("format") == "onnx" or path.suffix == ".onnx":
        for loc in _onnx_external_data(path):
            data = artifact_path(folder, loc, where)
            if not is_inside(data, folder):
                raise _bad(where, f"{path.name} keeps tensor data in {loc!r}, outside {folder}; refused")
    return path


def verify_checkpoint(manifest: dict[str, Any], manifest_path: Path) -> Path:
    """The manifest's source checkpoint, after checking it against the sha256 recorded at export time: the eager
    backends run it in the export's name, so `source_checkpoint.path` edited to point at another run's best.pt
    (or the file retrained since) must not run silently."""
    source = manifest["source_checkpoint"]
    path = Path(source["path"])
    expected = source.get("sha256")
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise _bad(manifest_path, "field 'source_checkpoint.sha256' is missing or not a hex sha256")
    if not path.is_file():
        raise UserError(f"{manifest_path}: the source checkpoint {path} is gone; the eager backends run it")
    if sha256_file(path) != expected:
        raise IntegrityError(f"{path}: differs from the source checkpoint's sha256 in {manifest_path} (another "
                             "checkpoint, or retrained since the export); point source_checkpoint.path at the "
                             f"checkpoint the export was made from, or pass {NO_VERIFY} to run it anyway")
    return path


def external_data_files(path: str | os.PathLike) -> list[str]:
    """Files an ONNX model's tensors live in (beside it), for copying it whole."""
    return _onnx_external_data(Path(path))


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read an export folder's manifest; with `verify`, also check every listed file (see `verify_artifact`).

    Raises UserError when there is no manifest (the wrong folder), IntegrityError (exit 1) when the folder's
    contents are not what export wrote: malformed fields, paths leaving the folder, changed bytes.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise UserError(f"{path}: no manifest{hint}; point at a folder written by `fuse-export export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from None
    _check_schema(path, manifest)
    for a in manifest["artifacts"]:
        if verify:
            verify_artifact(folder, a, path)
        else:  # even unverified, a path never leaves the folder
            artifact_path(folder, a["file"], path)
    return manifest


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
            and _SHA256.fullmatch(source["sha256"]) is not None)


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
