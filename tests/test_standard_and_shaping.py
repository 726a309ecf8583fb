import warnings

import numpy as np
import pytest

from incentives.accuracy import EffectiveData, GeneralisationBound, PowerLaw, local_optimum
from incentives.equilibrium import Equilibrium, best_response, nash_equilibrium, verify_equilibrium
from incentives.population import Population
from incentives.protocols import Mechanism
from incentives.utility import local_utility, utility
from mechanisms.shaping import AccuracyShaping
from mechanisms import standard
from mechanisms.standard import StandardFL

TOY = PowerLaw(1.0, 1.0, 0.5)  # a(m) = 1 - m^(-1/2)
COST = 1e-4


def identical(n, endowment=1e9):
    return Population.from_lists(n_agents=n, cost=COST, endowment=endowment)


def realised_utility(pop, outcome):
    return utility(pop, outcome.accuracy, outcome.contributions, outcome.transfer, outcome.participates)


# ----------------------------------------------------------------- the worked example
def test_local_optimum_of_worked_example():
    m_o = local_optimum(COST, 1.0, TOY)
    assert m_o == pytest.approx(292.40, abs=5e-3)
    assert TOY(m_o) == pytest.approx(0.94152, abs=5e-6)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_standard_fl_total_is_one_agents_optimum_for_any_n(n):
    pop = identical(n)
    outcome = StandardFL().solve(pop, TOY)
    assert outcome.total == pytest.approx(292.40, abs=5e-3)
    np.testing.assert_allclose(outcome.accuracy, TOY(outcome.total))
    assert outcome.delivery_target is None and np.all(outcome.participates)
    assert outcome.info["free_riders"] == n - 1
    np.testing.assert_array_equal(outcome.transfer, 0.0)
    assert verify_equilibrium(StandardFL(), outcome.contributions, pop, TOY).ok


@pytest.mark.parametrize("n, each, total, accuracy", [(2, 584.80, 1169.61, None), (10, 762.70, 7627.0, 0.98855)])
def test_accuracy_shaping_worked_example(n, each, total, accuracy):
    pop = identical(n)
    outcome = AccuracyShaping().solve(pop, TOY)
    np.testing.assert_allclose(outcome.contributions, each, atol=5e-3)
    assert outcome.total == pytest.approx(total, abs=1e-2)
    if accuracy is not None:
        assert outcome.info["global_accuracy"] == pytest.approx(accuracy, abs=5e-6)
    # everyone is shaped up to the global model, and gets exactly its local-only utility
    np.testing.assert_allclose(outcome.accuracy, TOY(outcome.total), rtol=1e-12)
    np.testing.assert_allclose(outcome.delivery_target, outcome.accuracy)
    np.testing.assert_allclose(realised_utility(pop, outcome), local_utility(pop, TOY), atol=1e-12)


def test_standard_fl_free_riders_are_participants_contributing_nothing():
    """Four identical agents; agent 3's communication cost 2 exceeds anything the global
    model is worth to it (a <= 1), so it stays out: one agent contributes m^o, two take
    the model for nothing (free riders), and the one outside is no free rider."""
    pop = Population.from_lists(cost=[COST] * 4, endowment=1e6, comm_cost=[0.0, 0.0, 0.0, 2.0])
    outcome = StandardFL().solve(pop, TOY)
    assert outcome.participates.tolist() == [True, True, True, False]
    assert np.count_nonzero(outcome.contributions) == 1 and outcome.total == pytest.approx(292.40, abs=5e-3)
    assert outcome.info["free_riders"] == 2


def test_standard_fl_an_agent_that_loses_alone_contributes_once_another_has_trained_a_model():
    """a(m) = 1 - m^-1/2 (zero crossing 1). Agent 0 is eager but holds 1.2 samples; agent 1
    (c = 0.3) loses training alone, so its local optimum is 0 and the closed form used to
    leave it out. Given agent 0's 1.2 samples it tops the total up to its root of
    a'(m) = 0.3, m* = (0.5 / 0.3)^(2/3), gaining (a(m*) - a(1.2)) - 0.3 (m* - 1.2) = 0.0077."""
    model = PowerLaw(1.0, 1.0, 0.5)
    agents = Population(cost=[0.01, 0.3], endowment=[1.2, 100.0])
    assert local_optimum(agents.cost, agents.value, model)[1] == 0.0
    root = (0.5 / 0.3) ** (2 / 3)
    outcome = StandardFL().solve(agents, model)
    np.testing.assert_allclose(outcome.contributions, [1.2, root - 1.2], rtol=1e-7)
    gain = model(root) - model(1.2) - 0.3 * (root - 1.2)
    assert gain > 0.007  # what agent 1 gains over contributing nothing
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, model).ok


def test_standard_fl_convex_costs_a_contributor_better_off_contributing_nothing_is_not_left_there():
    """Convex costs c m^2, agent 1 holding 0.01 samples: the first-order profile had agent
    0 at 1.195 samples, where a(M) - 0.158 m^2 < a(M - m) = 0: with an outside option of
    -1 (so nobody leaves) it was returned although agent 0 gains 0.137 by contributing nothing."""
    model = PowerLaw(1.0, 1.0, 0.5)
    agents = Population(cost=[0.158, 1.0], endowment=[100.0, 0.01], outside_option=[-1.0, -1.0],
                        cost_exponent=2.0)
    outcome = StandardFL().solve(agents, model)
    check = verify_equilibrium(StandardFL(), outcome.contributions, agents, model, participates=outcome.participates)
    assert check.ok and outcome.contributions.sum() < 1e-5


def test_two_agents_shaping_doubles_the_local_optimum():
    # with a = 1 - m^(-1/2), c = 1e-4: m = m^o + (a(2m) - a(m^o)) / c holds at m = 2 m^o exactly
    outcome = AccuracyShaping().solve(identical(2), TOY)
    np.testing.assert_allclose(outcome.contributions, 2 * local_optimum(COST, 1.0, TOY), rtol=1e-12)


def test_a_calibrated_federation_curve_leaves_training_alone_on_the_base_curve():
    """Under a(gamma m) (the loop's calibration), standard FL's total solves
    gamma a'(gamma M) = c: with gamma = 1/4, gamma M = (gamma / (2c))^(2/3) = 1250^(2/3),
    M = 464.16 by hand. Shaping (gamma = 3/4) starts every agent's line at its local
    optimum on the base curve (292.40, accuracy 0.94152), caps it at a(gamma M), and
    leaves each its local-only utility."""
    standard = StandardFL().solve(identical(3), EffectiveData(TOY, 0.25))
    assert standard.total == pytest.approx(1250 ** (2 / 3) / 0.25, rel=1e-9)
    assert standard.total == pytest.approx(464.16, abs=5e-3)
    pop, calibrated = identical(2), EffectiveData(TOY, 0.75)
    shaped = AccuracyShaping().solve(pop, calibrated)
    np.testing.assert_allclose(shaped.info["local_optimum"], 292.40, atol=5e-3)
    np.testing.assert_allclose(shaped.info["local_accuracy"], 0.94152, atol=5e-6)
    cap = calibrated(shaped.total)
    np.testing.assert_allclose(shaped.contributions, 292.40 + (cap - TOY(292.40)) / COST, rtol=1e-9)
    np.testing.assert_allclose(shaped.accuracy, cap, rtol=1e-12)
    np.testing.assert_allclose(realised_utility(pop, shaped), local_utility(pop, TOY), atol=1e-12)
    np.testing.assert_allclose(local_utility(pop, calibrated), local_utility(pop, TOY))


def test_the_fallback_root_finder_reaches_an_exact_equilibrium_of_ten_agents():
    """Ten agents under a federation curve far below training alone (gamma = 0.087):
    the fixed point leaves gains of 0.42, and the root of BR(m) - m used to be sought with
    a finite-difference Jacobian, which failed from both starts and warned. Each BR_i
    depends on the others' total alone, so the Jacobian is BR_i'(M_-i) off the diagonal
    and -1 on it; with it the root leaves no gain above 1e-9."""
    r = np.random.default_rng(6)  # the draws of a scratch sweep's game 6
    n = int(r.choice([3, 5, 10, 30, 100]))
    base = PowerLaw(0.9, float(r.uniform(1, 10)), float(r.uniform(0.3, 1.2)))
    gamma = float(np.exp(r.uniform(np.log(0.02), np.log(1.0))))
    population = Population.from_lists(cost=r.lognormal(-7, float(r.uniform(0.1, 2)), n),
                                       endowment=r.uniform(5, 600, n))
    assert n == 10 and gamma == pytest.approx(0.0866, abs=1e-4)
    model, mechanism = EffectiveData(base, gamma), AccuracyShaping()
    fixed_point = mechanism._contributions(population, mechanism._rule(population, model))
    assert mechanism.deviation_gains(fixed_point, population, model).max() > 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = mechanism.solve(population, model)
    assert mechanism.deviation_gains(outcome.contributions, population, model).max() <= 1e-9


def test_shaping_never_promises_more_than_a_federation_weaker_than_training_alone():
    """Three agents, a(M) = base(0.3 M): the federation is worth less than training alone
    (the old rule still gave the alone curve below m^o and a(M) above it: agent 0 gained
    0.0568 by contributing a little less than its m^o = 149). Now a_i = min(a(M), own_i),
    and by hand: agents 1 and 2 stop where their own curve meets a(M), m_i = 0.3 M;
    agent 0 is on the global curve, 0.3 base'(0.3 M) = c_0, so 0.3 M = (k alpha 0.3 /
    c_0)^(1 / (1 + alpha)) = 900^0.625 = 70.21 and m_0 = M - 2 (0.3 M) = 93.61."""
    base, gamma = PowerLaw(0.9, 5.0, 0.6), 0.3
    pop = Population.from_lists(cost=[1e-3, 2e-3, 3e-3], endowment=[500.0, 500.0, 500.0])
    model = EffectiveData(base, gamma)
    shaped = AccuracyShaping().solve(pop, model)
    effective = (5.0 * 0.6 * gamma / 1e-3) ** (1 / 1.6)
    np.testing.assert_allclose(shaped.contributions, [effective / gamma - 2 * effective, effective, effective],
                               rtol=1e-12)
    assert np.round(shaped.contributions, 2).tolist() == [93.61, 70.21, 70.21]
    assert np.all(shaped.accuracy <= model(shaped.total) + 1e-12)  # no promise above the global model
    assert verify_equilibrium(AccuracyShaping(), shaped.contributions, pop, model).ok
    assert np.all(AccuracyShaping().deviation_gains(shaped.contributions, pop, model) <= 1e-12)
    allocation = AccuracyShaping().allocate(np.array([140.0, 0.0, 0.0]), pop, model)
    assert allocation.accuracy[0] == pytest.approx(model(140.0))  # below m^o: alone, capped by a(M)
    far_weaker = AccuracyShaping().solve(pop, EffectiveData(base, 0.1))  # nobody gains by federating
    np.testing.assert_array_equal(far_weaker.contributions, 0.0)


def test_a_deviation_to_where_the_agents_own_curve_meets_the_federations_is_found():
    """base = PowerLaw(0.9, 5, 0.6), a(M) = base(M / 4); agent 0 (m^o = 150: c = base'(150),
    n_0 = 200) holds m_0 = 150 while the others hold 300. Below m^o it gets
    min(base(x), base((300 + x) / 4)): the two meet at x* = 300 / 3 = 100, and past it the
    federation's curve rises at base'(x*) / 4, slower than c, so x* is its best: by hand
    base(100) - 100 c against base(112.5) - 150 c now, a gain of 0.0279. (The check
    used to compare only 0, n_i, m^o and where a' = c, and reported no gain.)"""
    base = PowerLaw(0.9, 5.0, 0.6)
    cost = 5.0 * 0.6 * 150.0 ** -1.6
    pop = Population.from_lists(cost=[cost, 1e-2], endowment=[200.0, 300.0])
    gains = AccuracyShaping().deviation_gains([150.0, 300.0], pop, EffectiveData(base, 0.25))
    expected = base(100.0) - 100.0 * cost - (base(112.5) - 150.0 * cost)
    assert gains[0] == pytest.approx(expected, rel=1e-9)
    assert round(float(gains[0]), 4) == 0.0279


# ----------------------------------------------------------------- closed forms vs iteration
HETEROGENEOUS = Population.from_lists(
    cost=[1e-4, 1.5e-4, 3e-4, 5e-4], endowment=[1e9, 800.0, 1e9, 1e9], value=[1.0, 2.0, 1.0, 0.5]
)


@pytest.mark.parametrize("mechanism", [StandardFL(), AccuracyShaping(), AccuracyShaping(epsilon=2e-5)])
def test_closed_forms_are_equilibria_and_match_best_response_iteration(mechanism):
    outcome = mechanism.solve(HETEROGENEOUS, TOY)
    assert verify_equilibrium(mechanism, outcome.contributions, HETEROGENEOUS, TOY).ok
    iterated = nash_equilibrium(mechanism, HETEROGENEOUS, TOY)
    assert iterated.converged
    np.testing.assert_allclose(iterated.contributions, outcome.contributions, rtol=1e-5, atol=1e-2)


def test_shaping_with_the_generalisation_bound_is_an_equilibrium():
    model = GeneralisationBound(0.95, 2.0)
    pop = Population.from_lists(cost=[1e-5, 2e-5, 4e-5], endowment=1e8)
    outcome = AccuracyShaping().solve(pop, model)
    assert verify_equilibrium(AccuracyShaping(), outcome.contributions, pop, model).ok
    assert outcome.total > StandardFL().solve(pop, model).total
    np.testing.assert_allclose(realised_utility(pop, outcome), local_utility(pop, model), atol=1e-12)


# ----------------------------------------------------------------- heterogeneity and caps
def test_standard_fl_only_the_cheapest_contribute():
    pop = Population.from_lists(cost=[3e-4, 1e-4, 2e-4, 1e-4], endowment=1e9)
    outcome = StandardFL().solve(pop, TOY)
    assert np.all(outcome.contributions[[0, 2]] == 0.0)
    assert outcome.total == pytest.approx(local_optimum(1e-4, 1.0, TOY))
    assert outcome.contributions[1] + outcome.contributions[3] == pytest.approx(outcome.total)


def test_standard_fl_capped_cheapest_agent_is_topped_up_by_the_next():
    pop = Population.from_lists(cost=[1e-4, 2e-4], endowment=[100.0, 1e9])
    outcome = StandardFL().solve(pop, TOY)
    np.testing.assert_allclose(outcome.contributions, [100.0, local_optimum(2e-4, 1.0, TOY) - 100.0])
    assert verify_equilibrium(StandardFL(), outcome.contributions, pop, TOY).ok


@pytest.mark.parametrize("seed", range(5))
def test_shaping_collects_at_least_as_much_as_standard_fl(seed):
    pop = Population.sample(
        8,
        {
            "cost": {"dist": "lognormal", "mean": -9.0, "sigma": 0.8},
            "endowment": {"dist": "uniform", "low": 100, "high": 3000},
            "value": {"dist": "uniform", "low": 0.5, "high": 2.0},
        },
        seed=seed,
    )
    shaped = AccuracyShaping().solve(pop, TOY)
    standard = StandardFL().solve(pop, TOY)
    assert shaped.total >= standard.total - 1e-9
    assert np.all(shaped.contributions <= pop.endowment) and np.all(standard.contributions <= pop.endowment)
    assert np.all(realised_utility(pop, shaped) >= local_utility(pop, TOY) - 1e-12)  # individually rational
    assert verify_equilibrium(AccuracyShaping(), shaped.contributions, pop, TOY).ok


def test_shaping_when_everyone_is_capped():
    pop = identical(10, endowment=300.0)
    outcome = AccuracyShaping().solve(pop, TOY)
    np.testing.assert_array_equal(outcome.contributions, 300.0)
    assert np.all(outcome.accuracy <= TOY(3000.0))
    assert verify_equilibrium(AccuracyShaping(), outcome.contributions, pop, TOY).ok


def test_positive_epsilon_trades_data_for_strict_incentives():
    pop = identical(10)
    strict = AccuracyShaping(epsilon=1e-5).solve(pop, TOY)
    assert StandardFL().solve(pop, TOY).total < strict.total < AccuracyShaping().solve(pop, TOY).total
    assert np.all(realised_utility(pop, strict) > local_utility(pop, TOY))


def test_shaping_allocation_rule():
    pop = identical(2)
    m_o = local_optimum(COST, 1.0, TOY)
    allocation = AccuracyShaping().allocate(np.array([100.0, m_o + 10.0]), pop, TOY)
    assert allocation.accuracy[0] == pytest.approx(TOY(100.0))  # below m^o: no more than alone
    assert allocation.accuracy[1] == pytest.approx(TOY(m_o) + COST * 10.0)  # on the shaping line
    allocation = AccuracyShaping().allocate(np.array([0.0, 1e6]), pop, TOY)
    assert allocation.accuracy[1] == pytest.approx(TOY(1e6))  # capped by the global model
    np.testing.assert_array_equal(allocation.transfer, 0.0)


def test_shaping_line_with_epsilon_earns_c_over_v_plus_epsilon_per_sample():
    """Above m^o the line rises by c_i / v_i + epsilon a sample: with epsilon = 1e-5 and
    v = 1, m^o + 10 gets a(m^o) + (1e-4 + 1e-5) * 10 = 0.94262 (below a(M)). At the
    equilibrium of 10 identical agents each contributes where its line meets a(M):
    m_i = m^o + (a(M) - a(m^o)) / (c + epsilon)."""
    epsilon = 1e-5
    pop = identical(2)
    m_o = local_optimum(COST, 1.0, TOY)
    allocation = AccuracyShaping(epsilon=epsilon).allocate(np.array([100.0, m_o + 10.0]), pop, TOY)
    assert allocation.accuracy[1] == pytest.approx(TOY(m_o) + (COST + epsilon) * 10.0, rel=1e-12)
    assert allocation.accuracy[1] < TOY(100.0 + m_o + 10.0)
    outcome = AccuracyShaping(epsilon=epsilon).solve(identical(10), TOY)
    np.testing.assert_allclose(outcome.contributions, m_o + (TOY(outcome.total) - TOY(m_o)) / (COST + epsilon),
                               rtol=1e-9)
    np.testing.assert_allclose(outcome.info["shaping_slope"], COST + epsilon, rtol=1e-15)


# ----------------------------------------------------------------- protocol and errors
@pytest.mark.parametrize("mechanism", [StandardFL(), AccuracyShaping()])
def test_mechanisms_satisfy_the_protocol_and_validate_contributions(mechanism):
    assert isinstance(mechanism, Mechanism)
    assert mechanism.solve(identical(2), TOY).mechanism == mechanism.name
    with pytest.raises(ValueError, match=r"contributions\[0\]=-1.0"):
        mechanism.allocate(np.array([-1.0, 0.0]), identical(2), TOY)


@pytest.mark.parametrize("mechanism", [StandardFL(), AccuracyShaping(), AccuracyShaping(epsilon=1e-4)])
def test_one_agents_share_under_many_profiles_is_what_allocate_gives_it(mechanism):
    """allocate_to (the equilibrium solvers value a grid in one call with it) gives agent i
    the numbers allocate gives it, profile by profile, and best responses and the
    equilibrium check come out the same as point by point, under a calibrated curve
    where shaping's min(a(M), own_i) binds on both sides."""
    rng = np.random.default_rng(0)
    population = Population.from_lists(cost=rng.uniform(5e-4, 3e-3, 6), endowment=rng.uniform(50.0, 400.0, 6))
    model = EffectiveData(PowerLaw(0.9, 5.0, 0.6), 0.3)
    profiles = rng.uniform(0.0, 1.0, (40, 6)) * population.endowment
    profiles[0] = 0.0
    for i in range(6):
        share = mechanism.allocate_to(i, profiles, population, model)
        one_by_one = [mechanism.allocate(profile, population, model) for profile in profiles]
        np.testing.assert_allclose(share.accuracy, [a.accuracy[i] for a in one_by_one], rtol=1e-15)  # M summed
        # row-wise instead of alone: the last bit may differ
        np.testing.assert_array_equal(share.transfer, 0.0)

    class PointByPoint:  # the same rule without allocate_to
        name, allocate = mechanism.name, mechanism.allocate

    profile = profiles[5]
    for i in range(6):
        fast = best_response(mechanism, i, profile, population, model)
        slow = best_response(PointByPoint(), i, profile, population, model)
        np.testing.assert_allclose([fast.contribution, fast.utility], [slow.contribution, slow.utility], rtol=1e-12)
    fast, slow = (verify_equilibrium(m, profile, population, model) for m in (mechanism, PointByPoint()))
    np.testing.assert_allclose(fast.gains, slow.gains, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"^profiles\[1\]\[0\]=-1.0: allowed is 0 <= m"):
        mechanism.allocate_to(0, [profile, profile - profile[0] - 1.0], population, model)


@pytest.mark.parametrize("epsilon", [-1.0, float("nan"), "0.1", True])
def test_bad_epsilon_is_rejected_when_the_mechanism_is_built(epsilon):
    with pytest.raises(ValueError, match=rf"^epsilon={epsilon!r}: allowed is a finite number >= 0$"):
        AccuracyShaping(epsilon=epsilon)



def _refuse_generic_iteration(*args, **kwargs):
    raise AssertionError("the generic best-response iteration was called")


def test_standard_fl_where_the_greedy_profile_fails_exact_best_responses_settle_it(monkeypatch):
    """300 agents of costs 0.05 U(0.5, 2), a(m) = 0.9 - 3 m^-0.6: nobody gains training
    alone and the greedy profile stops at a useless model, so the equilibrium came from
    the generic best-response iteration, O(N^2) a sweep. Exact best responses (0 against
    the first-order point beyond the zero crossing) give the same profile, nobody
    contributing, in one sweep, and the generic iteration is not called."""
    model = PowerLaw(0.9, 3.0, 0.6)
    rng = np.random.default_rng(0)
    agents = Population(cost=0.05 * rng.uniform(0.5, 2, 300), endowment=rng.uniform(5, 600, 300))
    monkeypatch.setattr(standard, "nash_equilibrium", _refuse_generic_iteration)
    outcome = StandardFL().solve(agents, model)
    np.testing.assert_array_equal(outcome.contributions, 0.0)
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, model).ok
    from mechanisms.standard import _linear_best_responses, _linear_cost_contributions, _linear_roots

    roots = _linear_roots(agents, model)
    greedy = _linear_cost_contributions(agents, roots)
    assert greedy.sum() > 0 and model(greedy.sum()) > 0  # a profile that is no equilibrium
    np.testing.assert_array_equal(_linear_best_responses(agents, model, roots, greedy), 0.0)


def test_standard_fl_shares_the_top_up_among_tied_agents_where_one_alone_would_rather_not():
    """a(m) = 0.9 - 2 m^-1/2 (zero crossing 4.94), costs (1e-5, 0.05, 0.05), endowments (3,
    1000, 1000): agent 0 brings its 3 samples, below the crossing, and the greedy profile
    has agent 1 top the total up to m^* = 20^(2/3) = 7.37 (a'(m^*) = 0.05), worth
    a(7.37) - 0.05 * 4.37 = -0.055 < a(3) = 0 to it; best responses from there left
    nobody contributing. Agents 1 and 2 are tied (the same c / v): with the top-up split,
    2.18 samples each, each gets 0.054 > a(5.18) = 0.022, an equilibrium where everyone
    contributes, which is returned. With a third tied agent capped at 0.5 samples the
    others share the rest (water-filling)."""
    model = PowerLaw(0.9, 2.0, 0.5)
    root = 20.0 ** (2 / 3)
    agents = Population(cost=[1e-5, 0.05, 0.05], endowment=[3.0, 1000.0, 1000.0])
    outcome = StandardFL().solve(agents, model)
    np.testing.assert_allclose(outcome.contributions, [3.0, (root - 3) / 2, (root - 3) / 2], rtol=1e-12)
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, model).ok
    np.testing.assert_array_less(0.05, realised_utility(agents, outcome))
    capped = Population(cost=[1e-5, 0.05, 0.05, 0.05], endowment=[3.0, 1000.0, 1000.0, 0.5])
    outcome = StandardFL().solve(capped, model)
    np.testing.assert_allclose(outcome.contributions, [3.0, (root - 3.5) / 2, (root - 3.5) / 2, 0.5], rtol=1e-12)
    assert verify_equilibrium(StandardFL(), outcome.contributions, capped, model).ok


def test_standard_fl_where_rounding_puts_every_tied_agent_a_hair_over_its_cap():
    """Three tied agents at their caps of 0.2 samples (a(m) = 1 - m^-1/2, zero crossing 1):
    the greedy profile is no equilibrium (the 0.6 samples train nothing), and its pool of
    0.6000000000000001 split three ways put every water-filling level one ulp above its cap,
    so the search for a level within the caps indexed an empty array (IndexError, from
    StackelbergPricing as well). Nobody contributes: the equilibrium, by hand (a(0.6) = 0)."""
    agents = Population(cost=[1e-3] * 3, endowment=[0.2] * 3)
    outcome = StandardFL().solve(agents, TOY)
    np.testing.assert_array_equal(outcome.contributions, 0.0)
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, TOY).ok


def test_standard_fl_best_responses_never_see_a_negative_total_of_the_others():
    """Gauss-Seidel best responses kept a running total; once agents 0-2 dropped to 0 the
    others' total of agent 3 came out -1.4e-14, which the accuracy model refused (ValueError
    m=-1.42e-14, from StackelbergPricing as well). Nobody contributes: agent 3 alone gets
    1.049 a(163.3) - 0.002 * 163.3 = -0.32 < 0 (zero crossing 158.9)."""
    model = PowerLaw(a_opt=0.7289291097484749, k=2.5701515164019875, alpha=0.24864495135326517)
    agents = Population(cost=[5.9293979469576554e-05, 0.06694109156821719, 0.0018197502333429554,
                              0.002022522472850973],
                        value=[2.7362528063813785, 1.2438382199918014, 0.5269472043750771, 1.0493148354272945],
                        endowment=[23.62906302278616, 2.8557140537257957, 6.953157846176436, 163.29363925714725])
    outcome = StandardFL().solve(agents, model)
    np.testing.assert_array_equal(outcome.contributions, 0.0)
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, model).ok
    alone = agents.value[3] * model(agents.endowment[3]) - agents.cost[3] * agents.endowment[3]
    assert alone == pytest.approx(-0.32, abs=0.01)


def test_standard_fl_gives_a_tied_top_up_to_the_agent_who_stays_in_paying_for_it():
    """Two agents of one cost, a(m) = 1 - m^-1/2 (m^* = 50^(2/3) = 13.57, a(m^*) = 0.7286), one
    with a communication cost of 0.7. The top-up went to the lowest index: agent 0 (comm 0.7)
    was at 0.7286 - 0.136 - 0.7 < 0 and left, and joining again made it the top-up again, so
    it stayed out; in the other order both took part. Both take part now, either way round:
    the agent without the cost tops up, the other free-rides at 0.7286 - 0.7 = 0.029 > 0."""
    root = 50.0 ** (2 / 3)
    for comm in ([0.7, 0.0], [0.0, 0.7]):
        agents = Population(cost=[0.01, 0.01], endowment=[1000.0, 1000.0], comm_cost=comm)
        outcome = StandardFL().solve(agents, TOY)
        assert outcome.participates.all()
        np.testing.assert_allclose(outcome.contributions, np.where(np.array(comm) > 0, 0.0, root), rtol=1e-12)
        assert verify_equilibrium(StandardFL(), outcome.contributions, agents, TOY,
                                  participates=outcome.participates).ok


def test_standard_fl_the_same_game_in_other_units_has_the_same_equilibrium():
    """The population above with v and c scaled together by s (every c_i / v_i, so every
    decision, unchanged). The check of the greedy profile (3, 4.37, 0) allowed an absolute
    1e-12 utility: from s = 1e-11 on, agent 1's loss of 0.055 v by topping up fell within
    it, and the greedy profile was returned, no equilibrium. The tolerance is 1e-12 v_i."""
    model = PowerLaw(0.9, 2.0, 0.5)
    root = 20.0 ** (2 / 3)
    for scale in (1e-14, 1e-11, 1e-6, 1.0, 1e6):
        agents = Population(cost=np.array([1e-5, 0.05, 0.05]) * scale, endowment=[3.0, 1000.0, 1000.0],
                            value=np.full(3, scale))
        contributions = StandardFL().solve(agents, model).contributions
        np.testing.assert_allclose(contributions, [3.0, (root - 3) / 2, (root - 3) / 2], rtol=1e-12)
    greedy = np.array([3.0, root - 3, 0.0])
    loss = model(greedy.sum()) - 0.05 * greedy[1] - model(3.0)  # agent 1's, per unit of v
    assert loss < -0.05


@pytest.mark.parametrize("big", [1e3, 1e9, 1e13, 1e15])
def test_standard_fl_convex_costs_root_is_exact_whatever_the_endowments_add_up_to(big):
    """Costs c m^2: the total M solves M = sum_i m_i(M), m_i(M) = v_i a'(M) / (2 c_i)
    below the caps. Brent's method stopped within 1e-12 sum_i n_i: with one endowment of
    1e15 that is 1000 samples, more than the equilibrium's 95, and the profile returned
    at big = 1e15 was (3.87, 1.94, 0.97), each agent 0.4 to 0.5 short of its best
    response. Every agent's m_i is now its first-order contribution at the total."""
    model = PowerLaw(0.9, 2.0, 0.5)
    agents = Population(cost=[1e-5, 2e-5, 4e-5], endowment=[big, 1000.0, 1000.0], cost_exponent=2.0)
    m = StandardFL().solve(agents, model).contributions
    np.testing.assert_allclose(m, agents.value * model.derivative(m.sum()) / (2 * agents.cost), rtol=1e-12)
    assert m.sum() > 90


@pytest.mark.parametrize("model", [TOY, GeneralisationBound(0.9, 2.0), EffectiveData(PowerLaw(0.9, 2.0, 0.5), 0.4)])
def test_free_data_divides_by_nothing(model):
    """An agent of cost 0 has slope c / v = 0, where a'(m) = 0 has no root: every model's
    marginal_inverse gives inf without dividing by 0, so the solvers need no guard
    against it (they had np.errstate(divide="ignore") around it, which never fired).
    The free agent brings all it has; standard FL's next agent tops up to its m^*."""
    agents = Population(cost=[0.0, 1e-4, 2e-4], endowment=[100.0, 1e6, 1e6])
    with np.errstate(divide="raise"):
        alone = local_optimum(agents.cost, agents.value, model, agents.endowment)
        free_riding = StandardFL().solve(agents, model).contributions
        for mechanism in (AccuracyShaping(), AccuracyShaping(0.01)):
            shaped = mechanism.solve(agents, model).contributions
            assert shaped[0] == 100.0 and np.all(mechanism.deviation_gains(shaped, agents, model) <= 1e-12)
    assert alone[0] == 100.0
    np.testing.assert_allclose(free_riding, [100.0, model.marginal_inverse(1e-4) - 100.0, 0.0], rtol=1e-12)


def test_standard_fl_convex_costs_where_nobody_passes_the_zero_crossing_are_solved_without_iteration(monkeypatch):
    """Costs c m^2 and a(m) = 0.9 - 2 m^-1/2 (zero crossing 4.94): where the first-order
    contributions at the crossing add up to less than it, no root lies above it, and the
    generic grid iteration (O(N^2) a sweep) found the profile. No agent
    with a cost passes the crossing profitably (``standard._free_data_profile``), so the
    equilibrium is the free agents at n_i and everyone else at 0, without iteration."""
    model = PowerLaw(0.9, 2.0, 0.5)
    monkeypatch.setattr(standard, "nash_equilibrium", _refuse_generic_iteration)
    crowd = Population(cost=np.full(400, 10.0), endowment=np.full(400, 100.0), cost_exponent=2.0)
    np.testing.assert_array_equal(StandardFL().solve(crowd, model).contributions, 0.0)
    agents = Population(cost=[0.0, 0.0, 10.0, 0.5, 2.0], endowment=[1.0, 2.0, 100.0, 50.0, 3.0], cost_exponent=2.0)
    outcome = StandardFL().solve(agents, model)
    np.testing.assert_array_equal(outcome.contributions, [1.0, 2.0, 0.0, 0.0, 0.0])
    assert verify_equilibrium(StandardFL(), outcome.contributions, agents, model).ok


def test_standard_fl_warns_where_the_generic_iteration_does_not_settle(monkeypatch):
    """Where the closed form fails its check (the convex-cost population above, whose
    first-order profile leaves agent 0 better off contributing nothing), the generic
    iteration's profile was returned as the equilibrium even where it had not settled."""
    agents = Population(cost=[0.158, 1.0], endowment=[100.0, 0.01], outside_option=[-1.0, -1.0],
                        cost_exponent=2.0)

    def unsettled(mechanism, population, model, *, start=None, **options):
        return Equilibrium(np.asarray(start, dtype=float), np.ones(2, dtype=bool), np.zeros(2), False, 200, 0.5)

    monkeypatch.setattr(standard, "nash_equilibrium", unsettled)
    with pytest.warns(UserWarning, match=r"^standard: best-response iteration did not settle in 200 sweeps"):
        StandardFL().solve(agents, PowerLaw(1.0, 1.0, 0.5))


@pytest.mark.parametrize("mechanism", [StandardFL(), AccuracyShaping()])
@pytest.mark.parametrize("i", [2, -1, 1.0, "x", True])
def test_allocate_to_refuses_what_is_not_an_agent_index(mechanism, i):
    """Shaping raised numpy's IndexError for i = 2 and read i = -1 as the last agent;
    standard FL accepted 2 and 'x'. Both now refuse as best_response does."""
    with pytest.raises(ValueError, match=rf"^i={i!r}: allowed is an agent index 0 to 1$"):
        mechanism.allocate_to(i, [[1.0, 2.0]], identical(2), TOY)
