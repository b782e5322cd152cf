"""Checks of numbers that arrive in a request's JSON parameters (shared by the models)."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any, what: str, error: type[Exception]) -> float:
    """The value as a finite float; raises `error` naming `what` otherwise.

    bool is an int in Python, but `"temperature": true` is a client bug, not 1.0; and a JSON
    integer may be too large for a float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise error(f"{what} must be a finite number, got {str(value)[:40]}")
    return number
