"""The two contracts every artifact obeys, defined once.

* The I/O contract: input and output names, dtypes, shapes and which axes are dynamic. The exporters,
  runners, manifest, Triton configs and tests all derive from `IO_CONTRACT` (or its uint8 variant).
* The preprocessing contract: input size, normalization and class names. The transforms, the model's
  checkpoint, ONNX metadata and the manifest all derive from `Preprocessing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the interface. Dims are ints or symbols: 'batch', 'classes', 'height', 'width'."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    doc: str

    def shape(self, batch: int, num_classes: int, image_size: int) -> tuple[int, ...]:
        sizes = {BATCH_AXIS: batch, "classes": num_classes, "height": image_size, "width": image_size}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)

    def to_dict(self, num_classes: int, image_size: int) -> dict[str, Any]:
        shape = [d if d == BATCH_AXIS else s for d, s in zip(self.dims, self.shape(-1, num_classes, image_size))]
        return {"name": self.name, "dtype": self.dtype, "shape": shape, "doc": self.doc}


@dataclass(frozen=True)
class IOContract:
    """Names, order, dtypes and dims of the exported graph's inputs and outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layout: str  # "float-nchw" (normalized) or "uint8-nhwc" (raw RGB pixels, preprocessing in the graph)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX `dynamic_axes`: the batch axis of every tensor."""
        return {t.name: {i: d for i, d in enumerate(t.dims) if d == BATCH_AXIS} for t in (*self.inputs, *self.outputs)}

    def to_dict(self, num_classes: int, image_size: int) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "inputs": [t.to_dict(num_classes, image_size) for t in self.inputs],
            "outputs": [t.to_dict(num_classes, image_size) for t in self.outputs],
        }


_OUTPUTS = (
    TensorSpec("logits", "float32", (BATCH_AXIS, "classes"), "fused (stacked) class logits"),
    TensorSpec("probabilities", "float32", (BATCH_AXIS, "classes"), "softmax of the fused logits"),
    TensorSpec("confidence", "float32", (BATCH_AXIS, 1), "SCN importance weight alpha in (0, 1)"),
)

IO_CONTRACT = IOContract(
    inputs=(TensorSpec("image", "float32", (BATCH_AXIS, 3, "height", "width"), "RGB, normalized by mean/std"),),
    outputs=_OUTPUTS,
    layout="float-nchw",
)

IO_CONTRACT_UINT8 = IOContract(
    inputs=(TensorSpec("image", "uint8", (BATCH_AXIS, "height", "width", 3), "raw RGB pixels at the input size"),),
    outputs=_OUTPUTS,
    layout="uint8-nhwc",
)


def io_contract(embed_preprocessing: bool = False) -> IOContract:
    return IO_CONTRACT_UINT8 if embed_preprocessing else IO_CONTRACT


@dataclass(frozen=True)
class Preprocessing:
    """What a client must do to an image before the model sees it (and what the model carries with it)."""

    image_size: int
    class_names: tuple[str, ...] = FER2013_CLASSES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Eval: resize the short side to image_size * resize_ratio, then center-crop (the seed's 256 -> 224).
    resize_ratio: float = 256 / 224
    channels: str = field(default="RGB")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size * self.resize_ratio))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            class_names=tuple(d["class_names"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            resize_ratio=float(d.get("resize_ratio", 256 / 224)),
            channels=str(d.get("channels", "RGB")),
        )
