"""`export --simplify`: onnxslim over an exported ONNX file (constant folding, dead-node and redundant-op
removal), keeping its metadata and I/O names. Optional: the `simplify` extra installs onnxslim."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fuse_export.errors import ExportError
from fuse_export.extras import MissingExtra


def _onnxslim():
    try:
        import onnxslim
    except ImportError:
        raise MissingExtra("simplify", "--simplify", ["onnxslim"]) from None
    return onnxslim


def node_count(model: Any) -> int:
    """Nodes of the main graph (functions excluded: the exporter inlines them by default)."""
    return len(model.graph.node)


def simplify_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Simplify the ONNX file in place (atomically); returns the node counts before and after, and the version."""
    import onnx

    from fuse_export.fileio import atomic_path

    onnxslim = _onnxslim()
    path = Path(path)
    model = onnx.load(str(path))
    before = node_count(model)
    metadata = [(p.key, p.value) for p in model.metadata_props]
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # onnxslim raises whatever its passes raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(f"{path}: onnxslim failed ({type(exc).__name__}: {first}); "
                          "export without --simplify") from None
    if slim is None:
        raise ExportError(f"{path}: onnxslim returned no model; export without --simplify")
    del slim.metadata_props[:]  # the metadata is ours: carry it over unchanged
    for key, value in metadata:
        entry = slim.metadata_props.add()
        entry.key, entry.value = key, value
    slim.producer_name = model.producer_name
    if [i.name for i in slim.graph.input] != [i.name for i in model.graph.input] or \
            [o.name for o in slim.graph.output] != [o.name for o in model.graph.output]:
        raise ExportError(f"{path}: onnxslim renamed the graph's inputs or outputs; export without --simplify")
    onnx.checker.check_model(slim, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(slim, str(tmp))
    return {"tool": "onnxslim", "version": getattr(onnxslim, "__version__", "?"), "nodes_before": before,
            "nodes_after": node_count(slim)}
