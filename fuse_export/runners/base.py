"""The runner life cycle (after Polygraphy): built cheaply, activated on `with`, fed name -> array mappings."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from fuse_export.contract import IOContract, Preprocessing, io_contract
from fuse_export.errors import InputError, IntegrityError, UserError


# How idle intra-op worker threads wait: "on" spin between operators and after a call (ONNX Runtime's default:
# lowest latency for back-to-back calls, but the spinning holds cores after the call returns), "off" never spin
# (sleep and be woken for every parallel operator), "run" spin inside a call and stop when it returns.
SPIN_MODES = ("on", "off", "run")


class Runner(abc.ABC):
    """Runs one artifact. Construction imports nothing heavy; `activate` loads the backend and the model."""

    backend: str = ""

    def __init__(self, pre: Preprocessing, embed_preprocessing: bool = False, label: str | None = None) -> None:
        self.pre = pre
        self.contract: IOContract = io_contract(embed_preprocessing)
        self.label = label or self.backend
        self.active = False
        # Set before activate() for one-shot runs on a few images: a runtime that can trade load time for
        # throughput (ONNX Runtime's layout-changing graph optimizations) loads fast instead. Others ignore it.
        self.fast_startup = False
        # Set before activate() in a process that shares its cores with other busy processes (a server's stub
        # beside tritonserver's threads): how the intra-op worker threads wait for work (SPIN_MODES; ONNX
        # Runtime). None: the runtime's default ("on"). Runtimes without such a setting ignore it.
        self.spin: str | None = None

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def _deactivate(self) -> None:
        pass

    def activate(self) -> Runner:
        if not self.active:
            try:
                self._activate()
            except (UserError, ImportError):  # a missing package (the slim install's torch) is not a bad artifact
                raise
            except Exception as exc:  # a truncated, random or foreign file: the runtime's own error, in one line
                where = getattr(self, "path", None) or self.label
                first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:300]
                raise IntegrityError(f"{where}: {self.label} cannot load it ({type(exc).__name__}: {first}); "
                                     "re-export it") from None
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def check_feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Validate the feed against the I/O contract; return the single input array."""
        (spec,) = self.contract.inputs
        if set(feed) != {spec.name}:
            raise InputError(f"{self.label}: inputs are {sorted(feed)}, expected exactly [{spec.name!r}]")
        x = feed[spec.name]
        expected = spec.shape(-1, self.pre.num_classes, self.pre.image_size)
        if x.dtype != np.dtype(spec.dtype):
            raise InputError(f"{self.label}: input {spec.name!r} has dtype {x.dtype}, expected {spec.dtype}")
        if x.ndim != len(expected) or any(e not in (-1, s) for e, s in zip(expected, x.shape)) or x.shape[0] < 1:
            shown = tuple("N" if e == -1 else e for e in expected)
            raise InputError(f"{self.label}: input {spec.name!r} has shape {tuple(x.shape)}, expected {shown}")
        return np.ascontiguousarray(x)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a feed {input name: array}; returns {output name: array} in contract order."""
        if not self.active:
            raise RuntimeError(f"{self.label}: runner used before activate()")
        outs = self._infer(self.check_feed(feed))
        return dict(zip(self.contract.output_names, outs))
