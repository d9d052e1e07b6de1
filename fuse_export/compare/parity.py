"""Parity of a backend against the eager reference: truthy when it passes, and says why when it doesn't.

All three outputs are gated. `probabilities` and `confidence` (both in [0, 1]) by an absolute bound per
element, |actual - reference| <= atol + rtol * |reference| (numpy's `isclose` rule); `logits` by top-1
agreement of their argmax, since a logit's scale says nothing about the decision (a constant shift leaves the
softmax unchanged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Per precision: (bound on |difference| of probabilities and confidence, minimum top-1 agreement with the fp32
# eager reference). Agreement counts the inputs whose eager top-1 is decided by more than atol (top-1 minus
# runner-up probability): a closer call may flip under any perturbation within the tolerance, so it cannot be
# held against the artifact (a near-chance model has few decided inputs; its check then rests on atol).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1.0),
    "fp16": (1e-2, 0.99),
    "bf16": (1e-2, 0.99),
    # Static PTQ of a trained model at 64x64, 210 test images: max |dp| 0.09-0.12, p99 0.06-0.10, 99.5% agreement
    # (benchmarks/bench_int8_cpu.py); the accuracy bound (<= 1 point) is checked by that benchmark.
    "int8": (1.5e-1, 0.95),
}
BOUNDED_OUTPUTS = ("probabilities", "confidence")  # gated by atol/rtol
RANKED_OUTPUT = "logits"  # gated by top-1 agreement
# Error histogram bins of |difference| (decades; the first bin holds exact matches).
HISTOGRAM_EDGES: tuple[float, ...] = (0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, float("inf"))


@dataclass(frozen=True)
class Tolerance:
    """What a backend must meet: the bound on probabilities and confidence, and the logits' top-1 agreement."""

    atol: float
    rtol: float = 0.0
    min_agreement: float = 1.0


def tolerance_for(precision: str = "fp32", atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The precision's default tolerance, with the user's --atol / --rtol overrides applied."""
    base_atol, agreement = TOLERANCES[precision]
    return Tolerance(base_atol if atol is None else float(atol), 0.0 if rtol is None else float(rtol), agreement)


def error_histogram(diff: np.ndarray) -> list[int]:
    """Counts of |difference| per HISTOGRAM_EDGES bin (an exact 0 lands in the first bin)."""
    counts, _ = np.histogram(np.abs(diff), bins=np.asarray(HISTOGRAM_EDGES))
    return [int(c) for c in counts]


@dataclass
class OutputDiff:
    """Per-output figures: the error statistics, the rule it is gated by, and whether it passed."""

    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float
    histogram: list[int] = field(default_factory=list)
    rule: str = ""  # "abs" (atol + rtol * |ref|) or "top1" (argmax agreement)
    excess: float = 0.0  # "abs": worst |d| - rtol * |ref|, the smallest atol that would pass
    passed: bool = True


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
    rtol: float = 0.0
    max_abs_conf: float | None = None

    def __bool__(self) -> bool:
        return self.top1_agreement >= self.min_agreement and all(d.passed for d in self.outputs.values())

    def failed_outputs(self) -> list[str]:
        bad = [d.name for d in self.outputs.values() if not d.passed]
        if self.top1_agreement < self.min_agreement and RANKED_OUTPUT not in bad:
            bad.append(RANKED_OUTPUT if RANKED_OUTPUT in self.outputs else "probabilities")
        return bad

    def explain(self) -> str:
        """One line: PASSED with the figures per output, or FAILED with the tolerance that would have passed."""
        counted = f"{self.samples} inputs"
        if 0 <= self.decided < self.samples:
            counted = (f"{self.decided} decided of {self.samples} inputs; {self.top1_agreement_all:.2%} "
                       "over all")
        bound = f"atol {self.atol:.2g}" + (f" + rtol {self.rtol:.2g}*|ref|" if self.rtol else "")
        parts = [f"max |dprob| {self.max_abs_prob:.2e}"]
        if self.max_abs_conf is not None:
            parts.append(f"max |dconf| {self.max_abs_conf:.2e}")
        figures = (f"{', '.join(parts)} ({bound}), top-1 agreement {self.top1_agreement:.2%} "
                   f"(min {self.min_agreement:.0%}) over {counted}")
        if self:
            return f"PASSED {self.backend}: {figures}"
        needed = max((d.excess for d in self.outputs.values() if d.rule == "abs"), default=self.max_abs_prob)
        worst = ", ".join(repr(n) for n in self.failed_outputs())
        return (f"FAILED {self.backend}: {figures}; would pass only with atol >= {needed:.2e} and "
                f"agreement >= {self.top1_agreement:.2%} (failing: {worst})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = bool(self)
        d["histogram_edges"] = [e if np.isfinite(e) else "inf" for e in HISTOGRAM_EDGES]
        return d


def _diff(name: str, ref: np.ndarray, got: np.ndarray, backend: str) -> tuple[OutputDiff, np.ndarray]:
    if got.shape != ref.shape:
        raise ValueError(f"{backend}: output {name!r} has shape {got.shape}, reference {ref.shape}")
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64)).ravel()
    stats = OutputDiff(name, float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0,
                       float(np.percentile(d, 99)) if d.size else 0.0, error_histogram(d))
    return stats, d


def compare_outputs(backend: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                    precision: str = "fp32", atol: float | None = None, rtol: float | None = None,
                    tolerance: Tolerance | None = None) -> ParityResult:
    """Compare every output of `actual` with `reference` (same inputs, same order) and gate all three."""
    tol = tolerance or tolerance_for(precision, atol, rtol)
    diffs: dict[str, OutputDiff] = {}
    for name, ref in reference.items():
        if name not in actual:
            raise ValueError(f"{backend}: output {name!r} is missing (the reference has it)")
        stats, d = _diff(name, ref, actual[name], backend)
        if name in BOUNDED_OUTPUTS:
            excess = d - tol.rtol * np.abs(ref.astype(np.float64)).ravel()
            stats.rule, stats.excess = "abs", float(excess.max(initial=0.0))
            stats.passed = stats.excess <= tol.atol
        diffs[name] = stats
    ref_p = reference["probabilities"]
    # Logits decide the class; without them (a reference of probabilities only) their argmax is the same.
    key = RANKED_OUTPUT if RANKED_OUTPUT in reference else "probabilities"
    same = actual[key].argmax(1) == reference[key].argmax(1)
    top2 = np.sort(ref_p, axis=1)[:, -2:] if ref_p.shape[1] > 1 else np.tile([0.0, 1.0], (len(ref_p), 1))
    decided = (top2[:, 1] - top2[:, 0]) > tol.atol
    agree = float(same[decided].mean()) if decided.any() else 1.0
    if RANKED_OUTPUT in diffs:
        diffs[RANKED_OUTPUT].rule = "top1"
        diffs[RANKED_OUTPUT].passed = agree >= tol.min_agreement
    conf = diffs.get("confidence")
    return ParityResult(backend, int(ref_p.shape[0]), diffs["probabilities"].max_abs, agree, tol.atol,
                        tol.min_agreement, diffs, decided=int(decided.sum()),
                        top1_agreement_all=float(same.mean()) if same.size else 1.0, rtol=tol.rtol,
                        max_abs_conf=conf.max_abs if conf else None)
