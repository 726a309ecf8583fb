"""Every mechanism refuses a bad setting when it is built, before any pilot training, and
bad contributions when it allocates, with one error naming the key, the value and what is
allowed."""

import numpy as np
import pytest

from incentives.accuracy import PowerLaw
from incentives.population import Population
from mechanisms.contract import ContractMechanism
from mechanisms.incfl import IncFLParticipation
from mechanisms.shaping import AccuracyShaping
from mechanisms.shapley import ShapleyRewards
from mechanisms.stackelberg import StackelbergPricing
from mechanisms.standard import StandardFL


@pytest.mark.parametrize("build, message", [
    (lambda: ContractMechanism(information="partial"), "information='partial': allowed is 'incomplete' or 'complete'"),
    (lambda: ContractMechanism(form="pairs"), "form='pairs': allowed is 'reduced', 'all_pairs' or 'closed_form'"),
    (lambda: ContractMechanism(reward="gold"), "reward='gold': allowed is 'money' or 'accuracy'"),
    (lambda: ContractMechanism(reward_price=-0.5), "reward_price=-0.5: allowed is a finite number > 0"),
    (lambda: ContractMechanism(solver="NOPE"), "solver='NOPE': allowed is one of"),
    (lambda: ContractMechanism(respect_endowment="no"), "respect_endowment='no': allowed is True or False"),
    (lambda: ContractMechanism(include_local=1), "include_local=1: allowed is True or False"),
    (lambda: ContractMechanism("log"), "value='log': allowed is a ValueFunction or 'accuracy'"),
    (lambda: ContractMechanism("accuracy", value_weight=0), "value_weight=0: allowed is a finite number > 0"),
    (lambda: StackelbergPricing(budget=-1), "budget=-1: allowed is None or a finite number >= 0"),
    (lambda: StackelbergPricing(reward="7"), "reward='7': allowed is None or a finite number >= 0"),
    (lambda: StackelbergPricing(value=None), "value=None: allowed is a ValueFunction or 'accuracy'"),
    (lambda: ShapleyRewards(budget=-1), "budget=-1: allowed is a finite number >= 0"),
    (lambda: ShapleyRewards(budget=1, estimator="bogus"), "estimator='bogus': allowed is one of exact, monte_carlo"),
    (lambda: ShapleyRewards(budget=1, n_permutations=0), "n_permutations=0: allowed is an integer >= 1"),
    (lambda: AccuracyShaping(epsilon=-1), "epsilon=-1: allowed is a finite number >= 0"),
])
def test_bad_settings_are_refused_when_built(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value).startswith(message)


def test_good_settings_build():
    assert ContractMechanism("accuracy", reward="accuracy", information="complete", form="all_pairs").name == "contract"
    assert StackelbergPricing(reward=7, budget=None).name == "stackelberg"
    assert ShapleyRewards(budget=0.0, estimator="gtg").name == "shapley"


@pytest.mark.parametrize("mechanism", [
    StandardFL(), AccuracyShaping(), ShapleyRewards(budget=1.0), ContractMechanism(),
    ContractMechanism("accuracy", reward="accuracy"), StackelbergPricing(), IncFLParticipation(),
], ids=lambda m: f"{m.name}-{getattr(m, 'reward', '')}")
@pytest.mark.parametrize("contributions, message", [
    ([10.0, np.nan, 10.0], r"contributions\[1\]=nan: allowed is 0 <= m <= endowment\[1\]=100.0"),
    ([-1.0, 2.0, 3.0], r"contributions\[0\]=-1.0: allowed is 0 <= m"),
    ([1.0, 2.0], r"contributions has shape \(2,\): allowed is \(3,\), one per agent"),
])
def test_every_mechanism_refuses_bad_contributions_in_allocate(mechanism, contributions, message):
    agents = Population.from_lists(cost=[1e-3, 2e-3, 3e-3], endowment=100.0)
    with pytest.raises(ValueError, match=f"^{message}"):
        mechanism.allocate(contributions, agents, PowerLaw(1.0, 1.0, 0.5))
