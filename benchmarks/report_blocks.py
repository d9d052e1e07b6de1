"""Generated blocks in hand-written pages: a benchmark rewrites what lies between its markers, nothing else.

RESULTS.md and the docs quote measured figures; each study writes its block from its own JSON, so no figure is
typed by hand and a rerun updates every page that shows it.
"""

from __future__ import annotations

from pathlib import Path

from fuse_export.fileio import atomic_open

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "benchmarks" / "RESULTS.md", ROOT / "docs" / "model.md")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


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
    with atomic_open(path, "w") as fh:
        fh.write(f"{head}{start}\n{text}\n{end}{tail}")
    return True


def publish(name: str, text: str) -> list[Path]:
    """Write the block into every page of PAGES that has its markers; returns those pages."""
    return [p for p in PAGES if replace_block(p, name, text)]
