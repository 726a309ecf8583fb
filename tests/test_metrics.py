"""Headline metrics on hand-computed cases."""

import math

import numpy as np

from analysis.metrics import free_riding_rate, price_of_anarchy
from incentives.accuracy import PowerLaw, local_optimum
from incentives.equilibrium import social_optimum
from incentives.loop import IterationRecord
from incentives.population import Population
from mechanisms.contract import ContractMechanism, LogValue
from mechanisms.incfl import IncFLParticipation
from mechanisms.standard import StandardFL


def test_free_riding_counts_agents_below_their_local_optimum_by_half_a_sample():
    m_local = np.array([100.0, 100.0, 100.0, 50.0])
    assert free_riding_rate([0.0, 99.4, 99.6, 80.0], m_local) == 0.5
    assert free_riding_rate([0.0, 99.4, 99.6, 80.0], m_local, [False, True, True, True]) == 0.25  # 0 gets no model


def test_price_of_anarchy_is_a_ratio_and_infinite_without_surplus():
    assert price_of_anarchy(10.0, 8.0) == 1.25
    assert math.isinf(price_of_anarchy(10.0, 0.0))
    assert price_of_anarchy(0.0, 0.0) == 1.0  # nothing to gain, nothing lost (it said inf)
    assert price_of_anarchy(-2.0, -2.0) == 1.0 and math.isinf(price_of_anarchy(1e-9, 0.0))


def test_standard_fl_price_of_anarchy_grows_with_the_number_of_free_riders():
    """With N identical agents, standard FL collects m^o whatever N, while the planner
    collects the root of N a'(M) = c: the inefficiency grows with N."""
    model = PowerLaw(1.0, 1.0, 0.5)
    ratios = []
    for n in (2, 10):
        agents = Population.from_lists(cost=[1e-4] * n, endowment=1e7)
        outcome = StandardFL().solve(agents, model)
        surplus = n * model(outcome.total) - 1e-4 * outcome.total
        ratios.append(price_of_anarchy(social_optimum(agents, model).welfare, surplus))
    m_o = local_optimum(np.array([1e-4]), np.array([1.0]), model)[0]
    assert abs(StandardFL().solve(Population.from_lists(cost=[1e-4] * 10, endowment=1e7), model).total - m_o) < 1e-6
    assert 1.0 < ratios[0] < ratios[1]


def delivered(outcome, trained) -> int:
    """How many agents a record of ``outcome`` trained on ``trained`` samples delivers a model
    to (:attr:`IterationRecord.receives_model`; the fields it does not read left empty)."""
    record = IterationRecord(0, outcome, None, np.asarray(trained, dtype=np.int64), None, None, None, None, None)
    return int(np.count_nonzero(record.receives_model))


def test_models_delivered_counts_the_agents_who_receive_a_model():
    model = PowerLaw(1.0, 1.0, 0.5)
    agents = Population.from_lists(cost=[1e-4] * 4, endowment=1e6, comm_cost=[0.0, 0.0, 0.027, 0.03])
    standard = StandardFL().solve(agents, model)
    assert delivered(standard, np.round(standard.contributions)) == 4  # free riders get the global model too
    assert delivered(standard, [0, 0, 0, 0]) == 0  # nothing trained: no model to deliver
    incfl = IncFLParticipation().solve(agents, model)
    assert delivered(incfl, np.round(incfl.contributions)) == 2  # two of four leave
    np.testing.assert_array_equal(incfl.served_targets, [np.nan, np.nan, 0.0, 0.0])  # the global model, or none
    assert standard.served_targets is None  # everyone in: the global model for all
    paid = Population.from_lists(cost=[0.03, 0.02, 0.01, 0.02], endowment=[50.0, 50.0, 200.0, 50.0])
    money = ContractMechanism(LogValue(10.0)).solve(paid, model)  # the server keeps the model
    assert money.participates.all() and delivered(money, np.round(money.contributions)) == 0
