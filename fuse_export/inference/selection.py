"""Which artifact runs: an export folder or one artifact file -> the backend, its file and its contracts.

MODEL is an export folder or one artifact file. Preprocessing and class names come from the folder's
manifest.json, or, for a file copied away from its folder, from the metadata embedded in the file. Each
image (or face crop) goes through the torch-free deployed preprocessing (`fuse_export.preprocess`: colour
mode, geometry, normalize; only the first two for graphs that take uint8 pixels) and then through the backend's
runner (`fuse_export.inference.predictor.Predictor`). Nothing here imports torch unless the chosen backend needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, IntegrityError, UserError
from fuse_export.exporters.formats import FORMATS
from fuse_export.exporters.manifest import MANIFEST
from fuse_export.exporters.manifest_read import NO_VERIFY, read_manifest, verify_artifact, verify_checkpoint
from fuse_export.runners.registry import BACKENDS

PREFERENCE = ("onnxruntime", "pt2", "torchscript")  # default backend order: fastest on CPU first


@dataclass
class Selected:
    """The artifact (or the eager checkpoint) that will run, with its contracts."""

    backend: str
    path: Path | None
    checkpoint: Path
    pre: Preprocessing
    embed: bool
    static_batch: bool = False
    warning: str = ""  # one line for the user when what runs is unverified (a lone file; --no-verify)


class NoArtifactFor(UserError):
    """--backend KEY: the export has no artifact that backend runs."""


class CannotRunHere(BackendUnavailable):
    """The export has artifacts for the backend, but it cannot run here; `causes`: each backend's reason, whole."""

    def __init__(self, message: str, causes: list[str]) -> None:
        super().__init__(message)
        self.causes = list(dict.fromkeys(causes))


def _artifact_file_format(path: Path) -> str:
    for fmt in FORMATS.values():
        if path.suffix == Path(fmt.file_name).suffix:
            return fmt.key
    raise UserError(f"{path}: not an artifact fuse-export knows (suffixes: "
                    f"{', '.join(Path(f.file_name).suffix for f in FORMATS.values())})")


def _embedded_metadata(path: Path, fmt: str) -> dict[str, Any]:
    """The metadata every exporter writes into its file (for an artifact without its manifest)."""
    if FORMATS[fmt].metadata_reader:  # the format table names each reader
        from fuse_export.exporters.formats import resolve

        return resolve(FORMATS[fmt].metadata_reader)(path)
    raise UserError(f"{path}: no {MANIFEST} beside it, and its format {fmt!r} carries no readable metadata")


def _pick(manifest: dict[str, Any], backend: str | None, file: str | None) -> dict[str, Any]:
    arts = [a for a in manifest["artifacts"] if file is None or a["file"] == file]
    if backend:  # its own artifacts, or any of the format and precision it runs (openvino-bf16: the fp32 IR)
        b = BACKENDS[backend]
        arts = [a for a in arts if a.get("backend") == backend or (
            b.format is not None and a.get("format") == b.format and a.get("precision", "fp32") == b.runs_precision)]
        if not arts:
            raise NoArtifactFor(f"--backend {backend}: the export has no artifact for it "
                                f"(has: {', '.join(sorted({a.get('backend', '?') for a in manifest['artifacts']}))})")
    order = {k: i for i, k in enumerate(PREFERENCE)}
    # fp32 and dynamic-batch first, then the preferred backends; unavailable ones drop out.
    arts = sorted(arts, key=lambda a: (a.get("precision", "fp32") != "fp32", bool(a.get("static_batch")),
                                       order.get(a.get("backend"), len(order))))
    reasons, causes = [], []
    for a in arts:
        b = BACKENDS.get(backend or a.get("backend", ""))
        ok, why = b.available() if b else (False, f"unknown backend {a.get('backend')!r}")
        if ok:
            return {**a, "backend": b.key}
        reasons.append(f"{a['file']}: {why}")
        causes.append(why)
    raise CannotRunHere(f"no artifact can run here ({'; '.join(reasons) or 'the manifest lists none'})", causes)


def _checkpoint_preprocessing(ckpt: Path) -> Preprocessing:
    """The preprocessing (class names included) the checkpoint itself carries: what the eager backends run with,
    whatever manifest.json says."""
    from fuse_export.errors import CheckpointError
    from fuse_export.training.checkpoint import read_checkpoint  # torch: the eager backends need it anyway

    try:
        return Preprocessing.from_dict(read_checkpoint(ckpt)["preprocessing"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt}: its field 'preprocessing' is missing or malformed ({exc}); "
                              "re-train it") from None


def select(model: str | os.PathLike, backend: str | None = None, verify: bool = True) -> Selected:
    """Resolve MODEL (+ --backend) to what runs: a manifest artifact, a bare artifact, or the eager checkpoint.

    With `verify`, what will run is checked against the manifest (sha256, companions, paths) before it is used;
    only that one, so a cold start does not hash every other file of the folder. A file in an export folder that
    its manifest does not list is refused (nothing vouches for it); a lone file, with no manifest beside it, runs
    from its embedded metadata with a warning (`Selected.warning`). Preprocessing and class names come from places
    a hash covers (see fuse_export.exporters.embedded), never from manifest.json's text alone.
    """
    model = Path(model)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend: unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not model.exists():
        raise UserError(f"{model}: no such export folder or artifact file")
    folder = model if model.is_dir() else model.parent
    manifest = read_manifest(folder, verify=False) if (folder / MANIFEST).is_file() else None
    if manifest is not None and not model.is_dir() and all(a.get("file") != model.name for a in manifest["artifacts"]):
        _artifact_file_format(model)  # not an artifact at all (a .bin, the manifest itself): say that first
        if verify:
            raise IntegrityError(f"{model}: not listed in {folder / MANIFEST}, so nothing vouches for its bytes; run "
                                 f"an artifact the export wrote, or pass {NO_VERIFY} to run this file unverified")
        manifest = None  # --no-verify: trust only what the file itself says
    if manifest is not None:
        ckpt = Path(manifest["source_checkpoint"]["path"])
        if backend is not None and BACKENDS[backend].format is None:  # eager backends run the checkpoint
            if not ckpt.is_file():
                raise UserError(f"--backend {backend}: the source checkpoint {ckpt} is gone")
            if verify:
                verify_checkpoint(manifest, folder / MANIFEST)
            return Selected(backend, None, ckpt, _checkpoint_preprocessing(ckpt), False)
        art = _pick(manifest, backend, None if model.is_dir() else model.name)
        if verify:
            verify_artifact(folder, art, folder / MANIFEST)
        from fuse_export.exporters.embedded import trusted_preprocessing

        pre = trusted_preprocessing(folder, art, manifest, verify)
        return Selected(art["backend"], folder / art["file"], ckpt, pre, bool(art.get("embed_preprocessing")),
                        bool(art.get("static_batch")))
    if model.is_dir():
        raise UserError(f"{model}: no {MANIFEST}; point at a folder written by `fuse-export export` or an artifact")
    fmt = _artifact_file_format(model)
    beside = (folder / MANIFEST).is_file()
    warning = (f"{model}: not listed in {folder / MANIFEST}; running it unverified ({NO_VERIFY})" if beside else
               f"{model}: unverified (no {MANIFEST} beside it to check its sha256); running it as its own "
               "metadata describes it")
    meta = _embedded_metadata(model, fmt)
    if "preprocessing" not in meta:
        raise UserError(f"{model}: no {MANIFEST} beside it and no fuse-export metadata inside it")
    key = backend or FORMATS[fmt].backend
    if BACKENDS[key].format != fmt:
        raise UserError(f"--backend {key} does not run {fmt} files")
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a bound (image_size) or a malformed field
        raise IntegrityError(f"{model}: its embedded preprocessing is malformed ({exc}); re-export it") from None
    return Selected(key, model, Path(), pre, meta.get("input_layout") == "uint8-nhwc", warning=warning)


# Backends tried, in order, for `load(..., device="cuda")` without a backend: fastest first.
CUDA_PREFERENCE = ("tensorrt", "onnxruntime-cuda", "torchscript-cuda")


def _select_on(model: str | os.PathLike, device: str, verify: bool) -> Selected:
    """The fastest artifact of the export that runs on `device` here (the reasons, when none does)."""
    keys = [k for k in CUDA_PREFERENCE if k in BACKENDS and BACKENDS[k].device == device]
    keys += [k for k, b in BACKENDS.items() if b.device == device and b.format is not None and k not in keys]
    if not keys:
        raise UserError(f"device {device!r}: no backend runs there; choose from "
                        f"{', '.join(sorted({b.device for b in BACKENDS.values()}))}")
    causes: dict[str, list[str]] = {}  # each distinct reason, whole -> the backends it stopped
    absent = []  # backends the export has no artifact for
    for key in keys:
        try:
            return select(model, key, verify)
        except NoArtifactFor:
            absent.append(key)
        except CannotRunHere as exc:  # an artifact for it, but the backend cannot run here: try the next one
            for why in exc.causes:
                causes.setdefault(why, []).append(key)
        except UserError as exc:  # a bad artifact for this backend (integrity, metadata): try the next one
            causes.setdefault(str(exc), []).append(key)
    raise BackendUnavailable(nothing_runs(model, device, causes, absent))


def nothing_runs(model: str | os.PathLike, device: str, causes: dict[str, list[str]], absent: list[str]) -> str:
    """One short line: why nothing runs on `device`, each reason once. When the device itself is missing (no CUDA
    device, a CPU-only torch), that one cause is the line, whatever else each backend would need besides."""
    tried = list(dict.fromkeys(k for ks in causes.values() for k in ks))
    ok, why = _device_status(device) if causes else (True, "")
    if not ok:
        parts = [f"{why} (tried {', '.join(tried)})"]
    else:
        parts = [f"{', '.join(ks)}: {reason}" for reason, ks in causes.items()]
    if absent:
        parts.append(f"the export has no artifact for {'the other' if causes else 'any of the'} {len(absent)} "
                     f"{device} backends")
    return f"{model}: nothing runs on {device} here: {'; '.join(parts)}"


def _device_status(device: str) -> tuple[bool, str]:
    """(usable, why not) of a device kind itself, whatever the backends on it need besides."""
    if device == "cuda":
        from fuse_export.runners.cuda_base import cuda_status

        return cuda_status()
    return True, ""


def select_for(model: str | os.PathLike, backend: str | None = None, device: str | None = None,
               verify: bool = True) -> Selected:
    """`select`, restricted to a device: "cpu", "cuda" or "cuda:N" (the index goes to the runner)."""
    from fuse_export.exporters.options import parse_device

    device = parse_device(device)
    kind = device.split(":")[0] if device else None
    if backend is not None or kind is None:
        sel = select(model, backend, verify)
        if kind is not None and BACKENDS[sel.backend].device != kind:
            raise UserError(f"backend {sel.backend} runs on {BACKENDS[sel.backend].device}, not on {device!r}")
        return sel
    if kind == "cpu":
        sel = select(model, None, verify)
        return sel if BACKENDS[sel.backend].device == "cpu" else _select_on(model, "cpu", verify)
    return _select_on(model, kind, verify)
