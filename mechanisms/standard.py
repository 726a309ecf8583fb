"""Standard federated learning: no mechanism.

Every agent that takes part receives the global model, trained on all contributed data,
whatever it contributed itself, and no money changes hands:

    a_i = a(M),  t_i = 0,  M = sum_j m_j.

Karimireddy, Guo & Jordan (2022, arXiv:2207.04557) show that this invites catastrophic
free-riding: at the Nash equilibrium the total data is what the single most eager agent
would collect on its own, however many agents there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from incentives.accuracy import AccuracyModel, local_optimum
from incentives.equilibrium import settle_participation
from incentives.population import Population
from incentives.protocols import Allocation, Outcome


@dataclass(frozen=True)
class StandardFL:
    """Everyone receives a(M); no transfers; the server delivers the global model (no target)."""

    name = "standard"

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        m = population.check_contributions(contributions)
        accuracy = np.full(population.n_agents, model(m.sum()))
        return Allocation(accuracy=accuracy, transfer=np.zeros(population.n_agents))

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """Closed-form Nash equilibrium, agents who would rather stay out removed.

        Agent i's best response to the others' total M_{-i} is
        m_i = clip(m_i^o - M_{-i}, 0, n_i), where m_i^o solves v_i a'(m) = c_i
        (:func:`~incentives.accuracy.local_optimum` without the endowment cap). Sorting agents
        by m_i^o in decreasing order and letting each add min(n_i, m_i^o - M) while
        m_i^o > M gives a profile where every agent best-responds: only the last
        contributor is uncapped, it brings M up to its own m^o, and every later agent has
        m^o <= M. Uncapped, M equals the largest m_i^o (the agent with the smallest
        c_i / v_i) for any N; the others free-ride on a(M). Linear phi; the profile is
        exact whenever a(M_{-i}) > 0 for every contributor (check with
        :func:`~incentives.equilibrium.verify_equilibrium`).
        """
        participation = settle_participation(
            lambda pop: _nash_contributions(pop, model), self, population, model
        )
        m = participation.contributions
        info = {
            "total": float(m.sum()),
            "free_riders": int(np.sum(participation.participates & (m == 0))),
        }
        return Outcome(
            mechanism=self.name,
            contributions=m,
            accuracy=participation.accuracy,
            transfer=participation.transfer,
            delivery_target=None,
            participates=participation.participates,
            info=info,
        )


def _nash_contributions(population: Population, model: AccuracyModel) -> np.ndarray:
    """The greedy equilibrium profile described in :meth:`StandardFL.solve`."""
    optimum = np.asarray(local_optimum(population.cost, population.value, model), dtype=float).reshape(-1)
    m = np.zeros(population.n_agents)
    total = 0.0
    for i in np.argsort(-optimum, kind="stable"):
        if optimum[i] <= total:
            break
        m[i] = min(population.endowment[i], optimum[i] - total)
        total += m[i]
    return m
