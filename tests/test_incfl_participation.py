"""IncFL's federate-or-not participation: iterated exit, and IncFL as a mechanism of the closed loop."""

import numpy as np
import pytest

from incentives.accuracy import EffectiveData, PowerLaw
from incentives.participation import participation_equilibrium
from incentives.population import Population
from mechanisms.incfl import IncFLParticipation

TOY = PowerLaw(1.0, 1.0, 0.5)  # a(m) = 1 - m^(-1/2)
M_O = (0.5 / 1e-4) ** (2 / 3)  # 292.40 samples, each agent's local optimum at c = 1e-4


def test_exits_are_iterated_until_nobody_leaves():
    """Four agents holding m^o = 292.40 each (local accuracy 0.94152); all in, the model
    has a(1169.6) = 0.97076, a gain of 0.02924 before communication costs (0, 0, 0.027,
    0.03): agent 3 leaves. Without it a(877.2) = 0.96624, a gain of 0.02472 < 0.027:
    agent 2 leaves. Agents 0 and 1 stay with a(584.8) = 0.95865 (gain 0.01713 > 0)."""
    population = Population.from_lists(cost=[1e-4] * 4, endowment=1e6, comm_cost=[0.0, 0.0, 0.027, 0.03])
    outcome = IncFLParticipation().solve(population, TOY)
    assert TOY(4 * M_O) - TOY(M_O) == pytest.approx(0.02924, abs=5e-6)
    assert TOY(3 * M_O) - TOY(M_O) == pytest.approx(0.02472, abs=5e-6)
    assert outcome.participates.tolist() == [True, True, False, False]
    np.testing.assert_allclose(outcome.contributions, [M_O, M_O, 0.0, 0.0], rtol=1e-12)
    assert outcome.accuracy[0] == pytest.approx(0.95865, abs=5e-6)
    assert outcome.accuracy[2:].tolist() == [0.0, 0.0]
    assert outcome.info["trainings"] == 3
    np.testing.assert_allclose(outcome.info["local_accuracy"], TOY(M_O))
    assert outcome.transfer.tolist() == [0.0] * 4 and outcome.delivery_target is None


def test_an_agent_without_data_of_its_own_stays_out():
    population = Population.from_lists(cost=[1e-4, 1e-4, 10.0], endowment=1e6)  # m^o = (292.4, 292.4, 0)
    outcome = IncFLParticipation().solve(population, TOY)
    assert outcome.participates.tolist() == [True, True, False]
    assert outcome.contributions[2] == 0.0 and outcome.accuracy[2] == 0.0
    # a lone holder gains nothing over its own model (g = 0) and stays out too
    alone = IncFLParticipation().solve(Population.from_lists(cost=[1e-4, 10.0], endowment=1e6), TOY)
    assert not alone.participates.any()


def test_the_rule_serves_contributors_only_and_prices_nothing():
    population = Population.from_lists(cost=[1e-4] * 3, endowment=1e6)
    allocation = IncFLParticipation().allocate([100.0, 0.0, 300.0], population, TOY)
    np.testing.assert_allclose(allocation.accuracy, [TOY(400.0), 0.0, TOY(400.0)])
    assert allocation.transfer.tolist() == [0.0] * 3
    assert allocation.takes_part.tolist() == [True, False, True]  # no model: out, at its outside option
    assert IncFLParticipation().aggregation == "incfl"


def test_an_outside_option_above_training_alone_is_what_joining_must_beat():
    """Local utility at m^o: 0.94152 - 1e-4 * 292.40 = 0.91228. Agent 3's outside option
    0.95 needs a(M_S) > 0.95 + 0.02924 = 0.97924; all in, a(1169.6) = 0.97076: it leaves
    (it used to join, its outside option ignored). The three others keep a(877.2) =
    0.96624, worth 0.93700 to each, above their options 0 (below training alone) and
    0.91228 (training alone: the same decision as without an option)."""
    local_utility = TOY(M_O) - 1e-4 * M_O
    assert local_utility == pytest.approx(0.91228, abs=5e-6)
    population = Population.from_lists(cost=[1e-4] * 4, endowment=1e6,
                                       outside_option=[0.0, local_utility, 0.5, 0.95])
    outcome = IncFLParticipation().solve(population, TOY)
    assert outcome.participates.tolist() == [True, True, True, False]
    assert outcome.accuracy[0] == pytest.approx(TOY(3 * M_O)) == pytest.approx(0.96624, abs=5e-6)
    assert outcome.info["trainings"] == 2
    np.testing.assert_allclose(outcome.info["local_accuracy"], TOY(M_O))


@pytest.mark.parametrize("gamma", [0.3, 0.6])
def test_under_a_calibrated_curve_the_local_model_is_on_the_agents_own_curve(gamma):
    """a(m) = base(gamma m), base = 1 - m^-1/2, two agents at c = 1e-4: each holds m^o =
    292.40 on the base curve, its own (local accuracy base(m^o) = 0.94152), and the
    federation's 2 m^o samples are worth base(2 gamma m^o). With gamma = 0.3 that is
    base(175.44) = 0.92450 < 0.94152: both stay out (gamma M_S <= m^o); with gamma = 0.6,
    base(350.88) = 0.94662 > 0.94152: both join. (Scored on a(m^o) = base(gamma m^o), the
    local model would look worse and both would join at gamma = 0.3.)"""
    model = EffectiveData(TOY, gamma)
    outcome = IncFLParticipation().solve(Population.from_lists(n_agents=2, cost=1e-4, endowment=1e6), model)
    joins = bool(TOY(gamma * 2 * M_O) > TOY(M_O))
    assert joins == (gamma * 2 * M_O > M_O) == (gamma == 0.6)
    assert outcome.participates.tolist() == [joins, joins]
    np.testing.assert_allclose(outcome.info["local_accuracy"], TOY(M_O), rtol=1e-12)
    np.testing.assert_allclose(outcome.accuracy, TOY(gamma * 2 * M_O) if joins else 0.0, rtol=1e-12)


def test_iterated_exit_reads_only_the_entries_of_the_agents_in_the_mask():
    """Training answers NaN for the agents outside its mask (no model is trained for
    them). Local models 0.5 each: all in, the model gives (0.6, 0.6, 0.5), agent 2 gains
    0 and leaves; without it (0.7, 0.7, NaN): agents 0 and 1 gain 0.2 and stay."""
    def received_for(mask):
        return np.where(mask, [0.6, 0.6, 0.5] if mask.all() else 0.7, np.nan)

    settled = participation_equilibrium(received_for, [0.5, 0.5, 0.5])
    assert settled.participates.tolist() == [True, True, False]
    np.testing.assert_array_equal(settled.received, [0.7, 0.7, np.nan])
    np.testing.assert_allclose(settled.gain, [0.2, 0.2, np.nan], rtol=1e-12)
    assert [mask.tolist() for mask in settled.history] == [[True] * 3, [True, True, False]]


def test_participation_needs_at_least_one_agent():
    with pytest.raises(ValueError, match=r"^local has shape \(0,\): allowed is \(N,\), one value per agent, N >= 1$"):
        participation_equilibrium(lambda mask: mask, [])
