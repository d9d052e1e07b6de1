"""OUT/gpu_check.md and the summary, rebuilt from the rows of OUT/results.jsonl (after every job, so the
report on disk is always complete up to the last thing measured)."""

from __future__ import annotations

from typing import Any

TARGET_B1_MS, TARGET_B256_IPS = 0.30, 80_000


def _fused_ok(r: dict[str, Any]) -> bool:
    return r.get("kind") == "timing" and r["status"] == "ok" and not r.get("baseline") and bool(
        r.get("parity") and r["parity"]["passed"])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fused = [r for r in rows if _fused_ok(r)]
    b1 = min((r for r in fused if r["batch"] == 1), key=lambda r: r["latency"]["median_ms"], default=None)
    big = max((r for r in fused if r["batch"] == 256), key=lambda r: r["images_per_s"], default=None)
    timing = [r for r in rows if r.get("kind") == "timing"]
    return {
        "best_batch1": b1 and {"backend": b1["backend"], "median_ms": b1["latency"]["median_ms"],
                               "target_ms": TARGET_B1_MS, "met": b1["latency"]["median_ms"] <= TARGET_B1_MS},
        "best_batch256": big and {"backend": big["backend"], "images_per_s": big["images_per_s"],
                                  "target_images_per_s": TARGET_B256_IPS,
                                  "met": big["images_per_s"] >= TARGET_B256_IPS},
        "parity_failures": sorted({r["backend"] for r in timing if r.get("parity") and not r["parity"]["passed"]}),
        "failed": [f"{r.get('backend') or r['kind']}" + (f" batch {r['batch']}" if r.get("batch") else "")
                   for r in rows if r.get("status") == "failed"],
        "skipped": {r.get("backend") or r["kind"]: r.get("reason", "") for r in rows if r.get("status") == "skipped"},
    }


def _numerics(n: dict[str, Any] | None) -> str:
    if not n:
        return "-"
    on = {True: "on", False: "off"}
    parts = [n.get("precision", "?"), n.get("mode", "?")]
    if "layout" in n:
        parts.append(str(n["layout"]))
    if "tf32_conv" in n:
        parts.append(f"TF32 conv {on.get(n['tf32_conv'], n['tf32_conv'])}/matmul "
                     f"{on.get(n.get('tf32_matmul'), n.get('tf32_matmul'))}")
    if "cudnn_autotune" in n:
        parts.append(f"autotune {on.get(n['cudnn_autotune'], n['cudnn_autotune'])}")
    if n.get("build_s") is not None:
        parts.append(f"engine built in {n['build_s']} s")
    if n.get("NVIDIA_TF32_OVERRIDE") is not None:
        parts.append(f"NVIDIA_TF32_OVERRIDE={n['NVIDIA_TF32_OVERRIDE']}")
    if n.get("batchnorm_folded"):
        parts.append(f"BN folded{'' if n['batchnorm_folded'] is True else ' ' + str(n['batchnorm_folded'])}")
    return ", ".join(parts)


def _parity_cells(p: dict[str, Any] | None) -> str:
    if not p:
        return "- | - | - | baseline (another model)"
    decided = p["decided"] if p.get("decided", -1) >= 0 else p["samples"]
    return (f"{p['max_abs_prob']:.1e} | {p['top1_agreement']:.2%} ({decided}/{p['samples']}) | "
            f"{p.get('top1_agreement_all', p['top1_agreement']):.2%} | {'pass' if p['passed'] else 'FAIL'}")


def _partial(state: dict[str, Any] | None) -> str:
    """What a failed job had measured before it ended (from its state file)."""
    if not state:
        return ""
    bits = [f"loaded in {state['load_s']} s"] if "load_s" in state else []
    bits += [f"first call at batch {b} {s} s" for b, s in state.get("first_call_s", {}).items()]
    bits += [f"parity at batch {b} {'pass' if p['passed'] else 'FAIL'} (max abs dprob {p['max_abs_prob']:.1e})"
             for b, p in state.get("parity", {}).items()]
    return f"; measured before that: {', '.join(bits)}" if bits else ""


def markdown(rows: list[dict[str, Any]], final: bool = False) -> str:
    env = next((r for r in rows if r.get("kind") == "environment"), {})
    s = summarize(rows)
    gpu = ", ".join(f"{d['name']} (cc {d['compute_capability']}, {d['memory_gib']} GiB)"
                    for d in env.get("environment", {}).get("torch", {}).get("devices", [])) or "none"
    e = env.get("environment", {})
    out = [f"## GPU check {env.get('date', '?')}" + ("" if final else " (IN PROGRESS or cut short)"), "",
           f"- Mode: {'DRY RUN (no CUDA: CPU stand-ins, host timing)' if env.get('dry_run') else 'GPU'}; "
           f"command: `{env.get('command', '?')}`",
           f"- GPU: {gpu}; NVIDIA driver {e.get('nvidia_driver') or 'n/a'}; CPU: {env.get('cpu', '?')}",
           f"- {'; '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}; CUDA (torch build) "
           f"{e.get('torch', {}).get('cuda_build')}, cuDNN {e.get('torch', {}).get('cudnn')}",
           f"- TensorRT: {e.get('tensorrt', {}).get('version') or e.get('tensorrt', {}).get('reason')}",
           f"- Budget: {env.get('budget_s')} s (`--budget-s`), each backend in its own subprocess with a time limit; "
           f"work folder {env.get('work')} (not copied to OUT)",
           f"- Timing: {env.get('timing', '?')}; {env.get('repeats')} interleaved repeats per row, "
           f">= {env.get('min_calls')} timed calls per row; median = median of the repeats' medians"]
    prep = next((r for r in rows if r.get("kind") == "prepare"), None)
    if prep and prep["status"] == "ok":
        t, d, pi = prep["train"], prep["decided"], prep["parity_inputs"]
        acc = ", ".join(f"{k} {v:.1%}" for k, v in t["test_accuracy"].items())
        out += [f"- Model: fused DCNN+SCN trained here for the check: {t['epochs']} epoch(s) on "
                f"{sum(t['faces'].values())} generated faces at {t['image_size']}x{t['image_size']} on {t['device']} "
                f"(seed {t['seed']}, {t['seconds']} s); test accuracy {acc}",
                f"- Parity inputs: {pi['count']} ({pi['distinct']} distinct) {pi['source']}; reference "
                f"{pi['reference']}; decided (top-2 gap > fp16 bound {d['bound']:g}): {d['count']}/{d['of']} "
                f"({d['fraction']:.1%}; >= 90% required: {'met' if d['met'] else 'NOT met'}), median gap "
                f"{d['median_gap']:.3f}",
                "- Exports: " + ("; ".join(f"{x['step']} {x['status']}" + (f" ({x['seconds']} s)" if 'seconds' in x
                                  else f" ({x.get('reason')})") for x in prep["exports"]) or "none needed")]
    elif prep:
        out.append(f"- Model: FAILED to prepare ({prep.get('reason')})")
    tests = next((r for r in rows if r.get("kind") == "tests"), None)
    if tests:
        out.append(f"- Tests (`pytest -m \"{tests.get('marker')}\"`): {tests['status']} {tests.get('summary', '')} "
                   f"{tests.get('reason', '')}".rstrip())
    out += ["", "| Backend | Batch | median ms | p90 ms | p99 ms | calls | images/s | load s | first call s | numerics "
            "| max abs dprob | top-1 agree (decided) | top-1 agree (all) | parity |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r.get("kind") != "timing" or r["status"] != "ok":
            continue
        lat = r["latency"]
        out.append(f"| {r['backend']} | {r['batch']} | {lat['median_ms']:.3f} | {lat['p90_ms']:.3f} | "
                   f"{lat['p99_ms']:.3f} | {lat['repeats']}x{lat['calls'] // lat['repeats']} | "
                   f"{r['images_per_s']:,.0f} | {r.get('load_s', '-')} | {r.get('first_call_s', '-')} | "
                   f"{_numerics(r.get('numerics'))} | {_parity_cells(r.get('parity'))} |")
    tt = next((r for r in rows if r.get("kind") == "train-throughput"), None)
    if tt:
        out += ["", "Training throughput (benchmarks/gpu_train_throughput.py, its own subprocess):"]
        if tt["status"] == "ok":
            res, st = tt["result"], tt["result"]["settings"]
            out += [f"- fused {res['fused_images_per_s']:,.0f} img/s vs plain ResNet-18 "
                    f"{res['plain_resnet18_images_per_s']:,.0f} img/s: ratio {res['ratio']:.3f} (target >= "
                    f"{res['target_ratio']}: {'met' if res['meets_target'] else 'NOT met'}); data loader alone "
                    f"{res['loader']['images_per_s']:,.0f} img/s",
                    f"- {st['image_size']}x{st['image_size']}, batch {st['batch']}, amp {st['amp']}, channels_last "
                    f"{st['channels_last']}, {st['rounds']} interleaved rounds x {st['steps']} steps on {st['device']}"]
        else:
            out.append(f"- {tt['status']}: {tt.get('reason')}")
    out += ["", "Targets (best fused backend with parity):"]
    targets = (("best_batch1", "batch-1 latency <= 0.30 ms"), ("best_batch256", "batch-256 >= 80,000 img/s"))
    for key, label in () if env.get("dry_run") else targets:
        v = s[key]
        figure = "" if not v else (f"{v['median_ms']:.3f} ms" if "median_ms" in v
                                   else f"{v['images_per_s']:,.0f} img/s")
        out.append(f"- {label}: " + (f"{v['backend']} {figure} -> {'met' if v['met'] else 'NOT met'}" if v
                                     else "no fused backend with parity ran at this batch size"))
    if env.get("dry_run"):
        out.append("- not judged in a dry run (CPU stand-ins; the targets are the GPU's)")
    if s["skipped"]:
        out += ["", "Not run (with the reason):"] + [f"- {k}: {why}" for k, why in s["skipped"].items()]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed or s["parity_failures"]:
        out += ["", "FAILED:"] + [f"- {r.get('backend') or r['kind']}" + (f" batch {r['batch']}" if r.get('batch')
                                                                            else "") + f": {r.get('reason')}"
                                  + _partial(r.get("partial")) for r in failed]
        if s["parity_failures"]:
            out.append(f"- parity failures: {', '.join(s['parity_failures'])}")
    end = next((r for r in rows if r.get("kind") == "end"), None)
    if end:
        out += ["", f"Wall time {end['wall_s']} s of the {env.get('budget_s')} s budget; exit code {end['exit_code']}."]
    return "\n".join(out) + "\n"
