"""The documentation builds without broken links or missing pages, has no empty sections, quotes its figures
from one place, and the README stays a front door."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages docs/hooks.py generates at build time (not on disk).
GENERATED = {"cli.md", "results.md"}
FENCE_LINE = re.compile(r"^\s*(`{3,}|~{3,})")


def test_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    # 12 KB: the two commands with their measured times, and every result bullet naming its machine and date.
    assert len(text.encode()) <= 12 * 1024, "README.md grew past 12 KB: move reference material into docs/"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    cmd = [str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    # The CLI reference is generated from the Typer app: every command is in it.
    for command in ("train", "export", "bench", "predict", "triton-repo", "doctor"):
        assert f"<code>{command}</code>" in cli, f"docs/cli.md misses the {command!r} command"


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks; a block stands as its opening fence line (it is content)."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE_LINE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append((number, m.group(1)))
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def empty_headings(text: str) -> list[str]:
    """Headings followed directly (blank lines and HTML comments aside) by a heading of the same or a higher
    level: a section with nothing in it."""
    problems, last = [], None
    for number, line in prose_lines(text):
        m = re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if m:
            if last and len(m.group(1)) <= len(last[1]):
                problems.append(f"line {last[0]} '{last[1]} {last[2]}' is empty (line {number} '{line}' follows)")
            last = (number, m.group(1), m.group(2))
        elif line.strip() and not re.fullmatch(r"\s*<!--.*-->\s*", line):
            last = None
    return problems


def test_empty_headings_are_found() -> None:
    text = "# T\n\n## A\n\n## B\n\ntext\n\n### C\n<!-- x -->\n## D\n\n```\n## not a heading\n```\n## E\n\nx\n"
    assert [p.split("'")[1] for p in empty_headings(text)] == ["## A", "### C"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_empty_headings(page: Path) -> None:
    problems = empty_headings(page.read_text(encoding="utf-8"))
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading (GitHub's agrees on plain headings)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"[`*]", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for _, line in prose_lines(page.read_text(encoding="utf-8"))
            if (m := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line))}


def relative_links(page: Path) -> list[tuple[str, str]]:
    """(target, anchor) of every relative Markdown link outside code."""
    prose = "\n".join(line for _, line in prose_lines(page.read_text(encoding="utf-8")))
    prose = re.sub(r"`[^`\n]*`", "", prose)
    links = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor))
    return links


def test_slugs_match_python_markdown() -> None:
    assert slug("Finding wrong labels: `fuse-export audit-labels`") == "finding-wrong-labels-fuse-export-audit-labels"
    assert slug("Staged fine-tuning and multi-GPU options (recipe `[train]`)") == \
        "staged-fine-tuning-and-multi-gpu-options-recipe-train"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    for path, anchor in relative_links(page):
        target = (page.parent / path).resolve() if path else page
        if path and target.name in GENERATED and target.parent == ROOT / "docs":
            continue
        assert target.exists(), f"{page.relative_to(ROOT)} links to {path}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), \
                f"{page.relative_to(ROOT)} links to {path}#{anchor}: {target.name} has no such heading"


def test_training_points_to_the_data_sets_page() -> None:
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "(datasets.md#data-sets)" in text and "section below" not in text


def run_report_blocks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report_blocks.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_quoted_figures_are_the_generated_blocks() -> None:
    """Every figure block in the README, the docs and RESULTS.md equals what benchmarks/report_blocks.py
    generates from its source (a study's JSON or report, or a RESULTS.md record in results/quoted.json), and
    every quoted record stands in RESULTS.md."""
    proc = run_report_blocks("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "all current" in proc.stdout


def test_report_blocks_check_finds_a_hand_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report_blocks

    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- cold-start:start -->")
    edited = text[:start] + text[start:].replace(" MB peak RSS", "0 MB peak RSS", 1)
    readme.write_text(edited, encoding="utf-8")
    monkeypatch.setattr(report_blocks, "pages", lambda: [readme])
    monkeypatch.setattr(report_blocks, "ROOT", tmp_path)
    problems = report_blocks.check()
    assert len(problems) == 1 and "'cold-start' differs" in problems[0], problems
    assert report_blocks.write_block("cold-start") == [readme]
    assert readme.read_text(encoding="utf-8") == text and not report_blocks.check()


def test_readme_and_docs_quote_the_same_blocks() -> None:
    """The README's figures are blocks, and each doc that quotes one of them carries the same block."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report_blocks

    readme = {name for page, name, _ in report_blocks.found_blocks() if page.name == "README.md"}
    assert {"quickstart", "cpu-speed", "int8-cpu", "cold-start", "cpu-runtimes", "setup-times", "trunk-noise",
            "geometry-summary", "stacker-summary", "hostile-inputs"} <= readme
    where = {}
    for page, name, _ in report_blocks.found_blocks():
        where.setdefault(name, set()).add(str(page.relative_to(ROOT)))
    assert {"docs/runtime.md", "docs/index.md"} <= where["cold-start"]
    assert "docs/export.md" in where["int8-cpu"] and "docs/benchmark.md" in where["cpu-runtimes"]
    # A figure typed by hand outside the blocks is what drifted before (issue 26): none of these stand alone.
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        bare = re.sub(r"<!-- ([a-z0-9-]+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)
        for stale in ("5.05 s", "904 MB", "6.45 s", "0.71 s", "0.51x eager", "0.29-0.33x", "5 min 51 s", "~6 min"):
            assert stale not in bare, f"{page.relative_to(ROOT)} quotes {stale!r} outside a generated block"
