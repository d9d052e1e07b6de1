"""Parity of a backend against the eager reference: truthy when it passes, and says why when it doesn't."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Per precision: (max |difference| of probabilities, minimum top-1 agreement with the fp32 eager reference).
# Agreement counts the inputs whose eager top-1 is decided by more than atol (top-1 minus runner-up
# probability): a closer call may flip under any perturbation within the tolerance, so it cannot be held
# against the artifact (a near-chance model has few decided inputs; its check then rests on atol).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1.0),
    "fp16": (1e-2, 0.99),
    "bf16": (1e-2, 0.99),
    # Static PTQ of a trained model at 64x64, 210 test images: max |dp| 0.09-0.12, p99 0.06-0.10, 99.5% agreement
    # (benchmarks/bench_int8_cpu.py); the accuracy bound (<= 1 point) is checked by that benchmark.
    "int8": (1.5e-1, 0.95),
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
    decided: int = -1  # inputs counted in top1_agreement (-1: all of them)
    top1_agreement_all: float = -1.0  # over every input, near-ties included

    def __bool__(self) -> bool:
        return self.max_abs_prob <= self.atol and self.top1_agreement >= self.min_agreement

    def explain(self) -> str:
        """One line: PASSED with the figures, or FAILED with what tolerance would have passed."""
        counted = f"{self.samples} inputs"
        if 0 <= self.decided < self.samples:
            counted = (f"{self.decided} decided of {self.samples} inputs; {self.top1_agreement_all:.2%} "
                       "over all")
        figures = (f"max |dprob| {self.max_abs_prob:.2e} (atol {self.atol:.2g}), top-1 agreement "
                   f"{self.top1_agreement:.2%} (min {self.min_agreement:.0%}) over {counted}")
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
    ref_p = reference["probabilities"]
    same = actual["probabilities"].argmax(1) == ref_p.argmax(1)
    top2 = np.sort(ref_p, axis=1)[:, -2:] if ref_p.shape[1] > 1 else np.tile([0.0, 1.0], (len(ref_p), 1))
    decided = (top2[:, 1] - top2[:, 0]) > atol
    agree = float(same[decided].mean()) if decided.any() else 1.0
    return ParityResult(backend, int(ref_p.shape[0]), diffs["probabilities"].max_abs, agree, atol, min_agreement,
                        diffs, decided=int(decided.sum()), top1_agreement_all=float(same.mean()) if same.size else 1.0)
