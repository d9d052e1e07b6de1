"""The inference callables `serve` binds into Triton, and the tensors they declare (from the I/O contract).

PyTriton calls these in threads of the serving process, one thread per model instance; both Triton models of
an instance share its runner, so a lock keeps runtimes whose sessions are not re-entrant (OpenVINO infer
requests, TensorRT contexts) safe.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fuse_export.contract import IOContract, Preprocessing, check_outputs
from fuse_export.errors import DataError, IntegrityError
from fuse_export.runners.base import Runner

LABEL = "label"


def model_tensors(contract: IOContract, pre: Preprocessing) -> tuple[Any, Any, list[Any]]:
    """PyTriton tensor specs, per item (Triton adds the batch axis): the contract's input, `image_bytes`, and
    the contract's outputs plus `label`."""
    from pytriton.model_config import Tensor

    def spec(t) -> Any:
        return Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=t.shape(-1, pre.num_classes, pre.image_size)[1:])

    (image,) = contract.inputs
    outputs = [spec(t) for t in contract.outputs] + [Tensor(name=LABEL, dtype=bytes, shape=(1,))]
    return spec(image), Tensor(name="image_bytes", dtype=bytes, shape=(1,)), outputs


class Instance:
    """One model instance: a loaded runner and what turns a batch of requests into its outputs."""

    def __init__(self, runner: Runner, pre: Preprocessing, embed: bool) -> None:
        self.runner, self.pre, self.embed = runner, pre, embed
        self.input_name = runner.contract.input_names[0]
        self._lock = threading.Lock()
        self._labels = np.array([c.encode() for c in pre.class_names], dtype=object)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            outs = self.runner.infer({self.input_name: x})
        problems = check_outputs(outs)
        if problems:  # an artifact that breaks its output contract must not answer as if it were fine
            raise IntegrityError(f"{self.runner.label}: {'; '.join(problems)}")
        outs[LABEL] = self._labels[outs["probabilities"].argmax(axis=1)].reshape(-1, 1)
        return outs

    def infer_tensor(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """A batch in the artifact's own input contract (Triton has checked name, dtype and shape)."""
        return self._run(image)

    def infer_bytes(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        """A batch of encoded images ([N, 1] bytes): decoded (EXIF applied) and preprocessed as `predict` does."""
        from fuse_export import preprocess

        images = []
        for i, item in enumerate(image_bytes.reshape(-1)):
            data = item if isinstance(item, bytes) else bytes(item)
            if not data:
                raise DataError(f"image_bytes[{i}]", "empty; send the encoded JPEG/PNG file's bytes")
            images.append(preprocess.open_image(data, name=f"image_bytes[{i}]"))
        x = preprocess.model_pixels(images, self.pre) if self.embed else preprocess.preprocess(images, self.pre)
        return self._run(x)
