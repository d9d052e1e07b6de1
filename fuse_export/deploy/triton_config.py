"""config.pbtxt text for one manifest artifact: the Triton platform of each export format, the tensor types,
the dynamic batcher and the instance group.

The text is written by hand (no tritonclient needed at run time); the tests parse it with Triton's own
ModelConfig protobuf schema. Its first line carries CONFIG_MARK, by which triton-repo's `--force` knows a
model folder is one it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fuse_export.contract import BATCH_AXIS
from fuse_export.errors import UserError

LABELS_FILE = "labels.txt"
# The first line of every config.pbtxt written here: the mark by which `--force` knows a repository is ours.
CONFIG_MARK = "# Written by fuse-export triton-repo"
MAX_QUEUE_DELAY_US = 100  # how long the dynamic batcher may hold a request to fill a batch


@dataclass(frozen=True)
class Platform:
    """How Triton serves one export format."""

    platform: str  # config.pbtxt `platform`
    model_file: str  # file name Triton looks for in the version folder (its default_model_filename)
    kind: str  # instance group kind: KIND_AUTO lets Triton use a GPU when it has one, else the CPU
    indexed_names: bool  # TorchScript files carry no tensor names: Triton's "<name>__<index>" convention
    key: str = "platform"  # config.pbtxt field naming it: `platform`, or `backend` for backend-only runtimes


# Keyed by the export format (fuse_export.exporters.formats). TensorRT plans exist only on GPUs.
PLATFORMS: dict[str, Platform] = {
    "onnx": Platform("onnxruntime_onnx", "model.onnx", "KIND_AUTO", False),
    "torchscript": Platform("pytorch_libtorch", "model.pt", "KIND_AUTO", True),
    "tensorrt": Platform("tensorrt_plan", "model.plan", "KIND_GPU", False),
    # Triton's OpenVINO backend runs on CPUs only and reads model.bin beside model.xml. It has a bf16 switch
    # (HINT_BF16) but no f32 one: on AVX512-BF16/AMX CPUs OpenVINO may then compute the fp32 IR in bf16.
    "openvino": Platform("openvino", "model.xml", "KIND_CPU", False, key="backend"),
}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to the maximum, and the maximum itself: sizes worth waiting a moment for."""
    sizes = {p for p in (4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= max_batch_size}
    return sorted(sizes | {max_batch_size})


def tensor_names(artifact: dict[str, Any], indexed: bool) -> tuple[list[str], list[str]]:
    """Config names of the inputs and outputs: the contract's, or '<name>__<index>' for TorchScript."""
    ins = [t["name"] for t in artifact["io"]["inputs"]]
    outs = [t["name"] for t in artifact["io"]["outputs"]]
    if indexed:
        ins = [f"{n}__{i}" for i, n in enumerate(ins)]
        outs = [f"{n}__{i}" for i, n in enumerate(outs)]
    return ins, outs


def _dims(tensor: dict[str, Any], where: str) -> list[int]:
    """Dims without the leading batch axis (Triton adds it back when max_batch_size > 0)."""
    shape = list(tensor["shape"])
    if not shape or shape[0] != BATCH_AXIS or any(not isinstance(d, int) for d in shape[1:]):
        raise UserError(f"{where}: tensor {tensor['name']!r} has shape {shape}; expected [batch, fixed dims...]")
    return shape[1:]


def _tensor_block(kind: str, tensors: list[dict[str, Any]], names: list[str], labelled: set[str], where: str) -> str:
    items = []
    for t, name in zip(tensors, names):
        if t["dtype"] not in DTYPES:
            raise UserError(f"{where}: tensor {t['name']!r} has dtype {t['dtype']!r}, which this tool cannot map "
                            f"to a Triton type (knows {', '.join(DTYPES)})")
        lines = [f'    name: "{name}"', f"    data_type: {DTYPES[t['dtype']]}",
                 f"    dims: [ {', '.join(str(d) for d in _dims(t, where))} ]"]
        if t["name"] in labelled:
            lines.append(f'    label_filename: "{LABELS_FILE}"')
        items.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_text(name: str, artifact: dict[str, Any], max_batch_size: int, instances: int, where: str = "") -> str:
    """config.pbtxt for one manifest artifact entry."""
    p = PLATFORMS[artifact["format"]]
    ins, outs = tensor_names(artifact, p.indexed_names)
    sizes = ", ".join(str(s) for s in preferred_batch_sizes(max_batch_size))
    return (
        f"{CONFIG_MARK} from {artifact['file']} (sha256 {artifact['sha256'][:12]}, "
        f"{artifact.get('precision', 'fp32')}, {artifact['io']['layout']}).\n"
        f'name: "{name}"\n'
        f'{p.key}: "{p.platform}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'default_model_filename: "{p.model_file}"\n'
        + _tensor_block("input", artifact["io"]["inputs"], ins, set(), where)
        + _tensor_block("output", artifact["io"]["outputs"], outs, {"logits", "probabilities"}, where)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {sizes} ]\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        f"    count: {instances}\n"
        f"    kind: {p.kind}\n"
        "  }\n"
        "]\n"
    )
