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
# The batch axis' range of every exported graph (ONNX, PT2 and TensorRT profiles), and so the largest batch any
# command may ask for: one source of truth for export, bench and triton-repo.
MAX_BATCH = 4096
# The model's input size, for the recipe's data.image_size and every file's preprocessing: ResNet-18 downsamples
# by 32, so smaller inputs leave the features nothing; at 1024 it already needs ~20x the memory of 224, so larger
# is a typo, or a hostile file (60000 made `predict` allocate 11.7 GB).
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024


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


COLOR_MODES = ("rgb", "gray")
# "resize-crop": resize the short side to image_size * resize_ratio, then center-crop image_size (keeps aspect).
# "squash": resize the whole frame to image_size x image_size (SCN's released code; distorts non-square frames).
GEOMETRIES = ("resize-crop", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """What a client must do to an image before the model sees it (and what the model carries with it).

    The one definition of deployed preprocessing. Order: decode, apply EXIF orientation, convert to the colour
    mode ("gray": luma, ITU-R 601-2 as PIL's convert("L"), replicated to 3 channels; "rgb": RGB), apply the
    geometry at bilinear+antialias (PIL's resize), scale to [0, 1], normalize by mean/std.
    """

    image_size: int
    class_names: tuple[str, ...] = FER2013_CLASSES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Eval with "resize-crop": resize the short side to image_size * resize_ratio, then center-crop.
    resize_ratio: float = 256 / 224
    color_mode: str = field(default="rgb")
    # "squash" by measurement (benchmarks/compare_geometry.py, RESULTS.md): the best of the consistent pairs on
    # validation; training squashed and deploying crops (the first release) was the worst.
    geometry: str = field(default="squash")

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode {self.color_mode!r}: choose from {', '.join(COLOR_MODES)}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry {self.geometry!r}: choose from {', '.join(GEOMETRIES)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resize_size(self) -> int:
        """Short-side size before the center crop ("resize-crop"); the input size itself for "squash"."""
        if self.geometry == "squash":
            return self.image_size
        return int(round(self.image_size * self.resize_ratio))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        # Artifacts written before color_mode/geometry existed were RGB with resize + center crop.
        legacy_mode = "gray" if str(d.get("channels", "RGB")).upper() in ("L", "GRAY") else "rgb"
        size = int(d["image_size"])
        # Bounded where files are read, before any image of that size is allocated (the constructor stays free
        # for tests of tiny transforms).
        if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise ValueError(f"preprocessing.image_size is {size}; it must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
        return cls(
            image_size=size,
            class_names=tuple(d["class_names"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            resize_ratio=float(d.get("resize_ratio", 256 / 224)),
            color_mode=str(d.get("color_mode", legacy_mode)),
            geometry=str(d.get("geometry", "resize-crop")),
        )


def check_outputs(outputs: dict[str, Any], *, atol: float = 1e-3) -> list[str]:
    """Violations of the output contract in one batch of outputs (name -> numpy array); empty when it holds.

    Checked: every output present with its contract shape rank, all values finite, probabilities in [0, 1]
    summing to 1 per row (within `atol`, loose enough for fp16 graphs), confidence (alpha, a sigmoid) in
    [0, 1]. A TorchScript file is code, so an edited one can return anything: callers turn a non-empty list
    into an IntegrityError. Pure numpy, so the torch-free runtime can use it.
    """
    import numpy as np

    problems: list[str] = []
    for spec in _OUTPUTS:
        if spec.name not in outputs:
            problems.append(f"output {spec.name!r} is missing")
            continue
        arr = np.asarray(outputs[spec.name], dtype=np.float64)
        if arr.ndim != len(spec.dims):
            problems.append(f"output {spec.name!r} has rank {arr.ndim}, the contract says {len(spec.dims)}")
        elif not np.isfinite(arr).all():
            problems.append(f"output {spec.name!r} has non-finite values")
    if problems:
        return problems
    probs = np.asarray(outputs["probabilities"], dtype=np.float64)
    conf = np.asarray(outputs["confidence"], dtype=np.float64)
    if probs.min(initial=0.0) < -atol or probs.max(initial=0.0) > 1 + atol:
        problems.append(f"probabilities outside [0, 1] (min {probs.min():.4g}, max {probs.max():.4g})")
    sums = probs.sum(axis=1)
    if sums.size and np.abs(sums - 1).max() > atol:
        problems.append(f"probabilities do not sum to 1 (worst row sums to {sums[np.abs(sums - 1).argmax()]:.6g})")
    if conf.size and (conf.min() < -atol or conf.max() > 1 + atol):
        problems.append(f"confidence outside (0, 1) (min {conf.min():.4g}, max {conf.max():.4g})")
    return problems
