"""A Triton Inference Server model repository from an export folder: one model per servable artifact.

Every `config.pbtxt` is derived from the artifact's manifest entry (its I/O contract, precision and
class names), so the names, types and shapes Triton checks are the ones the file was verified with:

    REPO/<model>/config.pbtxt
    REPO/<model>/labels.txt          class names, one per line (label_filename of logits/probabilities)
    REPO/<model>/1/model.onnx        onnxruntime_onnx
    REPO/<model>/1/model.pt          pytorch_libtorch (TorchScript)
    REPO/<model>/1/model.plan        tensorrt_plan
    REPO/<model>/1/model.xml + .bin  backend "openvino" (OpenVINO IR; CPU only)

Each config.pbtxt is rendered by `fuse_export.deploy.triton_config`. Artifacts are verified against manifest.json
first; the repository is built beside OUT and swapped in whole (renameat2 RENAME_EXCHANGE on Linux, see
fuse_export.fileio.swap_dir). labels.txt holds the class names of the verified artifact
(fuse_export.exporters.embedded), never the manifest's unchecked list.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse_export.contract import MAX_BATCH
from fuse_export.deploy.triton_config import CONFIG_MARK, LABELS_FILE, PLATFORMS, config_text
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.embedded import trusted_preprocessing
from fuse_export.exporters.manifest_read import artifact_path, external_data_files, read_manifest
from fuse_export.fileio import folder_lock, is_inside, remove_stale_siblings, sha256_file, stage_dir, swap_dir

CONFIG_FILE = "config.pbtxt"
VERSION = "1"  # the one model version folder written
DEFAULT_MAX_BATCH = 32
MAX_INSTANCES = 64


@dataclass
class RepoModel:
    name: str
    artifact: str
    platform: str
    config: Path


@dataclass
class RepoResult:
    out: Path
    models: list[RepoModel] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (artifact file, reason)


def model_name(artifact: dict[str, Any]) -> str:
    """fer_<format>[_<precision>][_uint8]: unique per artifact kind in one export folder."""
    name = f"fer_{artifact['format']}"
    if artifact.get("precision", "fp32") != "fp32":
        name += f"_{artifact['precision']}"
    if artifact.get("embed_preprocessing"):
        name += "_uint8"
    return name


def _servable(folder: Path, artifact: dict[str, Any]) -> str:
    """Why an artifact cannot go into the repository ('' when it can). Its bytes were checked by read_manifest."""
    if artifact.get("format") not in PLATFORMS:
        return f"format {artifact.get('format')!r} has no Triton platform here (served: {', '.join(PLATFORMS)})"
    if artifact.get("static_batch"):
        return "exported with --static-batch; Triton's dynamic batching needs a dynamic batch axis"
    path = folder / artifact["file"]
    if not path.is_file():
        return f"{path} is listed in manifest.json but missing; re-export it"
    return ""


def _not_written_here(model_dir: Path) -> Path | None:
    """None when `model_dir` is a model folder this module wrote (a real folder whose config.pbtxt starts with
    CONFIG_MARK, holding nothing but that config, the labels and the version folder); else what is not."""
    if model_dir.is_symlink() or not model_dir.is_dir():
        return model_dir
    config = model_dir / CONFIG_FILE
    try:
        with open(config, encoding="utf-8") as fh:
            first = fh.readline(len(CONFIG_MARK) + 1)
    except (OSError, UnicodeDecodeError):
        return model_dir
    if config.is_symlink() or not first.startswith(CONFIG_MARK):
        return model_dir
    return next((p for p in sorted(model_dir.iterdir()) if p.name not in (CONFIG_FILE, LABELS_FILE, VERSION)), None)


def _holds_files(folder: Path) -> bool:
    """Whether anything but empty folders lies anywhere under `folder` (stops at the first file or link)."""
    for root, dirs, files in os.walk(folder):  # links to folders are listed in `dirs`, never followed
        if files or any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return True
    return False


def _foreign_entry(out: Path) -> Path | None:
    """The first entry of `out` that `--force` must not delete, or None when `out` is a repository written by
    triton-repo (every entry a model folder it wrote, recognised by its config's CONFIG_MARK) or holds no file
    at all. Recognition is positive (by what triton-repo writes, not by the absence of a manifest or a
    checkpoint), so a data set, a training run or a user's own model is never taken for a repository."""
    if not _holds_files(out):
        return None
    return next((p for p in map(_not_written_here, sorted(out.iterdir())) if p is not None), None)


def _check_out_path(folder: Path, out: Path) -> None:
    """Refuse an OUT that is a file or lies inside the export folder (checked before OUT's parent is created)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose a folder path")
    if is_inside(out, folder):
        raise UserError(f"--out {out}: inside the export folder {folder}; choose a folder outside it")


def _check_out(folder: Path, out: Path, manifest: dict[str, Any], force: bool) -> None:
    """Refuse an OUT that would lose data: a file, a non-empty folder without --force, or (even with --force) a
    folder holding the export itself, its checkpoint, or anything triton-repo did not write. Called under the
    parent's lock: a concurrent run's repository, swapped in a moment ago, counts as there."""
    _check_out_path(folder, out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"{out} already exists and is not empty; pass --force to replace it")
    ckpt = Path(manifest["source_checkpoint"]["path"])
    for source in (folder, ckpt):
        if source.exists() and is_inside(source, out):
            raise UserError(f"--out {out}: holds {source}, the source of this repository; --force would delete it. "
                            "Choose another --out")
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise UserError(f"--out {out}: holds {foreign}, which a model repository does not (triton-repo did not write "
                        "it); --force replaces only a repository written by triton-repo, so nothing was deleted. "
                        "Choose another --out, or empty this one yourself")


def build_triton_repo(artifacts_dir: str | os.PathLike, out: str | os.PathLike, max_batch_size: int = DEFAULT_MAX_BATCH,
                      instances: int = 1, force: bool = False, verify: bool = True) -> RepoResult:
    """Write a model repository for every servable artifact of an export folder; atomically.

    Every artifact is checked against its manifest sha256 first (`verify`), and each copy again after copying.
    The repository is built beside OUT under the parent folder's lock and swapped in whole (fileio.swap_dir):
    the old repository stays usable until the new one is in place, and a kill leaves one or the other. OUT is
    checked under that lock too, so of two runs into one new folder the second finds the first's repository
    there and is refused without `force`.
    """
    folder, out = Path(artifacts_dir), Path(out)
    if not 1 <= max_batch_size <= MAX_BATCH:
        raise UserError(f"--max-batch-size {max_batch_size}: must be 1..{MAX_BATCH} (the exported batch axis' range)")
    if not 1 <= instances <= MAX_INSTANCES:
        raise UserError(f"--instances {instances}: must be 1..{MAX_INSTANCES}")
    manifest = read_manifest(folder, verify=verify)
    _check_out_path(folder, out)
    result = RepoResult(out)
    names: dict[str, str] = {}
    with folder_lock(out.parent):
        remove_stale_siblings(out)
        _check_out(folder, out, manifest, force)
        tmp = stage_dir(out)
        try:
            for artifact in manifest["artifacts"]:
                why = _servable(folder, artifact)
                if why:
                    result.skipped.append((artifact.get("file", "?"), why))
                    continue
                name = model_name(artifact)
                if name in names:
                    raise UserError(f"{folder}/manifest.json: {artifact['file']} and {names[name]} would both be "
                                    f"Triton model {name!r}")
                names[name] = artifact["file"]
                p = PLATFORMS[artifact["format"]]
                model_dir = tmp / name
                (model_dir / VERSION).mkdir(parents=True)
                _copy_model(folder, artifact, model_dir / VERSION / p.model_file, verify)
                # The verified file's own class names (or the manifest's, where a digest covers them): a reordered
                # manifest list must not relabel every answer Triton gives.
                classes = trusted_preprocessing(folder, artifact, manifest, verify).class_names
                (model_dir / LABELS_FILE).write_text("\n".join(classes) + "\n", encoding="utf-8")
                (model_dir / CONFIG_FILE).write_text(
                    config_text(name, artifact, max_batch_size, instances, f"{folder}/manifest.json"), encoding="utf-8")
                result.models.append(RepoModel(name, artifact["file"], p.platform, out / name / CONFIG_FILE))
            if not result.models:
                reasons = "; ".join(f"{f}: {why}" for f, why in result.skipped) or "the manifest lists no artifacts"
                raise UserError(f"{folder}: nothing Triton can serve ({reasons})")
            swap_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _copy_model(folder: Path, artifact: dict[str, Any], dst: Path, verify: bool) -> None:
    """Copy the artifact (and an ONNX file's external data, which lives beside it) and re-check the copy's hash,
    so a file swapped between the check and the copy is caught too."""
    src = artifact_path(folder, artifact["file"])
    shutil.copyfile(src, dst)
    if verify and sha256_file(dst) != artifact["sha256"]:
        raise IntegrityError(f"{src}: changed while it was being copied (sha256 differs from {folder / 'manifest.json'}"
                             "); re-run triton-repo")
    for c in artifact.get("companions", []):  # e.g. an OpenVINO IR's .bin: same stem as the model file
        comp = artifact_path(folder, c["file"])
        target = dst.with_suffix(Path(c["file"]).suffix) if comp.stem == src.stem else dst.parent / comp.name
        shutil.copyfile(comp, target)
        if verify and sha256_file(target) != c["sha256"]:
            raise IntegrityError(f"{comp}: changed while it was being copied; re-run triton-repo")
    if artifact["format"] == "onnx":
        for loc in external_data_files(src):
            data = artifact_path(folder, loc)
            if not is_inside(data, folder) or not data.is_file():
                raise IntegrityError(f"{src}: its tensor data {loc!r} is missing or outside {folder}; re-export it")
            (dst.parent / loc).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, dst.parent / loc)
