"""Every mechanism refuses a bad setting when it is built, before any pilot training,
with one error naming the key, the value and what is allowed."""

import pytest

from mechanisms.contract import ContractMechanism
from mechanisms.shaping import AccuracyShaping
from mechanisms.shapley import ShapleyRewards
from mechanisms.stackelberg import StackelbergPricing


@pytest.mark.parametrize("build, message", [
    (lambda: ContractMechanism(information="partial"), "information='partial': allowed is 'incomplete' or 'complete'"),
    (lambda: ContractMechanism(form="pairs"), "form='pairs': allowed is 'reduced', 'all_pairs' or 'closed_form'"),
    (lambda: ContractMechanism(reward="gold"), "reward='gold': allowed is 'money' or 'accuracy'"),
    (lambda: ContractMechanism(reward_price=-0.5), "reward_price=-0.5: allowed is a finite number >= 0"),
    (lambda: ContractMechanism(solver="NOPE"), "solver='NOPE': allowed is one of"),
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
