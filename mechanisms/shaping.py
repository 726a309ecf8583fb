"""Accuracy shaping, after Karimireddy, Guo & Jordan (2022), "Mechanisms that Incentivize
Data Sharing in Federated Learning" (arXiv:2207.04557), Section "accuracy shaping".

The server gives agent i not the global model but a model of accuracy

    a_i(m) = min(a(M), a(m_i^o) + gamma_i(m_i))   if m_i >= m_i^o,
    a_i(m) = min(a(M), a(m_i))                    if m_i <  m_i^o,
    gamma_i(m_i) = (c_i / v_i + epsilon) (m_i - m_i^o),

where m_i^o is what agent i would collect training alone
(:func:`~incentives.utility.local_contribution`, capped at n_i) and M = sum_j m_j; a(m_i^o)
and a(m_i) below it are on the curve of an agent's own training (``model.alone``), a(M)
on the federation's (they differ once the loop calibrates a(M) to training). Below its
local optimum an agent gets no more than it could reach alone; above it, every extra
sample earns c_i / v_i + epsilon accuracy, which pays for the sample (exactly, with
epsilon = 0), up to the accuracy of the global model. No money changes hands. On one
curve a(M) >= a(m_i), and the min below m_i^o is the paper's rule; on a calibrated
federation's curve a(M) can fall below a(m_i^o), and the server, whose models are all
degraded copies of the global one, cannot deliver more than a(M) on either branch (the
rule stays continuous at m_i^o).

Equilibrium. Agent i's utility is flat (epsilon = 0) or increasing (epsilon > 0) along
the shaping line and decreases once the line passes a(M), so it contributes up to where
they meet (ties go to contributing, the epsilon -> 0 limit of the paper):

    m_i(M) = clip(m_i^o + (a(M) - a(m_i^o)) / (c_i / v_i + epsilon), m_i^o, n_i)   if a(M) >= a(m_i^o),
    m_i(M) = a^-1(a(M)) on its own curve, the least data reaching a(M)              otherwise,

(below m_i^o its own curve rises faster than its cost, c_i / v_i), and the total solves
the fixed point M = sum_i m_i(M), a 1-D root found with brentq. With epsilon = 0 an
agent with a(M) >= a(m_i^o) gets exactly its local-only utility (individually rational,
and no surplus left to it); one with a(M) < a(m_i^o) gets less than training alone,
v_i a(M) - c_i a^-1(a(M)), which the audit reports as an individual-rationality
shortfall: such a federation is not worth joining for it. Linear phi.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, root

from incentives.accuracy import AccuracyModel
from incentives.checks import check_number
from incentives.equilibrium import nash_equilibrium, settle_participation
from incentives.population import Population
from incentives.protocols import Allocation, Outcome
from incentives.search import bisect, row_sums
from incentives.utility import local_contribution, utility

_SCAN_POINTS = 256
_GAIN_TOL = 1e-9  # utility gain (accuracy units at v = 1) below which the fixed point counts as an equilibrium


@dataclass(frozen=True)
class AccuracyShaping:
    """The accuracy-shaping rule with extra slope epsilon >= 0 (accuracy per sample)."""

    epsilon: float = 0.0

    name = "shaping"
    uses_reported_costs = True  # m_i^o and the slope c_i / v_i come from agents' reports
    linear_costs_only = True  # the slope c_i / v_i is the marginal cost of linear costs

    def __post_init__(self) -> None:
        check_number("epsilon", self.epsilon)

    def _terms(self, population: Population, model: AccuracyModel):
        """(m^o, a(m^o), slope c/v + epsilon), each of shape (N,)."""
        population.require_linear_costs(self.name)
        optimum = local_contribution(population, model)
        slope = population.cost / population.value + self.epsilon
        return optimum, np.asarray(model.alone(optimum)).reshape(population.n_agents), slope

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        m = population.check_contributions(contributions)
        accuracy = np.minimum(model(m.sum()), _own_accuracy(m, *self._terms(population, model), model))
        return Allocation(accuracy=accuracy, transfer=np.zeros(population.n_agents))

    def allocate_to(self, i: int, profiles, population: Population, model: AccuracyModel) -> Allocation:
        """Agent i's accuracy (and zero transfer) under each of G contribution profiles
        (G, N), as (G,) arrays: min(a(M_g), own_i(m_gi)), the numbers of :meth:`allocate`
        with the agents' terms computed once (``incentives.protocols.Mechanism``)."""
        m = population.check_profiles(profiles)
        optimum, local_accuracy, slope = (term[i] for term in self._terms(population, model))
        own = _own_accuracy(m[:, i], optimum, local_accuracy, slope, model)
        return Allocation(accuracy=np.minimum(np.asarray(model(m.sum(axis=1)), dtype=float), own),
                          transfer=np.zeros(len(m)))

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """The equilibrium in closed form up to the 1-D root M = sum_i m_i(M).

        g(M) = sum_i m_i(M) - M is >= 0 at M = 0 and < 0 at sum_i n_i unless every agent
        is capped (then M = sum_i n_i). m_i(M) >= m_i^o once a(M) >= a(m_i^o) for all i, and
        then g is concave where a is (a(M) > 0), so it has at most one root there; M = 0
        may be another equilibrium (nobody's data is worth anything). The solver scans g
        on log-spaced points, brackets its largest sign change, and solves it with brentq
        to machine precision: the largest equilibrium total. Where some agent would gain by
        deviating from it (:meth:`deviation_gains`; a calibrated curve steeper than its
        c_i / v_i), the equilibrium is the root of the agents' exact best responses
        found from it (:meth:`_equilibrium`).
        The delivery target is the shaped accuracy a_i(m) (0 for agents who stay out).
        """
        participation = settle_participation(lambda pop: self._equilibrium(pop, model),
                                             lambda m, pop: self.allocate(m, pop, model), population)
        m = participation.contributions
        optimum, local_accuracy, slope = self._terms(population, model)
        info = {
            "total": float(m.sum()),
            "global_accuracy": float(model(m.sum())),
            "epsilon": self.epsilon,
            "local_optimum": optimum,
            "local_accuracy": local_accuracy,
            "shaping_slope": slope,
        }
        return Outcome(
            mechanism=self.name,
            contributions=m,
            accuracy=participation.accuracy,
            transfer=participation.transfer,
            delivery_target=participation.accuracy,
            participates=participation.participates,
            info=info,
        )

    def _equilibrium(self, population: Population, model: AccuracyModel) -> np.ndarray:
        """The fixed point of :meth:`_contributions` where it is an equilibrium; else the
        root of BR(m) - m (BR: every agent's exact best response to the others, the best
        points of :meth:`deviation_gains`; Powell's hybrid method with the Jacobian
        BR_i'(M_-i) off the diagonal and -1 on it, as BR_i depends on the others' total
        M_-i alone, BR_i' by a forward difference of 1e-7 max(1, M_-i) samples), sought
        from the fixed point and, failing that, from where best-response iteration from it stops
        (``incentives.equilibrium``); a root counts where no agent gains more than
        _GAIN_TOL there. The iteration alone stops within its tolerance on the moves,
        not at the equilibrium; it is returned, with a warning, only if no root is found."""
        m = self._contributions(population, model)
        if np.all(self.deviation_gains(m, population, model) <= _GAIN_TOL):
            return m
        endowment = population.endowment

        def moves(x: np.ndarray) -> np.ndarray:
            inside = np.clip(x, 0.0, endowment)
            return self._best_deviations(inside, population, model)[0] - inside

        def jacobian(x: np.ndarray) -> np.ndarray:  # BR_i depends on the others' total M_-i alone
            inside = np.clip(x, 0.0, endowment)
            others = inside.sum() - inside
            step = 1e-7 * np.maximum(1.0, others)
            slope = (self._best_deviations(inside, population, model, others + step)[0]
                     - self._best_deviations(inside, population, model, others)[0]) / step
            J = np.repeat(slope[:, None], len(x), axis=1)  # d BR_i / d x_j = BR_i'(M_-i), j != i
            np.fill_diagonal(J, -1.0)  # d (BR_i - x_i) / d x_i
            return J

        def equilibrium_from(start: np.ndarray) -> np.ndarray | None:
            found = np.clip(root(moves, start, jac=jacobian, method="hybr").x, 0.0, endowment)
            return found if np.all(self.deviation_gains(found, population, model) <= _GAIN_TOL) else None

        found = equilibrium_from(m)
        if found is not None:
            return found
        iterated = nash_equilibrium(self, population, model, start=m)
        found = equilibrium_from(iterated.contributions)
        if found is not None:
            return found
        warnings.warn(f"shaping: no profile without a profitable deviation found from the fixed point (best "
                      f"responses {'settled' if iterated.converged else 'did not settle'} in {iterated.iterations} "
                      "sweeps); the profile returned is where they stopped, not an equilibrium", stacklevel=3)
        return iterated.contributions

    def deviation_gains(self, contributions, population: Population, model: AccuracyModel) -> np.ndarray:
        """(N,) each agent's largest utility gain from changing its own contribution alone.

        Agent i's utility v_i min(a(M_-i + x), own_i(x)) - c_i x (own_i: its curve alone
        below m_i^o, the shaping line above) is the smaller of two increasing functions
        less a linear cost. Where own_i is the smaller, its maximum is at m_i^o, n_i or
        where the two meet (the line is flat or rising; below m_i^o its own curve rises
        faster than its cost); where a is, at a meeting point, at n_i or where
        v_i a'(M_-i + x) = c_i: x = (a')^-1(c_i / v_i) - M_-i. So the points compared
        with x = m_i are 0, n_i, m_i^o, that last one, and the meeting points: on the
        alone part, base(gamma (M_-i + x)) = base(x) changes sign once (at
        x = gamma M_-i / (1 - gamma) for a calibrated curve, gamma < 1); on the line
        part, a(M_-i + x) less the line is concave where a is positive, largest where
        a'(M_-i + x) equals the line's slope, and has at most one root on either side
        of that peak. Each root is found by bisection (:func:`incentives.search.bisect`),
        so a gain there is exact to about 2**-60 of the agent's endowment in x.
        """
        return self._best_deviations(contributions, population, model)[1]

    def _best_deviations(self, contributions, population: Population, model: AccuracyModel,
                         others: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N,) each agent's best contribution given the others' (:meth:`deviation_gains`'
        points) and (N,) its utility gain over its own contribution (>= 0); ``others``:
        the others' totals M_-i (default sum_j m_j - m_i)."""
        m = population.check_contributions(contributions)
        others = m.sum() - m if others is None else others
        terms = self._terms(population, model)
        optimum, endowment = terms[0], population.endowment  # m_i^o, already within n_i

        def utility_at(x: np.ndarray) -> np.ndarray:  # agent i contributing x_i, the others M_-i
            return utility(population, np.minimum(np.asarray(model(others + x), dtype=float),
                                                  _own_accuracy(x, *terms, model)), x)

        def gap(x: np.ndarray) -> np.ndarray:  # a(M_-i + x) - own_i(x): 0 where the two meet
            return np.asarray(model(others + x), dtype=float) - _own_accuracy(x, *terms, model)

        with np.errstate(divide="ignore"):
            steep = np.asarray(model.marginal_inverse(population.cost / population.value), dtype=float) - others
            peak = np.clip(np.asarray(model.marginal_inverse(terms[2]), dtype=float) - others, optimum, endowment)
        meeting = bisect(gap, np.stack([np.zeros_like(optimum), optimum, peak]), np.stack([optimum, peak, endowment]))
        points = np.stack([m, np.zeros_like(m), endowment, optimum, np.where(np.isfinite(steep), steep, 0.0),
                           *(np.where(np.isnan(x), 0.0, x) for x in meeting)])
        points = np.clip(points, 0.0, endowment)
        values = np.array([utility_at(x) for x in points])
        best = np.argmax(values, axis=0)  # the first of equal values: the agent's own contribution
        rows = np.arange(population.n_agents)
        return points[best, rows], values[best, rows] - values[0]

    def _contributions(self, population: Population, model: AccuracyModel) -> np.ndarray:
        optimum, local_accuracy, slope = self._terms(population, model)
        endowment = population.endowment
        paying = slope > 0

        def demand(totals: np.ndarray) -> np.ndarray:  # (T, N) m_i(M) at T totals; slope 0 (free data): all n_i
            accuracy = np.asarray(model(totals), dtype=float).reshape(-1, 1)
            step = (accuracy - local_accuracy) / np.where(paying, slope, 1.0)
            along = np.where(paying, np.clip(optimum + step, optimum, endowment), endowment)
            short = accuracy < local_accuracy  # the global model falls short of training alone
            reach = np.zeros_like(accuracy)  # the least data reaching a(M) alone, where some agent needs it
            needed = short.any(axis=1) & (accuracy[:, 0] > 0)
            if needed.any():
                reach[needed] = np.asarray(model.alone.inverse(accuracy[needed]), dtype=float)
            return np.where(short, np.minimum(reach, optimum), along)

        def excess(totals: np.ndarray) -> np.ndarray:  # (T,) sum_i m_i(M) - M
            return row_sums(demand, totals, len(optimum)) - totals

        low, high = 0.0, float(endowment.sum())
        if excess(np.array([high]))[0] >= 0:
            return demand(np.array([high]))[0]
        scan = np.concatenate([[low], low + np.geomspace((high - low) * 1e-12, high - low, _SCAN_POINTS)])
        j = int(np.flatnonzero(excess(scan) >= 0)[-1])
        root = brentq(lambda total: float(excess(np.array([total]))[0]), scan[j], scan[j + 1],
                      xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        return demand(np.array([root]))[0]


def _own_accuracy(m: np.ndarray, optimum: np.ndarray, local_accuracy: np.ndarray, slope: np.ndarray,
                  model: AccuracyModel) -> np.ndarray:
    """(N,) own_i(m_i): a(m_i) on the agent's own curve below m_i^o, the shaping line
    a(m_i^o) + slope_i (m_i - m_i^o) above (``AccuracyShaping._terms``)."""
    return np.where(m >= optimum, local_accuracy + slope * (m - optimum), model.alone(m))
