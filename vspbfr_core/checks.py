"""Checks of scalar options (numbers, choices, flags) for the public API and the host adapters.

Each check returns the value in its canonical type or raises :class:`~vspbfr_core.errors.InputError` with the
option's name, what was given and what is expected.  Rules shared by all of them:

* ``bool`` is never accepted as a number (``True`` is an int to Python, not a seed or a size to a user);
* integers accept any :class:`numbers.Integral` (Python and NumPy ints), never floats or strings, so a seed
  ``"5"`` or ``5.0`` is an error that says an int is expected;
* floats accept any real number except bool (ints included); NaN and infinities are refused;
* choices are strings from a fixed list, listed in the message.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from .errors import InputError

__all__ = ["check_int", "check_float", "check_choice", "check_bool", "describe_value"]


def describe_value(value: Any) -> str:
    """``str '5'``-style description for messages (long values cut)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _bounds(name: str, number: float, minimum: float | None, maximum: float | None, min_open: bool) -> None:
    low_ok = minimum is None or (number > minimum if min_open else number >= minimum)
    high_ok = maximum is None or number <= maximum
    if low_ok and high_ok:
        return
    lo = "-inf" if minimum is None else f"{minimum:g}"
    hi = "inf" if maximum is None else f"{maximum:g}"
    if maximum is None:
        rule = f"must be {'greater than' if min_open else 'at least'} {lo}"
    elif minimum is None:
        rule = f"must be at most {hi}"
    else:
        rule = f"must lie in {'(' if min_open else '['}{lo}, {hi}]"
    raise InputError(f"{name} {rule}, got {number:g}")


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}: expected an int, got {describe_value(value)}")
    number = int(value)
    _bounds(name, number, minimum, maximum, False)
    return number


def check_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                min_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (``min_open``: the minimum itself excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}: expected a number, got {describe_value(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name}: expected a finite number, got {number}")
    _bounds(name, number, minimum, maximum, min_open)
    return number


def check_choice(value: Any, name: str, choices: Sequence[str], *, allow_none: bool = False) -> str | None:
    """``value`` if it is one of ``choices`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices) + (" or None" if allow_none else "")
        raise InputError(f"{name}: expected one of {allowed}, got {describe_value(value)}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (NumPy bools too)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise InputError(f"{name}: expected True or False, got {describe_value(value)}")
