"""Argument checks shared by ``fl``'s constructors and functions: one clear error that
names the key, the value and what is allowed."""

from __future__ import annotations

import numpy as np


def check_integer(key: str, value, least: int = 1, optional: bool = False) -> None:
    """ValueError unless ``value`` is an integer >= ``least`` (bools are not integers
    here), or None when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        allowed = f"{'None or ' if optional else ''}an integer >= {least}"
        raise ValueError(f"{key}={value!r}: allowed is {allowed}")
