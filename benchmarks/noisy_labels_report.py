"""Tables, plot and JSON of the noisy-label experiment (benchmarks/noisy_labels.py), plus the latency probe."""

from __future__ import annotations

import datetime
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.report import machine_info
from fuse_export.compare.timing import measure
from fuse_export.fileio import atomic_open, atomic_path, write_json
from fuse_export.model.fused import FusedFER, ModelConfig


def latency_ms(image_size: int, threads: int, rounds: int = 5, iterations: int = 20) -> dict[str, Any]:
    """Eager batch-1 median latency of the fused model with a shared vs two separate backbones.

    Interleaved rounds, so drift of a shared machine hits both variants alike.
    """
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "batch": 1, "timed": "eager PyTorch forward, host wall clock"}
    for size in sorted({image_size, 224}):
        models = {k: FusedFER(ModelConfig(7, shared_backbone=k == "shared")).eval() for k in ("shared", "separate")}
        x = torch.randn(1, 3, size, size)
        samples: dict[str, list[float]] = {k: [] for k in models}
        with torch.inference_mode():
            for _ in range(rounds):
                for k, m in models.items():
                    samples[k].append(measure(lambda m=m: m(x), warmup=3, iterations=iterations).median_ms)
        out[str(size)] = {k: round(float(np.median(v)), 3) for k, v in samples.items()}
        out[str(size)]["ratio"] = round(out[str(size)]["separate"] / out[str(size)]["shared"], 3)
    return out


def _stats(values: list[float | None]) -> tuple[float, float, int] | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _pm(values: list[float | None], pct: bool = True) -> str:
    s = _stats(values)
    if s is None:
        return "-"
    k = 100.0 if pct else 1.0
    return f"{s[0] * k:.1f} ± {s[1] * k:.1f}" if pct else f"{s[0]:.3f} ± {s[1]:.3f}"


def _pick(rows: list[dict[str, Any]], model: str, rate: float) -> list[dict[str, Any]]:
    return [r for r in rows if r["model"] == model and r["rate"] == rate]


def _get(rows: list[dict[str, Any]], *path: str) -> list[Any]:
    out = []
    for r in rows:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        out.append(v)
    return out


def _paired(rows: list[dict[str, Any]], a: str, b: str, rate: float) -> str:
    """Mean and per-seed differences of test accuracy, a - b, over the seeds both ran."""
    acc = {(r["model"], r["seed"]): r["test_acc"] for r in rows if r["rate"] == rate}
    d = [100.0 * (acc[(a, s)] - acc[(b, s)]) for s in sorted({s for _, s in acc}) if (a, s) in acc and (b, s) in acc]
    return "-" if not d else f"{np.mean(d):+.1f} ({', '.join(f'{x:+.1f}' for x in d)})"


def summarize(rows: list[dict[str, Any]], models: tuple, ablations: tuple, rates: tuple[float, ...]) -> dict[str, Any]:
    """Mean, std and n over seeds of every reported figure, per (model, rate)."""
    out: dict[str, Any] = {}
    for v in (*models, *ablations):
        for rate in rates:
            sel = _pick(rows, v.key, rate)
            if not sel:
                continue
            entry = {"test_acc": _stats(_get(sel, "test_acc")), "train_seconds": _stats(_get(sel, "train_seconds"))}
            for h in ("dcnn", "scn", "fused"):
                entry[f"test_acc_{h}_head"] = _stats(_get(sel, "test_acc_heads", h))
            if v.head != "dcnn":
                for k in ("recall", "precision", "clean_changed"):
                    entry[f"relabel_{k}"] = _stats(_get(sel, "relabel", k))
                entry["alpha_auc"] = _stats(_get(sel, "alpha_auc"))
                entry["audit_precision_at_k"] = _stats(_get(sel, "audit", "precision_at_k"))
            out[f"{v.key}@{rate}"] = {k: (None if s is None else {"mean": s[0], "std": s[1], "n": s[2]})
                                      for k, s in entry.items()}
    return out


def markdown(cfg: Any, models: tuple, ablations: tuple, rows: list[dict[str, Any]], data_info: dict[str, Any],
             latency: dict[str, Any], command: str, seconds: float, png: str, split: str = "test") -> str:
    rates = cfg.rates
    n_seeds = len(cfg.seeds)
    lines = [
        f"# Noisy labels: DCNN alone vs SCN alone vs fused ({datetime.date.today().isoformat()})", "",
        f"Command: `{command}` ({seconds / 60:.1f} min wall clock, {len(rows)} training runs)", "",
        f"Synthetic faces, {cfg.samples_per_class} per class, split {cfg.fractions} train/val/test "
        f"({data_info['train']} training samples, 10% of them held out for the stacker); input "
        f"{cfg.image_size}x{cfg.image_size}; {cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr}, "
        f"ExponentialLR gamma {cfg.gamma}; SCN beta 0.7, delta1 {cfg.margin1}, delta2 {cfg.margin2}, relabel "
        f"from epoch {cfg.relabel_epoch} (low-importance group). Symmetric noise flips exactly that share of the "
        f"training labels to another class; val and test are clean. Figures: mean ± std over {n_seeds} seeds "
        f"(seed = noise draw and training seed); accuracy is on the clean {split} split at the final epoch "
        "(no selection on val or test).", "",
        f"## Clean {'test' if split == 'test' else 'VALIDATION'} accuracy (%)", "",
        "| Noise | " + " | ".join(v.title for v in models) + " | fused run: DCNN head | fused run: SCN head |",
        "|---|" + "---:|" * (len(models) + 2),
    ]
    for rate in rates:
        cells = [_pm(_get(_pick(rows, v.key, rate), "test_acc")) for v in models]
        fused = _pick(rows, "fused", rate)
        cells += [_pm(_get(fused, "test_acc_heads", "dcnn")), _pm(_get(fused, "test_acc_heads", "scn"))]
        lines.append(f"| {rate:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences in points (same noise draw and seed), per seed:", "",
              "| Noise | fused - DCNN alone | SCN alone - DCNN alone | fused - SCN alone |", "|---|---|---|---|"]
    for rate in rates:
        cells = [_paired(rows, a, b, rate) for a, b in (("fused", "dcnn"), ("scn", "dcnn"), ("fused", "scn"))]
        lines.append(f"| {rate:.0%} | " + " | ".join(cells) + " |")
    lines += ["", f"![accuracy vs noise]({png})", "",
              "## Relabeling and alpha (training samples stage 1 saw)", "",
              "Restored: share of the flipped labels that relabeling set back to the true class (recall). "
              "Precision: share of changed labels whose new label is the true class. Clean changed: share of "
              "correct labels that relabeling changed (damage). Alpha AUC: ROC AUC of low alpha as a detector of "
              "flipped samples (0.5 = chance). Audit P@K: precision of `fuse-export audit-labels` over the whole "
              "training split at K = number of flips (chance = the noise rate).", "",
              "| Noise | Model | Restored % | Precision % | Clean changed % | Alpha AUC | Audit P@K % |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for rate in rates:
        for v in models:
            if v.head == "dcnn":
                continue
            sel = _pick(rows, v.key, rate)
            lines.append(f"| {rate:.0%} | {v.title} | {_pm(_get(sel, 'relabel', 'recall'))} | "
                         f"{_pm(_get(sel, 'relabel', 'precision'))} | {_pm(_get(sel, 'relabel', 'clean_changed'))} | "
                         f"{_pm(_get(sel, 'alpha_auc'), pct=False)} | {_pm(_get(sel, 'audit', 'precision_at_k'))} |")
    lines += ["", "### How the audit score was chosen", "",
              "Precision at K of other rankings over the same training split: the SCN margin P_max - P_given alone, "
              "alpha alone (low first), and the mean of their percentile ranks; and SCN's relabel rule applied "
              "to the whole split (margin > delta2, alpha in the lowest 30%): how many it flags, and the share of "
              "them that are flips.", "",
              "| Noise | Model | Audit score (1 - P(given)) | SCN margin | Alpha | Rank mean | Rule flags "
              "| Rule precision % |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for rate in rates:
        if rate == 0:
            continue
        for v in models:
            if v.head == "dcnn":
                continue
            sel = _pick(rows, v.key, rate)
            flags = _stats(_get(sel, "audit", "scn_rule_flagged"))
            n_flags = "-" if flags is None else f"{flags[0]:.0f}"
            lines.append(f"| {rate:.0%} | {v.title} | {_pm(_get(sel, 'audit', 'precision_at_k'))} | "
                         f"{_pm(_get(sel, 'audit', 'scn_margin_only'))} | {_pm(_get(sel, 'audit', 'alpha_only'))} | "
                         f"{_pm(_get(sel, 'audit', 'rank_mean_margin_alpha'))} | "
                         f"{n_flags} | {_pm(_get(sel, 'audit', 'scn_rule_precision'))} |")
    if any(m.key == "fused" for m in models) and any(_pick(rows, a.key, max(rates)) for a in ablations):
        top = max(rates)
        lines += ["", f"## Ablations of the fused network at {top:.0%} noise", "",
                  "| Variant | Test acc % | fused - variant, points | Restored % | Precision % | Clean changed % "
                  "| Alpha AUC | Train s/run |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for v in (next(m for m in models if m.key == "fused"), *ablations):
            sel = _pick(rows, v.key, top)
            s = _stats(_get(sel, "train_seconds"))
            paired = "" if v.key == "fused" else _paired(rows, "fused", v.key, top)
            lines.append(f"| {v.title} | {_pm(_get(sel, 'test_acc'))} | {paired} | "
                         f"{_pm(_get(sel, 'relabel', 'recall'))} | "
                         f"{_pm(_get(sel, 'relabel', 'precision'))} | {_pm(_get(sel, 'relabel', 'clean_changed'))} | "
                         f"{_pm(_get(sel, 'alpha_auc'), pct=False)} | {'-' if s is None else f'{s[0]:.0f}'} |")
        if latency:
            n = latency["threads"]
            lines += ["", f"Inference cost of the backbone choice (eager PyTorch, batch 1, {n} thread"
                          f"{'' if n == 1 else 's'}, median of interleaved rounds):", "",
                      "| Input | Shared backbone ms | Separate backbones ms | Ratio |", "|---|---:|---:|---:|"]
            for size, d in latency.items():
                if isinstance(d, dict):
                    lines.append(f"| {size}x{size} | {d['shared']:.2f} | {d['separate']:.2f} | {d['ratio']:.2f}x |")
    info = machine_info()
    lines += ["", f"Machine: {info.get('cpu', '?')}, {info.get('logical_cpus')} logical CPUs, torch "
                  f"{torch.__version__}, Python {platform.python_version()}."]
    return "\n".join(lines) + "\n"


def plot(path: Path, cfg: Any, models: tuple, rows: list[dict[str, Any]], split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = [100 * r for r in cfg.rates]
    for v in models:
        stats = [_stats(_get(_pick(rows, v.key, r), "test_acc")) for r in cfg.rates]
        mean = [100 * s[0] if s else np.nan for s in stats]
        std = [100 * s[1] if s else np.nan for s in stats]
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=v.title)
    ax.axhline(100.0 / 7, color="gray", linestyle=":", label="chance (7 classes)")
    ax.set_xlabel("training labels flipped (%)")
    ax.set_ylabel(f"clean {split} accuracy (%)")
    ax.set_title(f"Synthetic faces, mean ± std over {len(cfg.seeds)} seeds")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out: Path, name: str, cfg: Any, models: tuple, ablations: tuple, rows: list[dict[str, Any]],
                 data_info: dict[str, Any], latency: dict[str, Any], command: str, seconds: float,
                 split: str = "test") -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(out / f"{name}.png", cfg, models, rows, split)
    md = markdown(cfg, models, ablations, rows, data_info, latency, command, seconds, f"{name}.png", split)
    with atomic_open(out / f"{name}.md") as fh:
        fh.write(md)
    write_json(out / f"{name}.json", {
        "command": command, "accuracy_split": split, "config": asdict(cfg), "data": data_info,
        "wall_seconds": round(seconds, 1),
        "machine": machine_info(), "latency_ms": latency,
        "summary": summarize(rows, models, ablations, cfg.rates), "runs": rows})
    print(md)
