"""Accuracy shaping, after Karimireddy, Guo & Jordan (2022), "Mechanisms that Incentivize
Data Sharing in Federated Learning" (arXiv:2207.04557), Section "accuracy shaping".

The server gives agent i not the global model but a model of accuracy

    a_i(m) = min(a(M), a(m_i^o) + gamma_i(m_i))   if m_i >= m_i^o,
    a_i(m) = a(m_i)                               if m_i <  m_i^o,
    gamma_i(m_i) = (c_i / v_i + epsilon) (m_i - m_i^o),

where m_i^o is what agent i would collect training alone
(:func:`~incentives.utility.local_contribution`, capped at n_i) and M = sum_j m_j; a(m_i^o)
and a(m_i) below it are on the curve of an agent's own training (``model.alone``), a(M)
on the federation's (they differ once the loop calibrates a(M) to training). Below its
local optimum an agent gets no more than it could reach alone; above it, every extra
sample earns c_i / v_i + epsilon accuracy, which pays for the sample (exactly, with
epsilon = 0), up to the accuracy of the global model. No money changes hands.

Equilibrium. Agent i's utility is flat (epsilon = 0) or increasing (epsilon > 0) along
the shaping line and decreases once the line passes a(M), so it contributes up to where
they meet (ties go to contributing, the epsilon -> 0 limit of the paper):

    m_i(M) = clip(m_i^o + (a(M) - a(m_i^o)) / (c_i / v_i + epsilon), m_i^o, n_i),

and the total solves the fixed point M = sum_i m_i(M), a 1-D root found with brentq.
With epsilon = 0 every agent's utility equals its local-only utility (individually
rational, and no surplus left to the agents). Linear phi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from incentives.accuracy import AccuracyModel
from incentives.checks import check_number
from incentives.equilibrium import settle_participation
from incentives.population import Population
from incentives.protocols import Allocation, Outcome
from incentives.utility import local_contribution

_SCAN_POINTS = 256


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
        optimum, local_accuracy, slope = self._terms(population, model)
        shaped = np.minimum(model(m.sum()), local_accuracy + slope * (m - optimum))
        accuracy = np.where(m >= optimum, shaped, model.alone(m))
        return Allocation(accuracy=accuracy, transfer=np.zeros(population.n_agents))

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """The equilibrium in closed form up to the 1-D root M = sum_i m_i(M).

        g(M) = sum_i m_i(M) - M is >= 0 at M_0 = sum_i m_i^o (each m_i(M) >= m_i^o) and
        < 0 at sum_i n_i unless every agent is capped (then M = sum_i n_i). When a(M_0) > 0,
        a is concave on [M_0, inf), hence so is g, and the root there is unique. (If training
        alone pays for nobody, every m_i^o = 0 and M = 0 may be a second equilibrium.) The
        solver scans g on log-spaced points, brackets its largest sign change, and solves it
        with brentq to machine precision: the largest equilibrium total.
        The delivery target is the shaped accuracy a_i(m) (0 for agents who stay out).
        """
        participation = settle_participation(
            lambda pop: self._contributions(pop, model), self, population, model
        )
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

    def _contributions(self, population: Population, model: AccuracyModel) -> np.ndarray:
        optimum, local_accuracy, slope = self._terms(population, model)
        endowment = population.endowment

        def demand(total: float) -> np.ndarray:  # m_i(M); slope 0 (free data, epsilon 0): all n_i
            step = np.divide(model(total) - local_accuracy, slope, out=np.zeros_like(slope), where=slope > 0)
            return np.where(slope > 0, np.clip(optimum + step, optimum, endowment), endowment)

        def excess(total: float) -> float:
            return float(demand(total).sum() - total)

        low, high = float(optimum.sum()), float(endowment.sum())
        if excess(high) >= 0:
            return demand(high)
        scan = low + np.geomspace((high - low) * 1e-12, high - low, _SCAN_POINTS)
        scan = np.concatenate([[low], scan])
        signs = np.array([excess(x) for x in scan]) >= 0
        j = int(np.flatnonzero(signs)[-1])
        root = brentq(excess, scan[j], scan[j + 1], xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        return demand(root)
