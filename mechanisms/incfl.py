"""IncFL in the closed loop: agents federate only when the global model beats their own.

Cho, Jhunjhunwala, Li, Smith & Joshi (2022), "To Federate or Not To Federate:
Incentivizing Client Participation in Federated Learning" (arXiv:2205.14840). A client
keeps its local-only model unless the global model serves it better; the server
aggregates with IncFL's weights (``fl.algorithms.incfl``) to raise the share of clients
it serves better.

In the economic model agent i holds the data it would collect to train alone, m_i^o
(:func:`~incentives.utility.local_contribution`, under the population's data costs), and
its local model has accuracy a_alone(m_i^o), a_alone the model's curve for an agent
training alone (``model.alone``: a(m) itself, or the base curve of a federation's curve
calibrated to its training, a(m) = base(gamma m), :class:`~incentives.accuracy.EffectiveData`).
Taking part, it contributes those samples and receives the global model trained on the
participants' data, of accuracy a(M_S). It collects the data either way, so the data's
cost cancels and agent i takes part iff
(:func:`~incentives.participation.participation_gain`)

    g_i = v_i (a(M_S) - a_alone(m_i^o)) - comm_i > 0,      M_S = sum_{j in S} m_j^o.

An agent whose ``outside_option`` r_i beats training alone, r_i > v_i a_alone(m_i^o) - c_i
(m_i^o)^beta, compares the federation with r_i instead: it joins iff
v_i a(M_S) - c_i (m_i^o)^beta - comm_i > r_i, i.e. a_alone(m_i^o) above is replaced by the
accuracy that would match r_i, (r_i + c_i (m_i^o)^beta) / v_i.

A model trained on fewer agents may no longer beat the local models of those who stay,
so exits are iterated until nobody leaves
(:func:`~incentives.participation.participation_equilibrium`). An agent with
m_i^o = 0 has no data to bring and stays out.

The rule (``allocate``): every contributing agent (m_i > 0) receives a(M), no money
changes hands, and an agent contributing nothing receives no model: it does not take
part and keeps its outside option. It does not price
contributions, so the audit will find that any participant gains by contributing less
(a(M) barely moves, its cost falls). The loop scores an agent who stays out at its
``outside_option``, as it does for every mechanism; with ``ClosedLoop(train_alone=True)``
(``population.outside_option = "train_alone"`` in a config) that is the utility of the
local model it keeps, as the paper's clients keep theirs.

The global model is the same for everyone. Where a_alone = a (an uncalibrated fit), it is
trained on more data than any participant's local model and, where a rises, beats it as
soon as two agents take part, so only communication costs and outside options above
training alone make agents leave; a lone agent gains nothing (g_i = -comm_i <= 0) and,
indifferent at best, stays out. Under a calibrated a(m) = base(gamma m) the federation's M_S samples
are worth gamma M_S of an agent's own: with gamma < 1 an agent without communication
costs or a better outside option leaves once gamma M_S <= m_i^o, so those holding the
most data leave first, and a small enough gamma empties the federation.

Real training is where label skew shows: the loop trains with IncFL's
aggregation (``aggregation = "incfl"``), which also trains every agent's local-only
model (as each point of the pilot curve is trained, ``fl.oracle``: the same training
alone as a_alone's); the share of participants whose delivered model beats their own local model
on their own distribution is the realised incentivised share
(``analysis.metrics.summarise``), and the audit flags every participant whose realised
utility falls short of its local-only utility under the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from incentives.accuracy import AccuracyModel
from incentives.participation import participation_equilibrium
from incentives.population import Population, check_world
from incentives.protocols import Allocation, Outcome, settings_of
from incentives.utility import local_contribution


@dataclass(frozen=True)
class IncFLParticipation:
    """Federate or not (see the module docstring); trained with IncFL's aggregation."""

    name = "incfl"
    aggregation = "incfl"
    uses_reported_costs = False  # each agent decides alone; nothing is reported

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        """a_i = a(M) for every agent with m_i > 0; the others do not take part (no
        model: their outside option); no transfers."""
        m = population.check_contributions(contributions)
        accuracy = np.where(m > 0, model(m.sum()), 0.0)
        return Allocation(accuracy=accuracy, transfer=np.zeros(population.n_agents), takes_part=m > 0)

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """The agents who stay when exits settle, each contributing m_i^o (linear phi)."""
        check_world(population, model)
        held = local_contribution(population, model)
        local = np.asarray(model.alone(held), dtype=float)
        held_cost = population.data_cost(held)  # paid either way; joining must beat max(local utility, option)
        settled = participation_equilibrium(
            lambda members: np.full(population.n_agents, model(held[members].sum())),
            np.maximum(local, (population.outside_option + held_cost) / population.value),
            value=population.value, comm_cost=population.comm_cost,
        )
        inside = settled.participates & (held > 0)
        m = np.where(inside, held, 0.0)
        return Outcome(
            mechanism=self.name,
            contributions=m,
            accuracy=np.where(inside, model(m.sum()), 0.0),
            transfer=np.zeros(population.n_agents),
            delivery_target=None,
            participates=inside,
            info={
                "total": float(m.sum()),
                "local_accuracy": local,
                "trainings": len(settled.history),
            },
            settings=settings_of(self),
        )
