"""Reading an export folder's manifest.json, which is where integrity lives.

`read_manifest(folder)` (verify=True) checks the schema, resolves every `file` strictly inside the folder (no
absolute path, no '..', no symlink out, ONNX external data inside too) and checks each present file's sha256
before any command runs or copies it; `verify_checkpoint` checks the source checkpoint the same way. NO_VERIFY
names the commands' flag that skips these checks. numpy-free and torch-free: the torch-less runtime imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.manifest import MANIFEST, SHA256_HEX
from fuse_export.fileio import is_inside, sha256_file

NO_VERIFY = "--no-verify"


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
        if not SHA256_HEX.fullmatch(a["sha256"]):
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
    if not isinstance(expected, str) or not SHA256_HEX.fullmatch(expected):
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
