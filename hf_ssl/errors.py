"""One error type for mistakes a user can fix, and the checks configs run when they are built.

Anything raised as :class:`UsageError` (a bad value, path, column or checkpoint) is printed by the CLI as one
line, ``hf-ssl: error: <message>``, with exit status 2; every other exception keeps its traceback.
"""

from __future__ import annotations

import math
from typing import Any


class UsageError(ValueError):
    """A mistake the user can fix; the message names the flag, field, file or row and what is allowed."""


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise :class:`UsageError` unless ``low <= value <= high`` (bounds optional, each inclusive or not).

    Args:
        name: the config field or flag, as the user writes it (``"loss_temperature"``).
        value: its value; must be a finite real number.
        low: lower bound, or ``None``.
        high: upper bound, or ``None``.
        low_inclusive: whether ``value == low`` is allowed.
        high_inclusive: whether ``value == high`` is allowed.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        left = "" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        if low is not None and high is not None:
            allowed = f"in {left}, {right}"
        elif low is not None:
            allowed = f"{'>=' if low_inclusive else '>'} {low:g}"
        elif high is not None:
            allowed = f"{'<=' if high_inclusive else '<'} {high:g}"
        else:
            allowed = "a finite number"
        raise UsageError(f"{name} must be {allowed}, got {value!r}")


def check_int(name: str, value: Any, low: int) -> None:
    """Raise :class:`UsageError` unless ``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...] | list[Any]) -> None:
    """Raise :class:`UsageError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
