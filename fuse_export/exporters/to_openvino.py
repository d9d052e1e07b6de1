"""OpenVINO IR: the verified ONNX export converted with OpenVINO's own API to `model.xml` + `model.bin`.

fp32 weights are kept (`compress_to_fp16=False`: save_model's default silently halves them); the int8 IR
is the Q/DQ ONNX converted the same way (OpenVINO runs Q/DQ graphs as int8). The artifact metadata (class
names, preprocessing, I/O contract, version) goes into the IR's runtime info under `fuse_export`, one JSON
string per key. Neither torch nor the onnx package is needed here; openvino is imported inside functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.extras import install_hint
from fuse_export.fileio import sha256_file

RT_INFO_ROOT = "fuse_export"  # rt_info section that carries the artifact metadata


def import_openvino():
    """The openvino module, or a one-line BackendUnavailable naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"openvino is not installed: {install_hint('openvino')} "
                                 "(or pip install openvino)") from None
    return openvino


_CORE = None
_CORE_LOCK = threading.Lock()


def shared_core():
    """The process's one `openvino.Core`, made on first use; every reader, converter and runner here shares it
    (a Core is safe to use from several threads). Each Core's CPU plugin gives the creating thread an alternate
    signal stack and unmaps it when the plugin goes, restoring the previous one only if its own is still current:
    plugins dropped out of creation order leave the thread registered on an unmapped stack, and the next signal
    with a Python handler (torch's DataLoader sets one for SIGCHLD) kills the process with SIGSEGV or writes over
    live memory (issue 27; benchmarks/RESULTS.md). One Core, one plugin, alive until exit."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def weights_file(xml: str | os.PathLike) -> Path:
    """The .bin that belongs to an IR .xml (same stem, same folder)."""
    return Path(xml).with_suffix(".bin")


def export_openvino(onnx_path: str | os.PathLike, xml_path: str | os.PathLike,
                    metadata: dict[str, Any]) -> dict[str, Any]:
    """Convert `onnx_path` to an IR at `xml_path` (+ its .bin) with `metadata` in rt_info; return manifest extras.

    Both files are written into a temporary folder beside the target and renamed into place, .bin first, so
    a reader never finds a new .xml next to an old or half-written .bin.
    """
    ov = import_openvino()
    onnx_path, xml = Path(onnx_path), Path(xml_path)
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: the ONNX file the OpenVINO IR is converted from is missing")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises plain RuntimeErrors/OpConversionFailure with long text
        raise ExportError(f"{onnx_path}: OpenVINO could not convert it ({_first_line(exc)})") from None
    for key, value in metadata.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value), [RT_INFO_ROOT, key])
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", suffix=".ir.tmp", dir=xml.parent))
    try:
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        os.replace(tmp / weights_file(xml).name, weights_file(xml))
        os.replace(tmp / xml.name, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bin_ = weights_file(xml)
    return {"source_onnx": onnx_path.name,
            "companions": [{"file": bin_.name, "sha256": sha256_file(bin_), "size_bytes": bin_.stat().st_size}]}


def check_ir_files(xml: str | os.PathLike) -> Path:
    """The IR's .bin, after checking both files exist and are not empty; a UserError in one line otherwise."""
    xml = Path(xml)
    bin_ = weights_file(xml)
    if not xml.is_file():
        raise UserError(f"{xml}: no such OpenVINO IR file; re-export with --format openvino")
    if not bin_.is_file():
        raise UserError(f"{xml}: its weights file {bin_.name} is missing beside it (an IR is the .xml and the "
                        f".bin together); copy both, or re-export with --format openvino")
    if xml.stat().st_size == 0 or bin_.stat().st_size == 0:
        raise UserError(f"{xml if xml.stat().st_size == 0 else bin_}: empty file; re-export with --format openvino")
    return bin_


def read_ir(core, xml: str | os.PathLike):
    """`core.read_model` on a checked IR; OpenVINO's multi-line errors (truncated .bin, bad XML) as one line."""
    bin_ = check_ir_files(xml)
    try:
        return core.read_model(str(xml), str(bin_))
    except Exception as exc:
        raise UserError(f"{xml}: OpenVINO cannot read this IR ({_first_line(exc)}); the .xml or {bin_.name} is "
                        "damaged or truncated: re-export with --format openvino") from None


def read_openvino_metadata(xml: str | os.PathLike) -> dict[str, Any]:
    """The fuse_export rt_info of an IR, JSON values decoded; read from the XML text (no openvino needed)."""
    xml = Path(xml)
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UserError(f"{xml}: not a readable OpenVINO IR ({_first_line(exc)}); re-export with --format "
                        "openvino") from None
    section = root.find(f"rt_info/{RT_INFO_ROOT}")
    out: dict[str, Any] = {}
    for item in [] if section is None else list(section):
        value = item.get("value", "")
        try:
            out[item.tag] = json.loads(value)
        except json.JSONDecodeError:
            out[item.tag] = value
    return out


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Check ")]
    text = lines[-1] if lines else type(exc).__name__
    return text[:200]
