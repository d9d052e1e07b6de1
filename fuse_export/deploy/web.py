"""`fuse-export web`: a static site that runs an export's ONNX model in the browser, on ONNX Runtime Web.

    SITE/index.html        the page: choose or drop photos, or the webcam; label, probabilities, confidence, latency
    SITE/fuse-export.js    the ES module: `const model = await load("model.onnx"); await model.predict(image)`
    SITE/model.onnx        the export's verified ONNX artifact (its sha256 checked before and after the copy)
    SITE/model.json        that sha256, the preprocessing contract, class names and tensor names: all the JS reads
    SITE/site.json         what wrote the site (versions, files): how --force recognises a site it may replace
    SITE/ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}   ONNX Runtime Web, from a local npm install
                           (fuse_export.deploy.web_ort); with --cdn the page loads it from jsDelivr instead

The preprocessing and class names in model.json come from the metadata embedded in the verified artifact
(exporters.embedded.trusted_preprocessing), never from the manifest's unchecked text. The page checks the
model's sha256 against model.json before it makes a session. The site is built beside SITE and swapped in whole.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fuse_export import __version__
from fuse_export.deploy.web_ort import FILES as ORT_FILES
from fuse_export.deploy.web_ort import find_dist, require_files, script_tag
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.embedded import embedded_metadata, trusted_preprocessing
from fuse_export.exporters.manifest import MANIFEST
from fuse_export.exporters.manifest_read import external_data_files, read_manifest, verify_artifact
from fuse_export.fileio import folder_lock, is_inside, remove_stale_siblings, sha256_file, stage_dir, swap_dir

SITE_FORMAT = "fuse-export-web-site"
MODEL_FORMAT = "fuse-export-web-model"
MODEL_FILE, MODEL_JSON, SITE_JSON = "model.onnx", "model.json", "site.json"
ASSETS = ("index.html", "fuse-export.js")
ORT_MARK = "<!-- ONNX Runtime Web -->"  # index.html's placeholder for the script tag
INPUT_DTYPES = ("float32", "uint8")  # what the page feeds: normalized NCHW floats, or pixels to an embedded graph


@dataclass
class SiteResult:
    out: Path
    artifact: str  # the export's file that became SITE/model.onnx
    sha256: str
    ort_version: str
    ort_source: str  # the local dist folder, or the CDN script's URL
    files: list[str] = field(default_factory=list)
    size_bytes: int = 0


def pick_artifact(manifest: dict[str, Any], where: Path, file: str | None = None) -> dict[str, Any]:
    """The ONNX artifact the page runs: `file` (--artifact), else fp32 with float input before the others."""
    onnx = [a for a in manifest["artifacts"] if a["format"] == "onnx"]
    if file is not None:
        entry = next((a for a in manifest["artifacts"] if a["file"] == file), None)
        if entry is None or entry["format"] != "onnx":
            what = "is not listed" if entry is None else f"is a {entry['format']} artifact"
            raise UserError(f"--artifact {file}: {what} in {where}; the page runs ONNX files "
                            f"({', '.join(a['file'] for a in onnx) or 'none there'})")
        onnx = [entry]
    if not onnx:
        raise UserError(f"{where}: lists no ONNX artifact, which is what the page runs; export one first "
                        "(`fuse-export export CHECKPOINT --format onnx`)")
    entry = min(onnx, key=lambda a: (a.get("precision", "fp32") != "fp32", bool(a.get("embed_preprocessing"))))
    dtype = entry["io"]["inputs"][0]["dtype"]
    if dtype not in INPUT_DTYPES:
        raise UserError(f"{entry['file']}: its input is {dtype}; the page feeds {' or '.join(INPUT_DTYPES)} "
                        "(pick another with --artifact)")
    return entry


def model_json(path: Path, entry: dict[str, Any], manifest: dict[str, Any], pre: Any) -> dict[str, Any]:
    """model.json: what the JS needs, from the verified file (its embedded I/O contract where it has one)."""
    meta = embedded_metadata(path, "onnx") or {}
    io = meta.get("io") if isinstance(meta.get("io"), dict) else entry["io"]
    return {
        "format": MODEL_FORMAT,
        "model": MODEL_FILE,
        "sha256": entry["sha256"],
        "size_bytes": path.stat().st_size,
        "artifact": entry["file"],
        "precision": entry.get("precision", "fp32"),
        "class_names": list(pre.class_names),
        # resize_size spelled out: the JS does not re-derive it (Python's round() is not Math.round)
        "preprocessing": {**pre.to_dict(), "resize_size": pre.resize_size},
        "io": io,
        "exported": manifest.get("created"),
    }


def _site_entries(out: Path) -> set[str] | None:
    """The file names site.json lists when `out` holds a site written here (its site.json says so), else None."""
    try:
        data = json.loads((out / SITE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != SITE_FORMAT or not isinstance(data.get("files"), list):
        return None
    return {str(f) for f in data["files"]} | {SITE_JSON}


def _check_out(folder: Path, out: Path, force: bool) -> None:
    """Refuse an OUT that is a file, inside the export, or non-empty; with --force, replace only a site this
    command wrote (every entry a regular file its site.json lists), so nobody's other folder is ever deleted."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose a folder path")
    if is_inside(out, folder):
        raise UserError(f"--out {out}: inside the export folder {folder}; choose a folder outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return
    listed = _site_entries(out)
    if listed is None:
        raise UserError(f"--out {out}: exists, is not empty and is not a site written by `fuse-export web` (no "
                        f"{SITE_JSON} of one); --force replaces only such a site, so nothing was deleted. Choose a new "
                        "or empty folder")
    foreign = next((p for p in sorted(out.iterdir()) if p.name not in listed or p.is_symlink() or not p.is_file()), None)
    if foreign is not None:
        raise UserError(f"--out {out}: holds {foreign.name}, which `fuse-export web` did not write; nothing was "
                        "deleted. Choose another --out, or remove it yourself")
    if not force:
        raise UserError(f"--out {out}: already holds a site; pass --force to replace it")


def _asset(name: str) -> str:
    return resources.files("fuse_export.deploy").joinpath("web_assets", name).read_text(encoding="utf-8")


def build_site(export_dir: str | os.PathLike, out: str | os.PathLike, ort_dist: str | os.PathLike | None = None,
               cdn: bool = False, force: bool = False, artifact: str | None = None) -> SiteResult:
    """Write the static site for an export folder's ONNX artifact; atomically (built beside OUT, swapped in)."""
    folder, out = Path(export_dir), Path(out)
    manifest = read_manifest(folder, verify=False)  # schema and paths; the one file used is hash-checked next
    where = folder / MANIFEST
    entry = pick_artifact(manifest, where, artifact)
    src = verify_artifact(folder, entry, where)
    if external_data_files(src):
        raise UserError(f"{src}: keeps its weights in external data files; the page loads one self-contained "
                        ".onnx file (re-export without external data)")
    pre = trusted_preprocessing(folder, entry, manifest, verify=True)
    dist = find_dist(ort_dist)
    if not cdn:
        dist = require_files(dist)
    tag, version = script_tag(dist, cdn)
    index = _asset("index.html")
    if ORT_MARK not in index:
        raise IntegrityError(f"fuse_export/deploy/web_assets/index.html: lacks {ORT_MARK}; reinstall fuse-export")
    pages = {"index.html": index.replace(ORT_MARK, tag), "fuse-export.js": _asset("fuse-export.js")}
    _check_out(folder, out, force)  # early, before anything is copied; again under the lock
    with folder_lock(out.parent):
        remove_stale_siblings(out)
        _check_out(folder, out, force)
        tmp = stage_dir(out)
        try:
            shutil.copyfile(src, tmp / MODEL_FILE)
            if sha256_file(tmp / MODEL_FILE) != entry["sha256"]:
                raise IntegrityError(f"{src}: changed while it was being copied (its sha256 differs from {where}); "
                                     "run again")
            ort_files = [] if cdn else list(ORT_FILES)
            for name in ort_files:
                shutil.copyfile(dist.path / name, tmp / name)  # type: ignore[union-attr]
            for name, text in pages.items():
                (tmp / name).write_text(text, encoding="utf-8")
            (tmp / MODEL_JSON).write_text(json.dumps(model_json(tmp / MODEL_FILE, entry, manifest, pre), indent=2)
                                          + "\n", encoding="utf-8")
            files = [*ASSETS, MODEL_FILE, MODEL_JSON, *ort_files]
            site = {"format": SITE_FORMAT, "fuse_export_version": __version__,
                    "onnxruntime_web": {"version": version, "source": "cdn" if cdn else "local"}, "files": files}
            (tmp / SITE_JSON).write_text(json.dumps(site, indent=2) + "\n", encoding="utf-8")
            size = sum((tmp / f).stat().st_size for f in (*files, SITE_JSON))
            swap_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    source = tag.split('"')[1] if cdn else str(dist.path)  # type: ignore[union-attr]
    return SiteResult(out, entry["file"], entry["sha256"], version, source, [*files, SITE_JSON], size)
