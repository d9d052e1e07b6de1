"""Reproducibility state: seeds derived from (seed, purpose, ...), and every RNG captured and restored as plain
tensors and numbers, so a checkpoint holding them still loads with `torch.load(weights_only=True)`.

What consumes which generator during training (and so what a resume must restore):
- torch's CPU generator and the CUDA generators: dropout in the heads (per rank, seeded from (seed, rank)).
- augmentation: NOT the global generators. Each sample's flip is drawn from a generator seeded by
  (seed, epoch, sample index), so it is the same at any num_workers, any world size and after a resume.
- Python `random` and NumPy's global generator: unused by our code; captured anyway, so user transforms
  that use them resume exactly when num_workers is 0.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 over the parts): distinct inputs, unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


# Purposes, so that seeds for different jobs never coincide.
DROPOUT, AUGMENT = 1, 2


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch (CPU and every CUDA device) for this rank's dropout stream."""
    torch.manual_seed(derive_seed(seed, DROPOUT, rank))


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every global RNG this process has, as tensors and plain numbers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next}
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back what `capture_rng` took (CUDA only when both sides have it)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


class SeededDraws:
    """Within the block, the global torch/random/NumPy generators are seeded from `seed`; afterwards they are
    put back as they were. Used per sample, so augmentation never depends on who loads it or in which order.
    """

    def __init__(self, seed: int, restore: bool = True) -> None:
        self.seed, self.restore = seed, restore
        self._saved: tuple[Any, ...] | None = None

    def __enter__(self) -> None:
        if self.restore:
            self._saved = (torch.default_generator.get_state(), random.getstate(), np.random.get_state())
        torch.default_generator.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed & 0xFFFFFFFF)

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            torch.default_generator.set_state(self._saved[0])
            random.setstate(self._saved[1])
            np.random.set_state(self._saved[2])
