"""Maximising functions of one variable on intervals [0, upper_r], and finding their
sign changes on intervals [low_r, high_r], many at once.

The agents' own problems are one-dimensional (how many samples to collect alone, how much
data a planner should gather), but with a non-linear value of accuracy phi they lose the
closed forms of :mod:`incentives.accuracy` and :func:`incentives.equilibrium.social_optimum`:
phi(a(m)) need not be concave, and a(m) is flat (zero) below its zero crossing. Each row
r is therefore searched on a grid and refined:

1. the grid: 129 linear fractions of upper_r (0 and upper_r included) and 256
   log-spaced ones (down to 1e-9 upper_r), so that both ends and small values are seen;
2. golden-section search for a maximum on the two grid cells around the best grid point;
   the refined point is kept where it beats the grid's best.

For a function that is unimodal on [0, upper_r] the result is its maximum up to the
golden-section tolerance (about 4e-11 of the bracket; near a smooth maximum, comparing
values resolves x only to about sqrt(machine eps) relative anyway); otherwise, the best
maximum the grid resolves. Ties between grid points go to the smaller point.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_FRACTIONS = np.unique(np.concatenate([np.linspace(0.0, 1.0, 129), np.geomspace(1e-9, 1.0, 256)]))
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the share of the bracket each step keeps
_GOLDEN_STEPS = 50  # 0.618^50 ~ 4e-11, below the sqrt(eps) a flat maximum allows


def maximise(objective: Callable[[np.ndarray], np.ndarray], upper) -> tuple[np.ndarray, np.ndarray]:
    """(x, value), both of shape (R,): x_r in [0, upper_r] maximising row r of ``objective``.

    objective: maps an (R, G) array, row r holding points of row r's interval, to the
    (R, G) values there (vectorised, elementwise along each row). upper: (R,) finite
    numbers >= 0, the intervals' right ends.
    """
    upper = np.asarray(upper, dtype=float).reshape(-1)
    if not np.all(np.isfinite(upper) & (upper >= 0)):
        raise ValueError(f"upper={upper.tolist()!r}: allowed is finite numbers >= 0")
    rows = np.arange(len(upper))
    grid = upper[:, None] * _FRACTIONS[None, :]
    values = np.asarray(objective(grid), dtype=float)
    best = np.argmax(values, axis=1)
    best_x, best_value = grid[rows, best], values[rows, best]

    def at(x: np.ndarray) -> np.ndarray:
        return np.asarray(objective(x[:, None]), dtype=float)[:, 0]

    low = grid[rows, np.maximum(best - 1, 0)]
    high = grid[rows, np.minimum(best + 1, len(_FRACTIONS) - 1)]
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    value_low, value_high = at(inner_low), at(inner_high)
    for _ in range(_GOLDEN_STEPS):
        left = value_low >= value_high  # a maximum lies in [low, inner_high]
        low = np.where(left, low, inner_low)
        high = np.where(left, inner_high, high)
        kept, kept_value = np.where(left, inner_low, inner_high), np.where(left, value_low, value_high)
        fresh = np.where(left, high - _GOLDEN * (high - low), low + _GOLDEN * (high - low))
        fresh_value = at(fresh)
        inner_low, value_low = np.where(left, fresh, kept), np.where(left, fresh_value, kept_value)
        inner_high, value_high = np.where(left, kept, fresh), np.where(left, kept_value, fresh_value)
    refined = 0.5 * (low + high)
    refined_value = at(refined)
    better = refined_value > best_value
    return np.where(better, refined, best_x), np.where(better, refined_value, best_value)


def bisect(function: Callable[[np.ndarray], np.ndarray], low, high, steps: int = 60) -> np.ndarray:
    """For each entry r of ``low`` and ``high`` (arrays of one shape, or broadcast to
    one) a point of [low_r, high_r] where the continuous ``function`` changes sign, NaN
    where it does not (``function`` has the same strict sign, or no sign, at both ends).
    ``function`` maps an array of points of that shape, one per entry, to the values
    there. Each of ``steps`` halvings keeps the half whose ends differ in sign, so the
    point is within (high_r - low_r) 2**-steps of a sign change (of the one root, where
    the function is monotone); an end where it is 0 is returned as it is."""
    start, end = (np.array(end, dtype=float) for end in np.broadcast_arrays(low, high))
    at_low, at_high = np.asarray(function(start), dtype=float), np.asarray(function(end), dtype=float)
    rising = at_low < 0
    found = (np.sign(at_low) * np.sign(at_high) < 0) | (at_low == 0) | (at_high == 0)
    low, high = start, end
    for _ in range(steps):
        mid = 0.5 * (low + high)
        below = (np.asarray(function(mid), dtype=float) < 0) == rising  # the sign change is above mid
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    point = np.where(at_low == 0, start, np.where(at_high == 0, end, 0.5 * (low + high)))
    return np.where(found, point, np.nan)


_BLOCK_ENTRIES = 2**16  # (point, agent) pairs evaluated at once by row_sums: 512 KiB an array


def row_sums(function: Callable[[np.ndarray], np.ndarray], points: np.ndarray, width: int) -> np.ndarray:
    """(T,) the row sums of ``function`` at T ``points``: ``function`` maps a block of
    points (B,) to a (B, width) array, one column per agent, and is called on blocks of
    at most _BLOCK_ENTRIES entries (at least one point), so that a scan of many points
    over many agents keeps its arrays small."""
    rows = max(1, _BLOCK_ENTRIES // max(1, width))
    return np.concatenate([np.asarray(function(points[k:k + rows]), dtype=float).sum(axis=1)
                           for k in range(0, len(points), rows)])
