"""Run a selected artifact on images: preprocessing (torch-free), the backend's runner in batches, and the output
contract checked on every batch. `fuse_export.load()` (app/loading.py) and `predict` (inference/photos.py) build on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_export.contract import Preprocessing, check_outputs
from fuse_export.errors import BackendUnavailable, IntegrityError, UserError
from fuse_export.preprocess import ImageLike, model_pixels, normalize
from fuse_export.runners.base import Runner
from fuse_export.runners.registry import BACKENDS

if TYPE_CHECKING:
    from fuse_export.inference.selection import Selected

BATCH = 32  # images per runner call (a static-batch export: 1)


@dataclass
class Predictions:
    """One row per input image: the fused model's label, class probabilities and SCN confidence (alpha)."""

    class_names: tuple[str, ...]
    labels: list[str]
    probabilities: np.ndarray  # float32 [N, C], softmax of the fused logits
    confidence: np.ndarray  # float32 [N], SCN importance weight in (0, 1): low = an uncertain image
    logits: np.ndarray  # float32 [N, C]

    def __len__(self) -> int:
        return len(self.labels)

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready rows: label, its probability, confidence, and every class probability."""
        return [{"label": label, "probability": float(p.max()), "confidence": float(c),
                 "probabilities": {name: float(v) for name, v in zip(self.class_names, p)}}
                for label, p, c in zip(self.labels, self.probabilities, self.confidence)]


class Predictor:
    """An activated runner for one selected artifact: built once, then `predict` as often as needed."""

    def __init__(self, selected: Selected, threads: int | None = None, fast_startup: bool = False,
                 device: str | None = None) -> None:
        self.selected = selected
        b = BACKENDS[selected.backend]
        ok, why = b.available()
        if not ok:
            raise BackendUnavailable(f"backend {selected.backend}: {why}")
        from fuse_export.compare.feed import make_runner  # a CUDA runner on `device` (cuda:N)

        self.runner: Runner = make_runner(b, selected.path, selected.checkpoint, selected.pre, threads,
                                          selected.embed, device)
        self.runner.fast_startup = fast_startup
        self.runner.activate()
        self.closed = False
        # A static-batch export takes exactly its batch: feed such files one image at a time.
        self.batch = 1 if selected.static_batch else BATCH

    @property
    def backend(self) -> str:
        return self.selected.backend

    @property
    def preprocessing(self) -> Preprocessing:
        return self.selected.pre

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.selected.pre.class_names

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Predictions:
        """Images (paths, encoded bytes or PIL images; one or a list) -> predictions, in order."""
        self._check_open()  # before any image is decoded
        return self.predict_pixels(model_pixels(images, self.preprocessing))

    def predict_pixels(self, pixels: np.ndarray) -> Predictions:
        """uint8 RGB [N, H, W, 3] at the model's input size (fuse_export.preprocess.model_pixels) -> predictions."""
        x = pixels if self.selected.embed else normalize(pixels, self.preprocessing)
        outs = self.run(x)
        probs = outs["probabilities"]
        names = self.class_names
        return Predictions(names, [names[int(k)] for k in probs.argmax(axis=1)] if len(probs) else [], probs,
                           outs["confidence"].reshape(-1), outs["logits"])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The model's input (contract layout) -> its outputs, in batches; each batch checked against the
        output contract (an artifact giving outputs the contract rules out raises IntegrityError)."""
        self._check_open()
        name = self.runner.contract.input_names[0]
        parts = []
        for i in range(0, len(x), self.batch):
            out = self.runner.infer({name: x[i:i + self.batch]})
            problems = check_outputs(out)
            if problems:
                raise IntegrityError(f"{self.selected.path or self.selected.checkpoint}: {self.backend} outputs "
                                     f"break the output contract ({'; '.join(problems)}); re-export the model")
            parts.append(out)
        if not parts:
            c = len(self.class_names)
            return {"logits": np.zeros((0, c), np.float32), "probabilities": np.zeros((0, c), np.float32),
                    "confidence": np.zeros((0, 1), np.float32)}
        return {k: np.concatenate([p[k] for p in parts]) for k in self.runner.contract.output_names}

    def _check_open(self) -> None:
        if self.closed:
            raise UserError(f"{self!r} was closed (close(), or the end of its `with` block) and runs nothing more; "
                            "load the model again with fuse_export.load()")

    def close(self) -> None:
        """Release the runtime's session and memory; the predictor refuses to predict afterwards."""
        self.closed = True
        self.runner.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({self.backend}: {self.selected.path or self.selected.checkpoint})"
