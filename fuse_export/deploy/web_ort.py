"""ONNX Runtime Web for a `fuse-export web` site: its browser files from a local npm install, or a CDN script tag.

Nothing is downloaded here. The files come from `--ort-dist PATH` or from `node_modules/onnxruntime-web/dist` in
the current folder or one of its parents (`npm install --ignore-scripts onnxruntime-web`); `--cdn` writes a script
tag to jsDelivr's copy of the same version instead (with its subresource-integrity hash when a local copy says
what the file holds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fuse_export.errors import UserError

PACKAGE = "onnxruntime-web"
# What the page loads: ort.wasm.min.js, the build with the wasm backend only (the global `ort`), and the module
# + binary it fetches. ort.min.js would fetch the JSEP (WebGPU) build instead, twice the size (29.5 MB against
# 14.8 MB in 1.31.1); tests/test_web.py checks that the page requests exactly these files.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
SCRIPT = FILES[0]
NPM_INSTALL = f"npm install --ignore-scripts {PACKAGE}"
CDN_URL = "https://cdn.jsdelivr.net/npm/{package}@{version}/dist/"
# --cdn without a local install: the version the tests ran the page with.
CDN_DEFAULT_VERSION = "1.31.1"


@dataclass(frozen=True)
class OrtDist:
    """A local onnxruntime-web dist folder and the version its package.json names ("" when it names none)."""

    path: Path
    version: str

    def missing(self) -> list[str]:
        return [f for f in FILES if not (self.path / f).is_file()]


def _version(dist: Path) -> str:
    try:
        meta = json.loads((dist.parent / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    version = meta.get("version") if isinstance(meta, dict) and meta.get("name") == PACKAGE else None
    return version if isinstance(version, str) else ""


def find_dist(ort_dist: str | os.PathLike | None = None, start: str | os.PathLike | None = None) -> OrtDist | None:
    """The dist folder of `--ort-dist` (the folder itself, its dist/, or its node_modules/onnxruntime-web/dist),
    else of a `node_modules/onnxruntime-web` in `start` (the current folder) or its parents; None if none."""
    if ort_dist is not None:
        given = Path(ort_dist)
        for cand in (given, given / "dist", given / "node_modules" / PACKAGE / "dist"):
            if (cand / SCRIPT).is_file():
                return OrtDist(cand, _version(cand))
        raise UserError(f"--ort-dist {given}: no {SCRIPT} there (nor in dist/ or node_modules/{PACKAGE}/dist/); "
                        f"point it at the dist folder of `{NPM_INSTALL}`")
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        cand = folder / "node_modules" / PACKAGE / "dist"
        if (cand / SCRIPT).is_file():
            return OrtDist(cand, _version(cand))
    return None


def require_files(dist: OrtDist | None) -> OrtDist:
    """`dist` with every file the page loads, else one line saying how to get them (nothing is downloaded)."""
    if dist is None:
        raise UserError(f"no ONNX Runtime Web found (node_modules/{PACKAGE}/dist here or in a parent folder): run "
                        f"`{NPM_INSTALL}`, or pass --ort-dist PATH, or --cdn to load it from jsDelivr instead")
    missing = dist.missing()
    if missing:
        raise UserError(f"{dist.path}: lacks {', '.join(missing)} (onnxruntime-web {dist.version or '?'}); "
                        f"reinstall it with `{NPM_INSTALL}`, or pass --cdn")
    return dist


def cdn_base(version: str) -> str:
    return CDN_URL.format(package=PACKAGE, version=version)


def script_tag(dist: OrtDist | None, cdn: bool) -> tuple[str, str]:
    """The page's script tag for ONNX Runtime Web and the version it loads. Local: the copied SCRIPT (ORT
    fetches its wasm files beside it). CDN: jsDelivr's copy of the local version (or CDN_DEFAULT_VERSION), with
    an integrity hash of the local file where there is one (jsDelivr serves npm files byte for byte)."""
    if not cdn:
        return f'<script src="{SCRIPT}"></script>', dist.version if dist else ""
    version = dist.version if dist and dist.version else CDN_DEFAULT_VERSION
    attrs = ' crossorigin="anonymous"'  # CORS (jsDelivr allows it): loads under COEP, checks integrity
    if dist is not None and dist.version and (dist.path / SCRIPT).is_file():
        digest = base64.b64encode(hashlib.sha384((dist.path / SCRIPT).read_bytes()).digest()).decode("ascii")
        attrs = f' integrity="sha384-{digest}"{attrs}'
    return f'<script src="{cdn_base(version)}{SCRIPT}"{attrs}></script>', version
