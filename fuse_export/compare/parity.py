"""Parity of a backend against the eager reference: truthy when it passes, and says why when it doesn't."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Per precision: (max |difference| of probabilities, minimum top-1 agreement with the fp32 eager reference).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1.0),
    "fp16": (1e-2, 0.99),
    "bf16": (1e-2, 0.99),
    "int8": (5e-2, 0.95),
}


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float


@dataclass
class ParityResult:
    backend: str
    samples: int
    max_abs_prob: float
    top1_agreement: float
    atol: float
    min_agreement: float
    outputs: dict[str, OutputDiff] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.max_abs_prob <= self.atol and self.top1_agreement >= self.min_agreement

    def explain(self) -> str:
        """One line: PASSED with the figures, or FAILED with what tolerance would have passed."""
        figures = (f"max |dprob| {self.max_abs_prob:.2e} (atol {self.atol:.0e}), top-1 agreement "
                   f"{self.top1_agreement:.2%} (min {self.min_agreement:.0%}) over {self.samples} inputs")
        if self:
            return f"PASSED {self.backend}: {figures}"
        worst = max(self.outputs.values(), key=lambda d: d.max_abs).name if self.outputs else "probabilities"
        return (f"FAILED {self.backend}: {figures}; would pass only with atol >= {self.max_abs_prob:.2e} and "
                f"agreement >= {self.top1_agreement:.2%} (largest difference in output {worst!r})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = bool(self)
        return d


def compare_outputs(backend: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                    precision: str = "fp32") -> ParityResult:
    """Compare every output of `actual` with `reference` (same inputs, same order)."""
    atol, min_agreement = TOLERANCES[precision]
    diffs = {}
    for name, ref in reference.items():
        got = actual[name]
        if got.shape != ref.shape:
            raise ValueError(f"{backend}: output {name!r} has shape {got.shape}, reference {ref.shape}")
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64)).ravel()
        diffs[name] = OutputDiff(name, float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0,
                                 float(np.percentile(d, 99)) if d.size else 0.0)
    agree = float((actual["probabilities"].argmax(1) == reference["probabilities"].argmax(1)).mean())
    return ParityResult(backend, int(reference["probabilities"].shape[0]), diffs["probabilities"].max_abs, agree,
                        atol, min_agreement, diffs)
