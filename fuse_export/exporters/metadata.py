"""Metadata every artifact carries: class names, preprocessing and the I/O contract (JSON-serialisable).

Writing happens at export time; reading (`read_onnx_metadata`) is torch-free, for the slim runtime install.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from fuse_export import __version__
from fuse_export.contract import Preprocessing, io_contract
from fuse_export.errors import UserError


def artifact_metadata(pre: Preprocessing, embed_preprocessing: bool = False) -> dict[str, Any]:
    contract = io_contract(embed_preprocessing)
    return {
        "producer": "fuse-export",
        "fuse_export_version": __version__,
        "class_names": list(pre.class_names),
        # Flat copies for clients that read ONNX metadata_props without parsing nested JSON.
        "image_size": pre.image_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input_layout": contract.layout,
        "preprocessing": pre.to_dict(),
        "io": contract.to_dict(pre.num_classes, pre.image_size),
    }


def _decode(props: dict[str, str]) -> dict[str, Any]:
    """metadata_props values are strings; the nested ones (preprocessing, io, lists) are JSON."""
    import json

    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ModelProto's `metadata_props` (repeated StringStringEntryProto {1: key, 2: value}) in onnx.proto.
_METADATA_PROPS = 14


def _varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    """A protobuf varint at `pos`: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint runs past the end of the data")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes | mmap.mmap, wanted: int) -> list[bytes]:
    """The length-delimited values of field `wanted` in one protobuf message; every other field is skipped by
    its length (the wire format alone: nothing of the message's schema is needed)."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if field == wanted:
                out.append(buf[pos:pos + n])
            pos += n
        else:
            raise ValueError(f"field {field} has wire type {wire}, which ONNX files do not use")
        if pos > len(buf) or field == 0:
            raise ValueError("truncated or not a protobuf message")
    return out


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata_props of an ONNX file, JSON values decoded.

    Needs neither onnx, ONNX Runtime nor torch (the slim runtime install has only ONNX Runtime, and building a
    session, or parsing the whole graph with onnx.load, would cost a cold start hundreds of ms on a 45 MB
    model): the file is mapped and read in protobuf's wire format, the graph skipped by its length unparsed.
    """
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            props = {}
            for entry in _fields(mm, _METADATA_PROPS):  # slices of an mmap are bytes copies: only these are read
                key, value = (_fields(entry, k) for k in (1, 2))
                props[bytes(key[0]).decode() if key else ""] = bytes(value[0]).decode() if value else ""
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # mmap of an empty file is a ValueError too
        raise UserError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return _decode(props)
