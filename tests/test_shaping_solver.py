"""Accuracy shaping's solver: its equilibrium test in the utility's own units, the meeting
points of an agent's own curve with the federation's, the root of the best responses
among thousands of agents, and each agent's terms computed once a solve."""

import tracemalloc
import warnings

import numpy as np
import pytest

from incentives.accuracy import EffectiveData, GeneralisationBound, PowerLaw
from incentives.equilibrium import best_response, verify_equilibrium
from incentives.population import Population
from incentives.utility import local_contribution, utility
from mechanisms import shaping
from mechanisms.shaping import AccuracyShaping


def test_the_same_game_in_other_units_has_the_same_equilibrium():
    """v and c scaled together by s: the same game in other units (every c_i / v_i and so
    every decision unchanged). At s = 1e8 the fixed point's rounding gains exceeded an
    absolute tolerance of 1e-9, and the solve returned each agent's local optimum; with
    max(1, |u_i|), a calibrated curve's (a Newton root's) real gains at s = 1e-10 fell
    under the 1e-9 floor and the solve returned nobody contributing. The tolerance is now
    1e-9 of max(v_i, |u_i|); at every s the profile leaves no agent a gain. The
    calibrated curve's game has more than one equilibrium of the same total: agents 0
    and 2 at (64.88, 39.69) or (62.43, 42.14), agent 1 at 44.81, each leaving no gain on a
    grid of 200,001 points an agent, and which one Newton's method reaches from the fixed
    point turns on rounding (at s = 1e8 the latter); its totals agree."""
    unit = Population(cost=[0.001, 0.002, 0.004], endowment=[500.0, 2000.0, 300.0])
    for model in (PowerLaw(0.9, 2.0, 0.5), EffectiveData(PowerLaw(0.9, 2.0, 0.5), 0.3)):
        solved = []
        for scale in (1e-10, 1e-4, 1.0, 1e4, 1e6, 1e8, 1e10):
            agents = Population(cost=np.array([0.001, 0.002, 0.004]) * scale, endowment=[500.0, 2000.0, 300.0],
                                value=np.full(3, scale))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                solved.append(AccuracyShaping().solve(agents, model).contributions)
            assert np.all(AccuracyShaping().deviation_gains(solved[-1], unit, model) <= 1e-9)
        if isinstance(model, PowerLaw):  # the fixed point, the one equilibrium
            np.testing.assert_allclose(solved, np.repeat(solved[:1], len(solved), axis=0), rtol=1e-9)
        np.testing.assert_allclose(np.sum(solved, axis=1), np.sum(solved[0]), rtol=1e-9)


def test_a_meeting_of_the_two_curves_beyond_where_both_are_zero_is_found():
    """base = PowerLaw(0.9, 5, 0.6) (zero crossing 17.43), a(M) = base(0.8 M); agent 0
    (c = 0.0025, m^o = 84.04) holds nothing, agent 1 holds 20 samples. Below m^o agent 0
    gets min(base(x), base(0.8 (20 + x))): both are 0 at x = 0 (0.8 * 20 = 16 is below the
    crossing), and they meet at x* = 0.8 * 20 / 0.2 = 80, its best point: a gain of
    base(80) - 80 c over contributing nothing. The bisection for the meeting began at
    x = 0, where the two curves are equal, returned that end, and the gain reported was
    that of m^o, smaller. No point of a fine grid does better."""
    base = PowerLaw(0.9, 5.0, 0.6)
    model = EffectiveData(base, 0.8)
    agents = Population(cost=[0.0025, 0.01], endowment=[500.0, 300.0])
    gain = AccuracyShaping().deviation_gains([0.0, 20.0], agents, model)[0]
    assert gain == pytest.approx(base(80.0) - 80.0 * 0.0025, rel=1e-12)
    x = np.unique(np.concatenate([np.linspace(0.0, 500.0, 200_001), [80.0]]))
    profiles = np.column_stack([x, np.full_like(x, 20.0)])
    grid = AccuracyShaping().allocate_to(0, profiles, agents, model).accuracy - 0.0025 * x
    assert gain >= grid.max() - 1e-12


def test_a_line_steep_enough_to_meet_the_global_accuracy_within_one_rounding_step_is_scored_there():
    """epsilon = 1e12: the line leaves a(m^o) = 0.807 at agent 0's m^o = (2 * 0.5 / 1e-4)^(2/3)
    = 464.16 and passes a(M) = 0.834 within one float of it. The bisection for the
    meeting returned m^o itself, scored on the line at 0.807, and the deviation from
    (500, 292.40, 158.74) to the float above m^o, at a(M) for 35.8 samples less, was never
    scored: no gain reported, although it gains 2.3e-3, and that profile was returned as
    the equilibrium. The float above each meeting point is now scored too."""
    model = PowerLaw(0.9, 2.0, 0.5)
    agents = Population(cost=[1e-4, 2e-4, 5e-4], endowment=[500.0, 800.0, 1000.0])
    mechanism = AccuracyShaping(1e12)
    m_o = (2 * 0.5 / 1e-4) ** (2 / 3)
    profile = np.array([500.0, *[(2 * 0.5 / c) ** (2 / 3) for c in (2e-4, 5e-4)]])
    above = np.nextafter(m_o, np.inf)
    others = profile[1:].sum()
    gain = (model(others + above) - 1e-4 * above) - (model(others + 500.0) - 1e-4 * 500.0)
    assert gain > 2e-3
    assert mechanism.deviation_gains(profile, agents, model)[0] == pytest.approx(gain, rel=1e-9)
    solved = mechanism.solve(agents, model).contributions
    np.testing.assert_allclose(solved, [m_o, *profile[1:]], rtol=1e-12)
    x = np.concatenate([np.linspace(0.0, 500.0, 100_001), [solved[0]]])
    profiles = np.repeat(solved[None], len(x), axis=0)
    profiles[:, 0] = x
    grid = mechanism.allocate_to(0, profiles, agents, model).accuracy - 1e-4 * x
    assert grid.max() <= grid[-1] + 1e-12


def test_a_newton_step_solves_the_jacobian_of_best_responses_exactly():
    """BR_i depends on the others' total alone, so the Jacobian of BR(m) - m is
    s 1^T - diag(s) - I; a step solves it in O(N), an agent on its steep branch
    (s_i = -1, a zero on the diagonal of diag(s) + I) included; two such agents make it
    singular (None)."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        s = rng.uniform(-0.5, 2.0, n)
        s[rng.integers(n)] = -1.0
        r = rng.normal(size=n)
        jacobian = np.repeat(s[:, None], n, axis=1)
        np.fill_diagonal(jacobian, -1.0)
        np.testing.assert_allclose(jacobian @ shaping._newton_step(s, r), r, atol=1e-10)
    assert shaping._newton_step(np.array([-1.0, -1.0, 0.5]), np.ones(3)) is None


def _three_and_priced_out(n: int) -> Population:
    """Three agents whose fixed point under a(M) = base(0.3 M) is nobody contributing (they
    gain 0.45 there), and n - 3 agents priced out (c = 1000), all alike."""
    cost, endowment = np.full(n, 1000.0), np.full(n, 100.0)
    cost[:3], endowment[:3] = [0.001, 0.002, 0.004], [500.0, 2000.0, 300.0]
    return Population(cost=cost, endowment=endowment)


CALIBRATED = EffectiveData(PowerLaw(0.9, 2.0, 0.5), 0.3)


def test_the_root_of_best_responses_among_thousands_of_agents_is_an_equilibrium_in_linear_memory():
    """The root of BR(m) - m was found with a dense N x N Jacobian (72 MB at N = 3000, and
    O(N^3) time); each Newton step is now O(N) in time and memory. At N = 3000 the root
    leaves no exact deviation gain (:meth:`deviation_gains`), no better grid best response
    (``incentives.equilibrium.best_response``) for the three agents or for a priced-out
    one (all 2997 are alike), and the whole solve holds less than 16 MB; at N = 30 the
    grid check of every agent passes (``verify_equilibrium``)."""
    n = 3000
    agents, mechanism = _three_and_priced_out(n), AccuracyShaping()
    fixed_point = mechanism._contributions(agents, mechanism._rule(agents, CALIBRATED))
    assert mechanism.deviation_gains(fixed_point, agents, CALIBRATED).max() > 0.4  # the root finder is needed
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            outcome = mechanism.solve(agents, CALIBRATED)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
    m = outcome.contributions
    current = utility(agents, outcome.accuracy, m)
    assert np.all(mechanism.deviation_gains(m, agents, CALIBRATED) <= 1e-9 * np.maximum(1.0, np.abs(current)))
    for i in (0, 1, 2, 3, n - 1):
        assert best_response(mechanism, i, m, agents, CALIBRATED).utility <= current[i] + 1e-9
    few = _three_and_priced_out(30)
    assert verify_equilibrium(mechanism, mechanism.solve(few, CALIBRATED).contributions, few, CALIBRATED).ok


def test_a_solve_computes_each_agents_terms_once(monkeypatch):
    """On the generalisation bound each agent's m^o and the federation curve's point of
    slope c_i / v_i are one brentq root each (``marginal_inverse``); a solve recomputed
    them for every allocation and every deviation check, 6 roots an agent. Now 2 an agent
    (epsilon = 0: the line's slope is c_i / v_i)."""
    solved = []
    original = GeneralisationBound.marginal_inverse

    def counted(self, slope):
        solved.append(np.size(slope))
        return original(self, slope)

    monkeypatch.setattr(GeneralisationBound, "marginal_inverse", counted)
    rng = np.random.default_rng(0)
    agents = Population(cost=rng.uniform(1e-5, 1e-3, 50), endowment=rng.uniform(100, 1e4, 50))
    model = GeneralisationBound(0.95, 5.0)
    outcome = AccuracyShaping().solve(agents, model)
    assert sum(solved) == 2 * 50
    monkeypatch.undo()
    assert verify_equilibrium(AccuracyShaping(), outcome.contributions, agents, model).ok


def test_newton_stops_where_its_iterates_cycle():
    """A calibrated curve from a --resume of the command line's test run (4 agents, a(M) =
    base(0.1075 M)): from the fixed point (nobody contributing) Newton's near-singular steps
    (two agents with BR_i' = -1) jumped between corners of the box in a cycle of six iterates
    for all _NEWTON_STEPS steps, each with its halvings: 541 best responses (1.5 s of the
    4-agent solve; 30 s of the report's audit, which re-solves it 32 times). It now stops
    where an iterate comes back, after 61; the solve (best-response iteration, then Newton
    from where it stops) returns the same equilibrium."""
    base = PowerLaw(a_opt=0.9238903981080893, k=41.51636745353608, alpha=1.5661165623736808)
    model = EffectiveData(base, 0.10752555275875514)
    agents = Population(cost=[0.0018637889257010225, 0.0010272834221225907, 0.0010741364676176053,
                              0.0022179967092744828], endowment=np.full(4, 120.0))
    mechanism = AccuracyShaping()
    rule = mechanism._rule(agents, model)
    fixed_point = mechanism._contributions(agents, rule)
    calls = []

    def respond(x, others=None):
        calls.append(1)
        return shaping._best_deviations(x, agents, rule, others)[0]

    stopped = shaping._newton_root(respond, fixed_point, agents.endowment)
    assert not shaping._no_gain(stopped, agents, rule)  # no root from here
    assert len(calls) < 100  # a few steps into the cycle, not _NEWTON_STEPS of them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mechanism.solve(agents, model).contributions
    # the equilibrium the solve returned before the cycle stop (digits printed then), and an equilibrium by
    # verify_equilibrium's grid and refinement
    np.testing.assert_allclose(m, [30.62640606, 120.0, 103.57628453, 30.62640606], rtol=1e-8)
    assert verify_equilibrium(mechanism, m, agents, model).ok


def test_endowments_far_beyond_the_equilibrium_do_not_change_it():
    """Ten agents of cost 1e-4 under a(m) = 1 - m**-0.5 contribute 7627 in all with
    endowments of 1e3 or 1e6. With 1e16 the scan of totals began at 1e-12 of the 1e17
    held, above the root, and the solve returned 2924, each agent at its local optimum;
    with epsilon = 1e-3 and endowments of 1e50 the meeting points were found to 2**-60 of
    the endowment, and a profile where an agent gains 0.0103 by giving 100 more was
    called an equilibrium."""
    model = PowerLaw(1.0, 1.0, 0.5)
    totals = [AccuracyShaping().solve(Population.from_lists(cost=[1e-4] * 10, endowment=endowment), model).info["total"]
              for endowment in (1e3, 1e6, 1e16, 1e50, 1e300)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-12)
    alone = local_contribution(Population.from_lists(cost=[1e-4], endowment=1e3), model)[0]
    shaped = alone + (model(totals[0]) - model(alone)) / 1e-4  # m_i(M) on the line of slope c / v, below 1e3
    np.testing.assert_allclose(totals[0], 10 * shaped, rtol=1e-12)
    mechanism, pair = AccuracyShaping(epsilon=1e-3), Population.from_lists(cost=[1e-4] * 2, endowment=1e50)
    local = local_contribution(pair, model)  # each agent's optimum alone: no equilibrium
    assert np.all(mechanism.deviation_gains(local, pair, model) > 0.01)
    np.testing.assert_allclose(mechanism.solve(pair, model).contributions,
                               mechanism.solve(Population.from_lists(cost=[1e-4] * 2, endowment=1e6),
                                               model).contributions, rtol=1e-12)


def test_agents_whose_cost_per_value_is_subnormal_solve_without_warnings():
    """Accuracy worth 1e306 to agents paying 1e-3 a sample: c_i / v_i is 1e-309, and the
    solve and the model's inverse printed numpy's "overflow encountered in divide" (142 times
    in a CLI run) on their way to n_i, the right answer. Each agent gives its endowment."""
    agents = Population.from_lists(cost=[1e-3, 2e-3, 4e-3], endowment=[500.0, 2000.0, 300.0], value=1e306)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (PowerLaw(0.92, 10.38, 1.134), EffectiveData(PowerLaw(0.92, 10.38, 1.134), 0.4)):
            np.testing.assert_array_equal(AccuracyShaping().solve(agents, model).contributions, agents.endowment)
