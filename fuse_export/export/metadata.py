"""Metadata every artifact carries: class names, preprocessing and the I/O contract (JSON-serialisable)."""

from __future__ import annotations

from typing import Any

from fuse_export import __version__
from fuse_export.contract import Preprocessing, io_contract


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
