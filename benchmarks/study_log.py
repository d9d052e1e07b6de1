"""The resumable studies' log: one JSON line per finished cell, appended and fsynced at once, read back on a rerun.

A study killed half-way loses at most the cell it was running; a rerun skips every cell whose line carries the
same key (its configuration and code), so rows from other settings or older code are never reused.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def read_rows(path: Path, key: str | None = None) -> list[dict[str, Any]]:
    """Every row of the log (those with `key` only, when given); a torn last line is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if key is None or row.get("key") == key:
                rows.append(row)
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    """Append the finished cell's rows (each with `extra`), durably; returns them as written."""
    written = [r | extra for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in written)
        fh.flush()
        os.fsync(fh.fileno())
    return written


def load_around(run: Any) -> dict[str, Any]:
    """The 1-minute load average before and after `run()`, with its result under "result"."""
    before = os.getloadavg()[0]
    result = run()
    return {"result": result, "load_before": round(before, 2), "load_after": round(os.getloadavg()[0], 2)}
