"""Argument types the benchmarks share, so that a bad value is argparse's one-line error
(naming the option and what is allowed) before any work starts."""

from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence


def integer(least: int, most: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``least`` (and <= ``most``, where given, ``why``
    saying why in the error)."""
    allowed = f"an integer >= {least}" if most is None else f"an integer from {least} to {most}{why}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"{text!r}: allowed is {allowed}")
        return value

    return convert


def part_of(names: Sequence[str]) -> Callable[[str], str]:
    """An argparse type: a string contained in at least one of ``names``."""

    def convert(text: str) -> str:
        if not any(text in name for name in names):
            raise argparse.ArgumentTypeError(f"{text!r}: allowed is a part of one of these names: {'; '.join(names)}")
        return text

    return convert


def share(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a number > 0 and <= 1")
    return value


def _number(text: str) -> float:
    """``text`` as a float, NaN where it is none (which every range check refuses)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a finite number > 0")
    return value
