"""The server's value of contributed data, V(q), for the contract and Stackelberg mechanisms.

V(q) = offset + scale * base(q) in utility units, q in samples, base concave,
nondecreasing and free of parameters (:class:`ValueFunction`):

- :class:`LogValue`: scale * ln(1 + q);
- :class:`PowerLawValue`: weight * (a_opt - k q**(-alpha)), a power-law accuracy;
- :class:`AccuracyValue`: weight * a(q) for an accuracy model of ``incentives.accuracy``,
  clipped at 0 below its zero crossing.

Each value also writes itself as a cvxpy expression for the screening programs
(:mod:`mechanisms.screening`), in per-type units of contribution and with its scale a
Parameter, so that re-solving with new numbers reuses the compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from incentives.accuracy import check_model
from incentives.checks import as_floats, bad, check_entries, check_number, finite_number

__all__ = [
    "ValueFunction", "LogValue", "PowerLawValue", "AccuracyValue", "check_server_value", "server_value",
]


class ValueFunction:
    """A concave, nondecreasing value of contributed data for the server.

    ``V(q) = offset + scale * base(q)`` in utility units, q in samples. ``key`` names
    what cannot be a cvxpy Parameter (the shape of ``base``, exponents); ``scale`` (>= 0)
    and ``offset`` are plain numbers so that re-solving with a new scale reuses the
    compiled program. Subclasses define ``key``, ``scale``, ``offset``, ``base`` (numpy),
    ``base_derivative`` (numpy), and for cvxpy ``base_expr`` and ``unit_factor``.

    The programs count each type's contribution in a unit of s_k samples chosen per
    solve (q_k = s_k x_k, x_k of order one), so ``base_expr(x, inverse_unit)`` is
    base(s x) written in x, elementwise:

        base(s x) = shift(s) + unit_factor(s) * base_expr(x, 1/s),

    concave and nondecreasing in a concave x, with the cvxpy Parameter ``inverse_unit``
    (1/s, one per type) entering only as a term added to x (DPP), and shift(s) free of
    x (the programs drop it: it does not move the optimum).
    """

    key: tuple = ()
    scale: float = 1.0
    offset: float = 0.0

    def base(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def base_derivative(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def base_expr(self, x: cp.Expression, inverse_unit: cp.Parameter) -> cp.Expression:
        raise NotImplementedError

    def unit_factor(self, unit: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, q) -> np.ndarray:
        return self.offset + self.scale * self.base(_samples(q))

    def derivative(self, q) -> np.ndarray:
        return self.scale * self.base_derivative(_samples(q))

    @property
    def concave(self) -> "ValueFunction":
        """The concave V that every form of :func:`~mechanisms.screening.solve_screening`
        maximises: this value (an :class:`AccuracyValue`'s unclipped power law, where it
        has one)."""
        return self

    def argmax(self, price, exponent: float = 1.0) -> np.ndarray:
        """argmax_{q >= 0} V(q) - price * q**exponent, elementwise over ``price`` (> 0).

        Solves V'(q) = price * exponent * q**(exponent - 1) by bisection (the left side
        minus the right side decreases in q, V being concave from 0: :meth:`_bisect`);
        q = 0 where V'(0) <= price (exponent 1).
        """
        price = _prices(price)
        check_number("exponent", exponent, least=1)
        return self._bisect(price, exponent, 0.0)

    def _bisect(self, price: np.ndarray, exponent: float, start: float) -> np.ndarray:
        """The q >= ``start`` (samples) where V'(q) = price * exponent * q**(exponent - 1),
        elementwise over ``price`` (> 0), for a V concave on [start, inf): there the left
        side minus the right side decreases in q, so bisection finds the root; ``start``
        where V'(start) <= price (exponent 1), or where the root is below it."""

        def slope(q):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                marginal_cost = price * exponent * np.where(
                    q > 0, q ** (exponent - 1.0), 0.0 if exponent > 1 else 1.0)
                return self.derivative(q) - marginal_cost

        lo = np.full_like(price, start)
        hi = np.full_like(price, max(1.0, 2.0 * start))
        for _ in range(200):
            up = slope(hi) > 0
            if not up.any():
                break
            hi = np.where(up, hi * 2.0, hi)
        else:
            raise ValueError("price: allowed is a price at which V(q) - price*q**exponent "
                             "has a finite maximiser (V grows too fast)")
        at_start = (slope(np.full_like(price, max(start, 1e-300))) <= 0) & (exponent == 1.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            pos = slope(mid) > 0
            lo = np.where(pos, mid, lo)
            hi = np.where(pos, hi, mid)
            if np.all(hi - lo <= 1e-15 * np.maximum(1.0, hi)):
                break
        return np.where(at_start, start, 0.5 * (lo + hi))


@dataclass(frozen=True)
class LogValue(ValueFunction):
    """V(q) = scale * ln(1 + q): logarithmic value of data (utility units, q in samples).

    V'(q) = scale / (1 + q); argmax V(q) - price*q = max(0, scale/price - 1).
    """

    scale: float = 1.0

    def __post_init__(self):
        check_number("scale", self.scale)

    @property
    def key(self) -> tuple:
        return ("log",)

    @property
    def offset(self) -> float:
        return 0.0

    def base(self, q):
        return np.log1p(q)

    def base_derivative(self, q):
        return 1.0 / (1.0 + q)

    def base_expr(self, x, inverse_unit):  # ln(1 + s x) = ln s + ln(1/s + x)
        return cp.log(inverse_unit + x)

    def unit_factor(self, unit):
        return np.ones_like(unit)

    def argmax(self, price, exponent: float = 1.0):
        if exponent != 1.0:
            return super().argmax(price, exponent)
        with np.errstate(over="ignore"):  # a price of 1e-320: q = inf, the value unbounded at it
            return np.maximum(0.0, self.scale / _prices(price) - 1.0)


@dataclass(frozen=True)
class PowerLawValue(ValueFunction):
    """V(q) = weight * a(q) with the power-law accuracy a(q) = a_opt - k * q**(-alpha).

    weight: utility units per unit of accuracy; q in samples; a(q) -> -inf as q -> 0, so
    every type is asked for a positive contribution. In cvxpy the term -q**(-alpha) is
    ``-cp.power(q, -alpha)`` (convex power with a negative exponent, negated).
    """

    weight: float = 1.0
    a_opt: float = 1.0
    k: float = 1.0
    alpha: float = 0.5

    def __post_init__(self):
        for key in ("weight", "k", "alpha"):
            check_number(key, getattr(self, key), strict=True)
        if not finite_number(self.a_opt):
            raise bad("a_opt", self.a_opt, "a finite number")

    @property
    def key(self) -> tuple:
        return ("power_law", float(self.alpha))

    @property
    def scale(self) -> float:
        return self.weight * self.k

    @property
    def offset(self) -> float:
        return self.weight * self.a_opt

    def base(self, q):
        with np.errstate(divide="ignore"):
            return -np.power(q, -self.alpha)

    def base_derivative(self, q):
        with np.errstate(divide="ignore"):
            return self.alpha * np.power(q, -self.alpha - 1.0)

    def base_expr(self, x, inverse_unit):  # -(s x)^-alpha = s^-alpha (-x^-alpha)
        return -cp.power(x, -self.alpha)

    def unit_factor(self, unit):
        return np.asarray(unit, dtype=float) ** -self.alpha


class AccuracyValue(ValueFunction):
    """V(q) = weight * a(q) for an accuracy model a (``incentives.accuracy``).

    Numpy evaluation calls the model itself (``__call__``, ``derivative``; clipped at 0
    below its zero crossing m0). ``argmax`` maximises that clipped V(q) - price *
    q**exponent: a is 0 on [0, m0) and concave beyond, so the maximiser is 0 or the root
    of the first-order condition on [m0, inf) (``model.marginal_inverse`` at exponent 1,
    bisection from m0 otherwise), whichever earns more. A cvxpy expression exists for
    power-law models (``family == "power_law"`` or ``params`` with a_opt, k, alpha): the
    *unclipped* formula weight * (a_opt - k q**(-alpha)), which is concave (:attr:`concave`,
    the V every form of :func:`~mechanisms.screening.solve_screening` maximises); other
    models raise a ValueError when a contract needs the expression.
    """

    def __init__(self, model, weight: float = 1.0):
        check_model("model", model)
        check_number("weight", weight, strict=True)
        self.model = model
        self.weight = float(weight)
        params = dict(getattr(model, "params", {}) or {})
        for name in ("a_opt", "k", "alpha"):
            if name not in params and hasattr(model, name):
                params[name] = getattr(model, name)
        self._power_law = (PowerLawValue(self.weight, float(params["a_opt"]), float(params["k"]),
                                         float(params["alpha"]))
                           if {"a_opt", "k", "alpha"} <= set(params) else None)

    def __repr__(self) -> str:
        return f"AccuracyValue({self.model!r}, weight={self.weight!r})"

    def __eq__(self, other) -> bool:  # by value: an audit compares the one it is handed with the one solved with
        if not isinstance(other, AccuracyValue):
            return NotImplemented
        return self.weight == other.weight and bool(self.model == other.model)

    __hash__ = None  # equal by value, and mutable: unhashable, as a dataclass with eq is

    @property
    def key(self) -> tuple:
        return self._power_law.key if self._power_law else ("model", id(self.model))

    @property
    def scale(self) -> float:
        return self._power_law.scale if self._power_law else self.weight

    @property
    def offset(self) -> float:
        return self._power_law.offset if self._power_law else 0.0

    def __call__(self, q):
        return self.weight * np.asarray(self.model(_samples(q)), dtype=float)

    def derivative(self, q):
        return self.weight * np.asarray(self.model.derivative(_samples(q)), dtype=float)

    @property
    def concave(self) -> ValueFunction:
        return self._power_law or self

    def argmax(self, price, exponent: float = 1.0):
        price = _prices(price)
        check_number("exponent", exponent, least=1)
        if exponent == 1.0 and hasattr(self.model, "marginal_inverse"):
            q = np.asarray(self.model.marginal_inverse(price / self.weight), dtype=float) * np.ones_like(price)
        else:  # a below its zero crossing is flat: a bisection from 0 would stop there
            q = self._bisect(price, exponent, float(getattr(self.model, "zero_crossing", 0.0)))
        gain = self(q) - price * q**exponent - self(np.zeros_like(q))
        return np.where(gain > 0, q, 0.0)

    def base(self, q):
        return self._require().base(q)

    def base_derivative(self, q):
        return self._require().base_derivative(q)

    def base_expr(self, x, inverse_unit):
        return self._require().base_expr(x, inverse_unit)

    def unit_factor(self, unit):
        return self._require().unit_factor(unit)

    def _require(self) -> PowerLawValue:
        if self._power_law is None:
            raise bad("model", self.model, "a power-law accuracy model (a_opt - k m**(-alpha)) "
                      "when a contract needs V as a cvxpy expression")
        return self._power_law


def check_server_value(value, weight: float) -> None:
    """ValueError unless ``value`` is a :class:`ValueFunction` or "accuracy" (V = weight *
    a, the accuracy model's) and ``weight`` > 0, and 1 for a ValueFunction, which carries
    its own scale (``weight`` scales only the accuracy value): the server-value setting
    of the contract and Stackelberg mechanisms."""
    if not (isinstance(value, ValueFunction) or value == "accuracy"):
        raise bad("value", value, "a ValueFunction or 'accuracy'")
    check_number("value_weight", weight, strict=True)
    if isinstance(value, ValueFunction) and weight != 1:
        raise bad("value_weight", weight, "1.0 unless value='accuracy' (a ValueFunction carries its own "
                  "scale, e.g. LogValue(scale))")


def server_value(value, weight: float, model) -> ValueFunction:
    """The server's V: ``value`` itself, or :class:`AccuracyValue` (weight * a(q) under
    ``model``) for "accuracy"."""
    return value if isinstance(value, ValueFunction) else AccuracyValue(model, weight)


def _samples(q) -> np.ndarray:
    """``q``, samples, as a float array; ValueError naming ``q`` for an entry that is not a
    number >= 0 (a negative one gave V = -inf or NaN, None gave NaN)."""
    q = as_floats("q", q, "samples >= 0 (a number or an array of numbers)")
    check_entries("q", q, 0.0)
    return q


def _prices(price) -> np.ndarray:
    """``price`` as a 1-D float array; ValueError naming it unless every entry is a finite
    number > 0 (a zero price of reward or cost makes the maximiser unbounded; None read as
    NaN gave NaN)."""
    prices = np.atleast_1d(as_floats("price", price, "finite numbers > 0"))
    if not np.all(np.isfinite(prices) & (prices > 0)):
        raise bad("price", price, "finite numbers > 0 (a zero price of reward or cost makes the maximiser unbounded)")
    return prices
