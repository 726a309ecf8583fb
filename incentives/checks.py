"""Argument checks shared by ``incentives`` and ``mechanisms``: one clear error that names
the key, the value and what is allowed (long values shortened to 120 characters)."""

from __future__ import annotations

import numpy as np


def bad(key: str, value, allowed: str) -> ValueError:
    """The ValueError "key=value: allowed is ..."."""
    text = repr(value)
    if len(text) > 120:
        text = text[:117] + "..."
    return ValueError(f"{key}={text}: allowed is {allowed}")


def finite_number(value) -> bool:
    """True for a finite real number (bools are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def check_number(key: str, value, least: float = 0.0, strict: bool = False, optional: bool = False) -> None:
    """ValueError unless ``value`` is a finite number >= ``least`` (> with ``strict``), or
    None when ``optional``."""
    if optional and value is None:
        return
    if not (finite_number(value) and (value > least if strict else value >= least)):
        allowed = f"{'None or ' if optional else ''}a finite number {'>' if strict else '>='} {least:g}"
        raise bad(key, value, allowed)


def check_integer(key: str, value, least: int = 1) -> None:
    """ValueError unless ``value`` is an integer >= ``least`` (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise bad(key, value, f"an integer >= {least}")
