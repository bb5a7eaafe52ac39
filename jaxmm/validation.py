"""Validation of user input at the boundary, before anything is traced or compiled.

One dialect for the whole library: every check names the argument (or field) and the allowed
range in its ``ValueError``, e.g. ``gamma = -1 is out of range; allowed: >= 0``. Scalar checks
return the value as a Python number; ``array`` checks every element and skips values that are
being traced (inside ``jit`` the checks have already run at the boundary).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["array", "integer", "nonnegative", "number", "numeric_array", "positive", "positives"]


def number(name: str, value: Any, ok: Callable[[float], bool], allowed: str) -> float:
    """``float(value)`` if it is a number (not NaN) with ``ok(value)``; else ``ValueError``."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} must be a number; allowed: {allowed}") from None
    if math.isnan(result) or not ok(result):
        raise ValueError(f"{name} = {value!r} is out of range; allowed: {allowed}")
    return result


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return number(name, value, lambda v: 0 < v < math.inf, f"0 < {name} < inf")


def positives(**values: Any) -> list[float]:
    """``positive`` of each keyword argument, in order."""
    return [positive(name, value) for name, value in values.items()]


def nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    return number(name, value, lambda v: 0 <= v < math.inf, f"0 <= {name} < inf")


def integer(name: str, value: Any, low: int, allowed: str) -> int:
    """An integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} = {value!r}; allowed: {allowed}")
    return int(value)


def array(name: str, value: Any, ok: Callable[[np.ndarray], Any], allowed: str) -> None:
    """Every element of ``value`` (a number or an array) not NaN and with ``ok``; ``None`` and
    traced values pass (they are checked where they enter, outside ``jit``)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return
    values = np.asarray(value, dtype=np.float64)
    if np.isnan(values).any() or not np.all(ok(values)):
        raise ValueError(f"{name} = {value!r} is out of range; allowed: {allowed}")


def numeric_array(name: str, value: Any) -> np.ndarray:
    """``value`` as ``f64[...]``; ``ValueError`` if it is not numeric or holds a NaN (naming
    the first NaN's index)."""
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric: {error}") from None
    if np.isnan(values).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(values))[0])}")
    return values
