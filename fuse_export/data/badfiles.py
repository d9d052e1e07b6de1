"""The bad-input policy: fail at the first bad file (default) or skip bad files and keep a list of them.

Every loader reports problems with individual files or rows through `BadFiles.report`. Under "fail" that
raises a DataError naming the file; under "skip" the file is left out and remembered, and the trainer
writes the list to `bad_files.txt` next to the run. Nothing is ever dropped silently.
Images on disk are checked here as well, when the data set is loaded, so a corrupt file stops the run
before training starts rather than in epoch 3.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fuse_export.errors import DataError, RecipeError
from fuse_export.preprocess import IMAGE_SUFFIXES  # noqa: F401  (re-exported to the data sets)

POLICIES = ("fail", "skip")
_SKIP_HINT = 'set data.options.on_bad = "skip" (or --on-bad skip) to leave bad files out and list them'


def check_policy(on_bad: object) -> str:
    """The policy name, or a RecipeError naming the option."""
    if on_bad not in POLICIES:
        raise RecipeError(f"data.options.on_bad is {on_bad!r}; choose one of {', '.join(POLICIES)}")
    return str(on_bad)


@dataclass
class BadFiles:
    """Collects bad files under a policy; `entries` are (where, problem) for the skipped ones."""

    on_bad: str = "fail"
    entries: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_policy(self.on_bad)

    def report(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        """Fail with a DataError, or remember the file as skipped."""
        if self.on_bad == "fail":
            raise DataError(path, f"{problem}; {_SKIP_HINT}", line)
        self.entries.append((f"{path}:{line}" if line is not None else str(path), problem))

    def lines(self) -> list[str]:
        """One `where<TAB>problem` line per skipped file, for bad_files.txt."""
        return [f"{where}\t{problem}" for where, problem in self.entries]


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image (missing, unreadable, not an image, corrupt, truncated), or None."""
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning, "truncated" EXIF, ...) on odd files; an error is what we want.
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.verify()  # structure and checksums (PNG CRCs); the image is unusable afterwards
            with Image.open(path) as im:
                if im.format == "JPEG":
                    # Decoding at 1/8 scale still reads every scan, so truncation is found, at a fraction of the cost.
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                if im.width < 1 or im.height < 1:
                    return "image has no pixels"
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "is a directory, expected an image file"
    except PermissionError:
        return "file is not readable (permission denied)"
    except UnidentifiedImageError:
        return "not an image file (unknown or corrupt format)"
    except Image.DecompressionBombError as exc:
        return f"image is too large to decode safely ({exc})"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError) as exc:
        # PIL signals corrupt or truncated data with a spread of exception types, depending on the codec.
        return f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    return None


def find_bad_images(paths: Sequence[Path], workers: int | None = None) -> list[tuple[int, str]]:
    """(index, problem) for each path that is not a usable image; decoding runs on a few threads."""
    if not paths:
        return []
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(image_problem, paths, chunksize=64))
    return [(i, p) for i, p in enumerate(problems) if p is not None]


def keep_good_images(paths: Sequence[Path], bad: BadFiles) -> list[int]:
    """Indices of the usable images among `paths`; every other one is reported to `bad` (in path order)."""
    broken = dict(find_bad_images(paths))
    for i in sorted(broken):
        bad.report(paths[i], broken[i])
    return [i for i in range(len(paths)) if i not in broken]
