"""Checks for the loaders' options (the recipe's `data.options` table): a wrong value is a RecipeError."""

from __future__ import annotations

from collections.abc import Sequence

from fuse_export.errors import RecipeError


def fraction(name: str, value: object, low: float = 0.0, high: float = 1.0, open_low: bool = False) -> float:
    """A number in [low, high), or (low, high) with `open_low`."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) < high and (
        float(value) > low if open_low else float(value) >= low)
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g})"
        raise RecipeError(f"data.options.{name} is {value!r}; expected a number in {interval}")
    return float(value)


def integer(name: str, value: object, low: int = 0) -> int:
    """An integer >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"data.options.{name} is {value!r}; expected an integer >= {low}")
    return int(value)


def name_list(name: str, value: object) -> list[str]:
    """A list of strings, also given as one comma-separated string (as on the command line)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise RecipeError(f"data.options.{name} is {value!r}; expected a list of names or a comma-separated string")
    if not items or any(not v for v in items):
        raise RecipeError(f"data.options.{name} is {value!r}; expected at least one non-empty name")
    if len(set(items)) != len(items):
        raise RecipeError(f"data.options.{name} is {value!r}; names must not repeat")
    return items


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RecipeError(f"data.options.{name} is {value!r}; choose one of {', '.join(choices)}")
    return str(value)
