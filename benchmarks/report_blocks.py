"""Generated blocks in hand-written pages: every measured figure the README and the docs quote comes from here.

A block is the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md, docs/*.md or
benchmarks/RESULTS.md. Each block name has one source, and the same block is written, word for word, into
every page that carries its markers:

* a study's own report (`compare-stacker`, `compare-geometry`: the study writes `results/NAME.md` and publishes
  the same text; `trunk-noise`: rendered from `results/trunk_noise.json` by `trunk_noise_report.readme_block`);
* a summary bullet rendered here from a study's JSON (`geometry-summary`, `stacker-summary`);
* a bullet rendered here from `results/quoted.json`: figures of RESULTS.md runs whose JSON was not kept, each
  record naming its RESULTS.md section, run, date and machine, with `evidence` strings that must stand in that
  section word for word (so a record cannot drift from RESULTS.md either).

    python benchmarks/report_blocks.py            # rewrite every block in every page from its source
    python benchmarks/report_blocks.py --check    # exit 1 if any block differs from what it would write
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import re
import sys
import textwrap
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
QUOTED = RESULTS_DIR / "quoted.json"
BLOCK_RE = re.compile(r"<!-- ([a-z0-9][a-z0-9-]*):start -->\n(.*?)\n?<!-- \1:end -->", re.S)


def pages() -> list[Path]:
    """Every page that may carry blocks: RESULTS.md, the README and the documentation."""
    return [RESULTS_MD, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# Kept for the studies that import it (compare_stacker.py, compare_geometry.py).
PAGES = tuple(pages())


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _write(path: Path, text: str) -> None:
    try:
        from fuse_export.fileio import atomic_open
    except ImportError:  # run outside the package's environment: a plain write
        path.write_text(text, encoding="utf-8")
        return
    with atomic_open(path, "w") as fh:
        fh.write(text)


def replace_block(path: Path, name: str, text: str) -> bool:
    """Replace the block `name` in `path` with `text` (atomically). False where the page has no such block."""
    if not path.exists():
        return False
    old = path.read_text(encoding="utf-8")
    start, end = markers(name)
    if start not in old or end not in old:
        return False
    head, rest = old.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{text}\n{end}{tail}"
    if new != old:
        _write(path, new)
    return True


def publish(name: str, text: str) -> list[Path]:
    """Write the block into every page that has its markers; returns those pages. After a study, the summary
    bullets that quote its JSON are rewritten too, so a rerun leaves no page behind."""
    written = [p for p in pages() if replace_block(p, name, text)]
    if name in STUDY_BLOCKS:
        for other in SUMMARY_BLOCKS:
            with contextlib.suppress(FileNotFoundError, KeyError):
                write_block(other)
    return written


# ------------------------------------------------------------------------------------------------ rendering


def machine_name(machine: Any) -> str:
    """'2-core AMD EPYC' from a study's machine record (machine_info()'s dict, or its older one-line string)."""
    if isinstance(machine, dict):
        cpu = str(machine.get("cpu") or machine.get("cpu_features", {}).get("model") or "unknown CPU")
        cores = machine.get("logical_cpus")
    else:
        text = str(machine)
        cpu = text.split(",")[0].strip() or "unknown CPU"
        found = re.search(r"(\d+) (?:cores|logical CPUs)", text)
        cores = int(found.group(1)) if found else None
    return f"{cores}-core {cpu}" if cores else cpu


def bullet(text: str, width: int = 112) -> str:
    """One Markdown bullet, wrapped at `width` (never inside a code span); unwrapped where a wrapped line would
    start like a list item, a heading or a quote."""
    text = " ".join(text.split())
    keep = "\x00"  # spaces inside `code` spans: not break points
    protected = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", keep), text)
    lines = [ln.replace(keep, " ") for ln in textwrap.wrap(
        protected, width=width, initial_indent="* ", subsequent_indent="  ", break_long_words=False,
        break_on_hyphens=False)]
    if any(re.match(r"\s*([-+*>#]|\d+[.)])(\s|$)", ln) for ln in lines[1:]):
        return "* " + text
    return "\n".join(lines)


def fix(x: float, digits: int = 2) -> str:
    """`x` to `digits` decimals, halves rounded up as a reader would (0.285 -> 0.29; f-strings give 0.28)."""
    return str(Decimal(str(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def quoted(name: str) -> dict[str, Any]:
    return json.loads(QUOTED.read_text(encoding="utf-8"))[name]


def where(rec: dict[str, Any]) -> str:
    """'2-core AMD EPYC, 2026-11-29' (+ the run) for a quoted record."""
    run = f", {rec['run']}" if rec.get("run") else ""
    return f"{rec['machine']}, {rec['date']}{run}"


def readme_times() -> dict[str, Any]:
    """`benchmarks/time_readme.py`'s record: the README's two commands timed on a clean clone."""
    doc = json.loads((RESULTS_DIR / "readme_times.json").read_text(encoding="utf-8"))
    doc["parts"] = {r["part"]: r for r in doc["rows"]}
    doc["where"] = (f"{'' if doc['loaded'] else 'idle '}{doc['cpus']}-core {doc['cpu']}, {doc['date'][:10]}, "
                    f"commit {doc['commit']}")
    return doc


def minutes(seconds: float) -> str:
    """'6 min 11 s' (or '83 s' under two minutes)."""
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60} s"


def render_setup_times() -> str:
    suite, load, t = quoted("test-suite"), quoted("load"), readme_times()
    install, run = t["parts"]["command 1: install"]["seconds"], t["parts"]["command 1: quickstart"]["seconds"]
    return bullet(
        f"Times, measured on a clean clone (`python benchmarks/time_readme.py`; {t['where']}): command 1 "
        f"{minutes(install + run)} (install {minutes(install)}, quickstart {minutes(run)}); command 2's install "
        f"{minutes(t['parts']['command 2: install']['seconds'])} (with a local package cache) and the full suite "
        f"{suite['seconds']} s (about {round(suite['seconds'] / 60)} minutes), {suite['passed']} passed and "
        f"{suite['skipped']} skipped ({where(suite)}). They hold on idle cores only: PyTorch's OpenMP threads spin "
        f"against any other job on the same cores, so training that ran at {load['alone_img_s']} img/s alone ran "
        f"at {load['loaded_img_s']} img/s beside another job ({where(load)}), and the quickstart took "
        f"{load['quickstart_loaded']} there: on a busy machine expect it to take up to 10x longer.")


def render_quickstart() -> str:
    t = readme_times()
    q = t["parts"]["command 1: quickstart"]
    acc = dict(re.findall(r"(fused|DCNN head|SCN head) ([\d.]+%)", q["accuracy_line"]))
    names = {"torchscript": "TorchScript", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
    backends = " and ".join(names.get(b, b) for b in q["backends"])
    dprob = f"{q['max_dprob']:.1e}".replace("e-0", "e-")
    return bullet(
        f"Quickstart (`fuse-export quickstart`, defaults; {t['where']}; {minutes(q['seconds'])}): fused "
        f"{acc['fused']} test accuracy on the generated faces (DCNN head {acc['DCNN head']}, SCN head "
        f"{acc['SCN head']}); {backends} within {dprob} of eager, {100 * q['min_agreement']:.0f}% "
        "top-1 agreement (OpenVINO too, where the `openvino` extra is installed).")


def render_cpu_speed() -> str:
    r = quoted("cpu-speed")
    return bullet(
        f"CPU speed (224x224, batch 1, 2 threads; {where(r)}; `{r['command']}`): ONNX Runtime at "
        f"{fix(r['ort_vs_eager'])}x eager latency; the fused graph at {fix(r['fused_vs_bare'])}x a bare ResNet-18 "
        "exported the same way.")


def render_int8_cpu() -> str:
    r = quoted("int8-cpu")
    lo, hi = min(r["int8_vs_fp32"]), max(r["int8_vs_fp32"])
    return bullet(
        f"int8 ONNX Runtime (u8s8, 224x224, batch 1, 2 threads; {where(r)}; `{r['command']}`): {fix(lo)}-{fix(hi)}x "
        f"the latency of fp32 ONNX Runtime, accuracy unchanged ({r['accuracy']} fp32 and int8 on "
        f"{r['test_images']} generated test faces at 64 px).")


def render_cold_start() -> str:
    r = quoted("cold-start")
    return bullet(
        f"Running without PyTorch (slim install): `predict` on one image cold-starts in {fix(r['wall_s'])} s "
        f"(wall, median of {r['repeats']}) with a {r['peak_mb']} MB peak RSS ({where(r)}); before the slim runtime, "
        f"{fix(r['before_s'])} s and {r['before_mb']} MB (same machine, {r['before_run']}, wall minus run-queue "
        f"wait; {fix(r['after_s'])} s and {r['after_mb']} MB after).")


def render_cpu_runtimes() -> str:
    """From `bench_cpu_runtimes.py`'s JSON of the idle run on a CPU with AMX (benchmarks/RESULTS.md, issue 27)."""
    doc = json.loads((RESULTS_DIR / "bench_cpu_runtimes_amx.json").read_text(encoding="utf-8"))
    b1, quality, bare = doc["latency"]["batch_1"], doc["quality"], doc["fused_vs_bare"]
    names = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO fp32", "onnxruntime-int8": "ONNX Runtime int8",
             "openvino-bf16": "OpenVINO bf16", "openvino-int8": "OpenVINO int8"}
    ratios = ", ".join(f"{name} {fix(b1[k]['ratio'], 3)}"
                       + ("" if quality[k]["parity"]["passed"] else " (outside its parity bound)")
                       for k, name in names.items())
    load = doc["load_average"]
    return bullet(
        f"CPU runtimes (224 px, batch 1, 2 threads, x eager fp32 in the same interleaved rounds; "
        f"{machine_name(doc['machine'])} with AMX, {doc['date'][:10]}, load {fix(load['start'][0])}; "
        f"`benchmarks/bench_cpu_runtimes.py`): {ratios}. Fused / bare ResNet-18 through OpenVINO: "
        f"{fix(bare['fused_over_bare_fp32'], 3)} fp32, {fix(bare['fused_over_bare_bf16'], 3)} bf16.")


def render_hostile_inputs() -> str:
    r = quoted("hostile-inputs")
    return bullet(
        f"Hostile inputs ({where(r)}; {r['command']}): {r['clean']} of {r['cases']} cases end in one clean line "
        f"({r['tracebacks']} tracebacks, {r['silent']} silent acceptances); {r['kill9_whole']} of {r['kill9_runs']} "
        "kill -9 runs leave a whole folder.")


def render_geometry_summary() -> str:
    doc = json.loads((RESULTS_DIR / "compare_geometry.json").read_text(encoding="utf-8"))
    s = doc["summary"]
    cur, best = s["current"]["test_fused"], s[doc["chosen"]]["test_fused"]
    every = all(a < b for a, b in zip(cur["runs"], best["runs"]))
    return bullet(
        f"Crop geometry ({doc['config']['image_size']} px, {len(doc['config']['seeds'])} seeds; "
        f"{machine_name(doc['machine'])}, {doc['date']}; `{doc['command']}`): training on squashed frames and "
        f"deploying center crops (the first release) cost {100 * (best['mean'] - cur['mean']):.1f} fused test "
        f"points ({100 * cur['mean']:.1f}% vs {100 * best['mean']:.1f}%{', lower on every seed' if every else ''}); "
        f"training and deployment now share one geometry, {doc['chosen_geometry']} by default. Table: "
        "`benchmarks/results/compare_geometry.md`.")


def render_stacker_summary() -> str:
    doc = json.loads((RESULTS_DIR / "compare_stacker.json").read_text(encoding="utf-8"))
    s = doc["summary"]
    gap = max(abs(g) for e in s.values() for g in e["gap_per_seed"])
    means = [e["mean_vs_better_mean_head"] for e in s.values()]
    mean = ("equal to it on the mean" if all(abs(m) < 0.05 for m in means) else
            "on the mean " + ", ".join(f"{m:+.1f}" for m in means) + " points")
    rates = " and ".join(f"{float(r):.0%}" for r in s)
    seeds = len(next(iter(s.values()))["seeds"])
    return bullet(
        f"The fused output against its own heads ({doc['config']['image_size']} px, {seeds} seeds; "
        f"{machine_name(doc['machine'])}, {doc['date']}; `{doc['command']}`): within {gap:.1f} points of the "
        f"better head on every seed at {rates} label noise, {mean}. Table: `benchmarks/results/compare_stacker.md`.")


def _study_report(name: str) -> Callable[[], str]:
    """A study's block is its own report (results/NAME.md) without the report's title line."""
    def render() -> str:
        text = (RESULTS_DIR / f"{name}.md").read_text(encoding="utf-8")
        return "\n".join(text.splitlines()[2:])
    return render


def render_trunk_noise() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from trunk_noise_report import README_END, README_START, readme_block

    doc = json.loads((RESULTS_DIR / "trunk_noise.json").read_text(encoding="utf-8"))
    block = readme_block(doc["accuracy"], doc["relabel"], doc["audit"], doc["info"])
    return block.removeprefix(README_START + "\n").removesuffix("\n" + README_END)


def render_trunk_noise_report() -> str:
    """RESULTS.md's copy of the study's report: its plot linked from benchmarks/ (the report sits in results/)."""
    return _study_report("trunk_noise")().replace("](trunk_noise.png)", "](results/trunk_noise.png)")


def render_serve_summary() -> str:
    """docs/deploy.md's bullet on `serve`'s measured defaults, from bench_serve.py's JSON lines."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_serve_report import summary

    lines = (RESULTS_DIR / "bench_serve.jsonl").read_text(encoding="utf-8").splitlines()
    return summary([json.loads(ln) for ln in lines if ln.strip()])


def render_bench_web() -> str:
    """Issue 29's browser latency table (`bench_web_report.py` writes results/bench_web.md); until the study has
    run, a line saying how to run it."""
    if not (RESULTS_DIR / "bench_web.md").exists():
        return ("Not measured yet: `python benchmarks/bench_web.py EXPORT_64 EXPORT_224 --int8 INT8_64 --int8 "
                "INT8_224`, then `python benchmarks/bench_web_report.py`.")
    return _study_report("bench_web")()


STUDY_BLOCKS: dict[str, Callable[[], str]] = {
    "compare-stacker": _study_report("compare_stacker"),
    "compare-geometry": _study_report("compare_geometry"),
    "trunk-noise": render_trunk_noise,
    "trunk-noise-report": render_trunk_noise_report,
    "bench-serve": _study_report("bench_serve"),
    "bench-web": render_bench_web,
}
SUMMARY_BLOCKS: dict[str, Callable[[], str]] = {
    "geometry-summary": render_geometry_summary,
    "stacker-summary": render_stacker_summary,
    "serve-summary": render_serve_summary,
}
QUOTED_BLOCKS: dict[str, Callable[[], str]] = {
    "setup-times": render_setup_times,
    "quickstart": render_quickstart,
    "cpu-speed": render_cpu_speed,
    "int8-cpu": render_int8_cpu,
    "cold-start": render_cold_start,
    "cpu-runtimes": render_cpu_runtimes,
    "hostile-inputs": render_hostile_inputs,
}
BLOCKS: dict[str, Callable[[], str]] = {**STUDY_BLOCKS, **SUMMARY_BLOCKS, **QUOTED_BLOCKS}


def write_block(name: str) -> list[Path]:
    text = BLOCKS[name]()
    return [p for p in pages() if replace_block(p, name, text)]


# ------------------------------------------------------------------------------------------------ checking


def found_blocks() -> list[tuple[Path, str, str]]:
    """(page, name, text) of every marked block in every page."""
    out = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        out += [(page, m.group(1), m.group(2)) for m in BLOCK_RE.finditer(text)]
        for name in set(re.findall(r"<!-- ([a-z0-9][a-z0-9-]*):start -->", text)):
            if text.count(markers(name)[0]) != 1 or text.count(markers(name)[1]) != 1:
                out.append((page, name, "\0unbalanced"))
    return out


def results_sections() -> dict[str, str]:
    """RESULTS.md's `## ` sections by title."""
    text = RESULTS_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def check_evidence() -> list[str]:
    """Every quoted record's evidence stands word for word in the RESULTS.md section it names."""
    problems = []
    sections = results_sections()
    for name, rec in json.loads(QUOTED.read_text(encoding="utf-8")).items():
        if name.startswith("_"):
            continue
        section = sections.get(rec.get("section", ""))
        if section is None:
            problems.append(f"quoted.json {name}: RESULTS.md has no section '## {rec.get('section')}'")
            continue
        for needle in rec.get("evidence", []):
            if needle not in section:
                problems.append(f"quoted.json {name}: '{needle}' is not in RESULTS.md '## {rec['section']}'")
    return problems


def check() -> list[str]:
    """Every difference between the pages and what this script would write, as readable lines."""
    problems = check_evidence()
    expected: dict[str, str] = {}
    for page, name, text in found_blocks():
        rel = page.relative_to(ROOT)
        if text == "\0unbalanced":
            problems.append(f"{rel}: block {name!r} has not exactly one start and one end marker")
            continue
        if name not in BLOCKS:
            problems.append(f"{rel}: block {name!r} has no source in benchmarks/report_blocks.py")
            continue
        if name not in expected:
            expected[name] = BLOCKS[name]()
        if text != expected[name]:
            diff = "\n".join(difflib.unified_diff(expected[name].splitlines(), text.splitlines(), "generated",
                                                  str(rel), lineterm="", n=0))
            problems.append(f"{rel}: block {name!r} differs from its source "
                            f"(python benchmarks/report_blocks.py rewrites it)\n{diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any block differs")
    ap.add_argument("names", nargs="*", help="blocks to rewrite (default: every block)")
    args = ap.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(found_blocks())} blocks checked: " + (f"{len(problems)} problems" if problems else "all current"))
        return 1 if problems else 0
    unknown = [n for n in args.names if n not in BLOCKS]
    if unknown:
        ap.error(f"unknown block(s) {', '.join(unknown)}; known: {', '.join(BLOCKS)}")
    for name in args.names or list(BLOCKS):
        written = write_block(name)
        print(f"{name}: {', '.join(str(p.relative_to(ROOT)) for p in written) or 'no page has its markers'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
