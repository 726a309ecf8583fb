"""Convex data costs c_i m**beta, and the multi-dimensional types that give beta = 3.

The hand-computed cases use the power law a(m) = a_opt - k m**(-alpha) above its zero
crossing, where a'(m) = k alpha m**(-alpha-1); with beta = 3 and no endowment binding,
every first-order condition below has a closed form.
"""

import csv
import re

import numpy as np
import pytest

import run_experiment
from analysis import config as config_module
from analysis.config import ConfigError
from incentives.accuracy import PowerLaw, local_optimum
from incentives.equilibrium import social_optimum, verify_equilibrium
from incentives.loop import ClosedLoop
from incentives.population import Population, sample_traits
from incentives.utility import utility
from mechanisms.contract import ContractMechanism
from mechanisms.incfl import IncFLParticipation
from mechanisms.multidimensional import reduce_multidimensional_types
from mechanisms.screening import solve_screening
from mechanisms.shaping import AccuracyShaping
from mechanisms.stackelberg import StackelbergPricing, follower_equilibrium, leader_reward
from mechanisms.standard import StandardFL
from mechanisms.values import AccuracyValue, LogValue

MODEL = PowerLaw(a_opt=0.95, k=3.0, alpha=0.5)
COSTS = np.array([1e-7, 2e-7, 5e-7, 1e-6])
POPULATION = Population(cost=COSTS, endowment=np.full(4, 1000.0), cost_exponent=3)
K, ALPHA = MODEL.k, MODEL.alpha


@pytest.mark.parametrize("beta", [0.5, float("nan"), True, "3"])
def test_a_cost_exponent_below_one_or_not_a_number_is_refused(beta):
    with pytest.raises(ValueError, match=r"cost_exponent=.*allowed is a finite number >= 1"):
        Population(cost=[1.0], endowment=[10.0], cost_exponent=beta)


def test_data_cost_and_utility_follow_the_exponent():
    m = np.array([10.0, 20.0, 0.0, 5.0])
    np.testing.assert_allclose(POPULATION.data_cost(m), COSTS * m**3)
    u = utility(POPULATION, np.full(4, 0.5), m, transfer=np.ones(4))
    np.testing.assert_allclose(u, 0.5 + 1.0 - COSTS * m**3)
    grid = np.array([[1.0, 2.0]] * 4)  # (N, G) candidates per agent
    np.testing.assert_allclose(POPULATION.data_cost(grid), COSTS[:, None] * grid**3)


def test_the_exponent_survives_subsets_and_csv(tmp_path):
    assert POPULATION.subset([0, 2]).cost_exponent == 3.0
    path = tmp_path / "agents.csv"
    POPULATION.to_csv(path)
    back = Population.from_csv(path)
    assert back.cost_exponent == 3.0
    np.testing.assert_array_equal(back.cost, COSTS)
    path.write_text("cost,endowment,cost_exponent\n0.1,10,2\n0.2,10,3\n")
    with pytest.raises(ValueError, match=r"column 'cost_exponent' .* holds \[2.0, 3.0\]: allowed is one number"):
        Population.from_csv(path)


def test_local_optimum_solves_v_a_prime_equal_to_the_marginal_cost():
    """k alpha m**(-alpha-1) = 3 c m**2  =>  m = (k alpha / (3 c))**(1 / (alpha + 3)), to the
    bisection's precision (a grid search gave it to 1e-5)."""
    m = local_optimum(COSTS, np.ones(4), MODEL, np.full(4, 1000.0), cost_exponent=3)
    np.testing.assert_allclose(m, (K * ALPHA / (3 * COSTS)) ** (1 / (ALPHA + 3)), rtol=1e-12)


def test_local_optimum_finds_a_profitable_window_between_grid_points():
    """a(m) = 0.3936 - 44.65 m^-1.678 (zero crossing 23.58), c = 3.07e-4, beta = 2: the gain
    v a(m) - c m^2 is positive only on [23.59, 24.66], which no point of the grid search over
    [0, 546] fell in, so m^o came out 0. On [m0, n] the gain is concave: its slope's root is
    24.119, found exactly, worth 3.22e-4 (a grid of 100,001 points over the window agrees)."""
    model = PowerLaw(0.39360483218696585, 44.64623968535611, 1.6780498113000495)
    cost, value = 3.068285806622815e-4, 0.9947784249236211
    m = local_optimum(cost, value, model, 545.9636433880371, cost_exponent=2.0)
    grid = np.linspace(23.5, 24.7, 100_001)
    gains = value * model(grid) - cost * grid**2
    assert m == pytest.approx(grid[np.argmax(gains)], abs=2e-5)
    best = value * model(m) - cost * m**2
    assert best == pytest.approx(3.2216e-4, rel=1e-4) and gains.max() <= best


def test_standard_fl_equilibrium_and_the_social_optimum_in_closed_form():
    """Agent i: v a'(M) = 3 c_i m_i**2, so m_i = sqrt(a'(M) / (3 c_i)) and, with S = sum_i c_i**-1/2,
    M**(alpha+3) = v k alpha S**2 / 3. The planner has V = N v in place of v."""
    s = np.sum(COSTS**-0.5)
    total = (K * ALPHA * s**2 / 3) ** (1 / (ALPHA + 3))
    outcome = StandardFL().solve(POPULATION, MODEL)
    assert outcome.contributions.sum() == pytest.approx(total, rel=1e-9)
    np.testing.assert_allclose(outcome.contributions, np.sqrt(K * ALPHA * total ** (-ALPHA - 1) / (3 * COSTS)),
                               rtol=1e-9)
    assert (outcome.contributions > 0).all()  # the first sample costs nothing at the margin: nobody free-rides fully
    assert verify_equilibrium(StandardFL(), outcome.contributions, POPULATION, MODEL, tol=1e-9).ok
    optimum = social_optimum(POPULATION, MODEL)
    planner_total = (4 * K * ALPHA * s**2 / 3) ** (1 / (ALPHA + 3))
    assert optimum.total == pytest.approx(planner_total, rel=1e-6)
    assert optimum.total / total == pytest.approx(4 ** (1 / (ALPHA + 3)), rel=1e-6)


def test_the_social_optimum_respects_endowments_under_convex_costs():
    capped = Population(cost=COSTS, endowment=np.array([5.0, 1000, 1000, 1000]), cost_exponent=3)
    optimum = social_optimum(capped, MODEL)
    assert optimum.contributions[0] == pytest.approx(5.0)
    free = optimum.contributions[1:]  # the others equalise marginal costs 3 c_i m_i**2
    marginal = 3 * COSTS[1:] * free**2
    np.testing.assert_allclose(marginal, marginal[0], rtol=1e-5)
    assert marginal[0] == pytest.approx(4 * K * ALPHA * optimum.total ** (-ALPHA - 1), rel=1e-5)


def test_the_social_optimum_with_a_cost_exponent_near_1_beats_a_grid_over_every_profile():
    """beta = 1.001: m_i grows like lam**1000, and a grid over the marginal cost lam stepped
    from almost nothing to every cap in one step: the planner kept all 98 samples of agent
    1 where fewer are worth more (the test compares with a grid over every profile)."""
    population = Population(cost=[0.00898393, 0.0305079, 0.0624982], endowment=[23.4335, 98.1490, 21.6818],
                            value=[7.31896, 8.76607, 0.388287], cost_exponent=1.001)
    model = PowerLaw(0.9, 2.62889, 0.608353)
    optimum = social_optimum(population, model)
    axes = [np.linspace(0.0, n, 81) for n in population.endowment]
    profiles = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    welfare = population.value.sum() * model(profiles.sum(axis=1)) - (population.cost * profiles ** 1.001).sum(axis=1)
    assert welfare.max() >= optimum.welfare - 1e-3 and optimum.welfare >= welfare.max() - 1e-12
    marginal = 1.001 * population.cost[:2] * optimum.contributions[:2] ** 0.001
    assert optimum.contributions[0] == pytest.approx(23.4335) and marginal[0] < marginal[1]  # 0 capped, 1 not


def test_contracts_are_solved_and_chosen_with_the_populations_exponent():
    mechanism = ContractMechanism(LogValue(0.2))
    outcome = mechanism.solve(POPULATION, MODEL)
    menu = outcome.info["menu_object"]
    assert menu.cost_exponent == 3.0
    reference = solve_screening(COSTS, np.full(4, 0.25), LogValue(0.2), cost_exponent=3,
                                capacity=np.full(4, 1000.0))
    np.testing.assert_allclose(np.sort(menu.contribution), np.sort(reference.contribution), rtol=1e-5)
    chosen = outcome.contributions
    assert np.all(np.diff(chosen) < 0)  # costlier types contribute less
    utilities = menu.reward[None, :] - COSTS[:, None] * menu.contribution[None, :] ** 3
    np.testing.assert_allclose(outcome.transfer - COSTS * chosen**3, utilities.max(axis=1), atol=1e-7)  # IC


# the digits pilot fit, 0 below its zero crossing (10.38 / 0.92)**(1 / 1.134) = 8.47 samples, valued at 100 a sample
PILOT = PowerLaw(a_opt=0.92, k=10.38, alpha=1.134)
WKA = 100.0 * 10.38 * 1.134  # weight * k * alpha


def test_an_accuracy_value_is_maximised_beyond_its_zero_crossing_under_convex_costs():
    """argmax_q 100 a(q) - p q**beta: on [m0, inf) the first-order condition
    100 k alpha q**(-alpha-1) = beta p q**(beta-1) gives q = (100 k alpha / (beta p))**(1/(alpha+beta)),
    kept where it beats q = 0. The bisection used to start at 0, where the clipped a is flat:
    at p = 1e-4, beta = 2 it returned 4e-16 instead of 144.58."""
    value = AccuracyValue(PILOT, 100.0)
    got = value.argmax([1e-4, 1e-3, 1.0], 2.0)
    hand = (WKA / (2 * np.array([1e-4, 1e-3]))) ** (1 / 3.134)
    np.testing.assert_allclose(got[:2], hand, rtol=1e-9)
    assert got[0] == pytest.approx(144.58, abs=0.01)
    assert got[2] == 0.0  # the root, 7.65 samples, lies below the zero crossing: every q earns at most 0
    grid = np.linspace(0.0, 400.0, 400_001)  # brute force, steps of 0.001 samples
    for price, q in zip([1e-4, 1e-3, 1.0], got):
        assert q == pytest.approx(grid[np.argmax(value(grid) - price * grid**2)], abs=1e-3)
    assert value.argmax(1e-6, 3.0)[0] == pytest.approx((WKA / 3e-6) ** (1 / 4.134), rel=1e-9)
    # exponent 1 is as it was: the model's own marginal inverse, (100 k alpha / p)**(1/(alpha+1))
    np.testing.assert_array_equal(value.argmax([0.01, 3.0]), [PILOT.marginal_inverse(1e-4), 0.0])
    assert value.argmax(0.01)[0] == pytest.approx((WKA / 0.01) ** (1 / 2.134), rel=1e-12)


@pytest.mark.parametrize("beta, cost", [(2.0, [1e-4, 2e-4]), (3.0, [1e-6, 2e-6])])
def test_contracts_valued_by_accuracy_solve_under_convex_costs(beta, cost):
    """Two equally likely types: virtual costs (c_1, 2 c_2 - c_1) = c_1 (1, 3), so each item solves
    100 k alpha q**(-alpha-1) = beta phi q**(beta-1). The reduced form used to fail ("the solver
    failed numerically": its units came from an argmax of 4e-16 samples) and the closed form to
    ask for no data, as did the mechanism."""
    hand = (WKA / (beta * np.array([cost[0], 2 * cost[1] - cost[0]]))) ** (1 / (1.134 + beta))
    value = AccuracyValue(PILOT, 100.0)
    closed = solve_screening(cost, [0.5, 0.5], value, form="closed_form", cost_exponent=beta)
    reduced = solve_screening(cost, [0.5, 0.5], value, form="reduced", cost_exponent=beta)
    np.testing.assert_allclose(closed.contribution, hand, rtol=1e-9)
    np.testing.assert_allclose(reduced.contribution, hand, rtol=1e-4)  # the solver's, on a flat optimum
    assert reduced.server_profit == pytest.approx(closed.server_profit, rel=1e-8)
    population = Population(cost=cost, endowment=[1000.0, 1000.0], cost_exponent=beta)
    outcome = ContractMechanism("accuracy", value_weight=100.0, respect_endowment=False).solve(population, PILOT)
    np.testing.assert_allclose(outcome.contributions, hand, rtol=1e-4)


def test_incfl_agents_hold_their_convex_cost_local_optimum():
    outcome = IncFLParticipation().solve(POPULATION, MODEL)
    np.testing.assert_allclose(outcome.contributions, (K * ALPHA / (3 * COSTS)) ** (1 / (ALPHA + 3)), rtol=1e-5)


def test_accuracy_shaping_refuses_convex_costs():
    """Its slope c_i / v_i is the marginal cost of linear costs only."""
    message = r"population.cost_exponent=3.0: mechanism 'shaping' assumes linear data costs"
    with pytest.raises(ValueError, match=message):
        AccuracyShaping().solve(POPULATION, MODEL)
    with pytest.raises(ValueError, match=message):  # before any training
        ClosedLoop(POPULATION, [StandardFL(), AccuracyShaping()], oracle=None)


def test_stackelberg_followers_with_convex_costs_by_hand():
    """N symmetric followers, c x**2: R (X - x) / X**2 = 2 c x at X = N x gives
    x = sqrt(R (N - 1) / (2 c N**2)); R = 3, c = 0.5, N = 4: x = 0.75."""
    eq = follower_equilibrium(np.full(4, 0.5), 3.0, cost_exponent=2)
    np.testing.assert_allclose(eq.contributions, 0.75, rtol=1e-10)
    costs = np.array([0.1, 0.3, 1.0, 2.0])
    eq = follower_equilibrium(costs, 5.0, cost_exponent=3)
    x, X = eq.contributions, eq.total
    np.testing.assert_allclose(5.0 * (X - x) / X**2, 3 * costs * x**2, rtol=1e-9)  # every first-order condition
    assert eq.active.all()  # the first sample costs nothing at the margin
    scaled = follower_equilibrium(costs, 5.0 * 8, cost_exponent=3)  # R * s -> X * s**(1/beta)
    assert scaled.total == pytest.approx(2 * X, rel=1e-9)
    capped = follower_equilibrium(costs, 5.0, [0.3, 10, 10, 10], cost_exponent=3)
    y, Y = capped.contributions, capped.total
    assert y[0] == pytest.approx(0.3) and capped.capped.tolist() == [True, False, False, False]
    np.testing.assert_allclose(5.0 * (Y - y[1:]) / Y**2, 3 * costs[1:] * y[1:] ** 2, rtol=1e-9)
    assert 5.0 * (Y - 0.3) / Y**2 > 3 * costs[0] * 0.3**2  # the capped agent would add more


def test_the_stackelberg_leader_with_convex_costs_beats_a_fine_grid():
    costs, caps, value = np.array([0.1, 0.3, 1.0, 2.0]), np.full(4, 100.0), LogValue(10.0)
    solution = leader_reward(costs, value, capacity=caps, cost_exponent=3)

    def profit(R):
        return 10 * np.log1p(follower_equilibrium(costs, R, caps, cost_exponent=3).total) - R

    grid = np.linspace(0.01, 20.0, 400)
    assert solution.profit >= max(profit(R) for R in grid) - 1e-9
    assert solution.profit == pytest.approx(profit(solution.reward), rel=1e-12)
    outcome = StackelbergPricing(value).solve(POPULATION, MODEL)
    assert verify_equilibrium(StackelbergPricing(value), outcome.contributions, POPULATION, MODEL, tol=1e-3).ok


def test_sampled_traits_are_reproducible_and_apart_from_the_population_streams():
    spec = {"compute_cost": {"dist": "uniform", "low": 1.0, "high": 2.0}, "comm_delay": 0.5}
    names = ("compute_cost", "comm_delay")
    first = sample_traits(5, spec, names, seed=3)
    np.testing.assert_array_equal(first["compute_cost"], sample_traits(5, spec, names, seed=3)["compute_cost"])
    alone = sample_traits(5, {"compute_cost": spec["compute_cost"]}, names, seed=3)
    np.testing.assert_array_equal(first["compute_cost"], alone["compute_cost"])
    drawn = Population.sample(5, {"cost": spec["compute_cost"], "endowment": 1.0}, seed=3).cost
    assert not np.allclose(drawn, first["compute_cost"])
    np.testing.assert_array_equal(first["comm_delay"], np.full(5, 0.5))


def _section(**population):
    return config_module.load(None, [f"population.{k}={v}" for k, v in population.items()])


def test_the_config_builds_multidimensional_costs_by_hand():
    """theta_i = G zeta_i (E nu)**3 / (T - tau_i)**2 with G = 20 rounds, E = 2, nu = 1.5, T = 10."""
    config = _section(n_agents=3, private_information="'multidimensional'", compute_cost=2e-7,
                      comm_delay="[0.0, 2.0, 6.0]", round_deadline=10, cycles_per_sample=1.5,
                      endowment="[50, 60, 70]")
    training = {**config["training"], "rounds": 20, "local_epochs": 2}
    population = run_experiment.build_agents(config["population"], 0, training)
    tau = np.array([0.0, 2.0, 6.0])
    np.testing.assert_allclose(population.cost, 20 * 2e-7 * 3.0**3 / (10 - tau) ** 2)
    assert population.cost_exponent == 3.0
    np.testing.assert_array_equal(population.endowment, [50, 60, 70])
    reduced = reduce_multidimensional_types(np.full(3, 2e-7), tau, [50, 60, 70], round_deadline=10,
                                            rounds=20, local_epochs=2, cycles_per_sample=1.5)
    np.testing.assert_allclose(population.cost, reduced.cost)


@pytest.mark.parametrize("overrides, fragment", [
    (["population.private_information='multidimensional'", "population.cost=0.1"],
     "population.cost=0.1: not used with population.private_information='multidimensional'"),
    (["population.private_information='multidimensional'", "population.cost_exponent=2"],
     "allowed is to leave it out or at its default (over a config file that sets it: --set "
     "'population.cost_exponent=1.0') (configs/multidimensional.toml is a config without it)"),
    (["population.private_information='multidimensional'", "population.csv='agents.csv'"],
     "population.csv='agents.csv': not used with"),
    (["population.comm_delay=1.0"],
     "population.comm_delay=1.0: not used with population.private_information='cost' (it describes "
     "multi-dimensional types); allowed is to leave it out or at its default"),
    (["population.cost_exponent=0.5"], "population.cost_exponent=0.5: allowed is a finite number >= 1"),
    (["population.private_information='vector'"], "population.private_information='vector': allowed is one of"),
])
def test_config_keys_the_private_information_does_not_use_are_refused(overrides, fragment):
    with pytest.raises(ConfigError) as error:
        config_module.load(None, overrides)
    assert fragment in str(error.value)


def test_multidimensional_types_over_the_default_config_are_told_how_to_reset_the_cost_it_sets():
    """configs/default.toml sets population.cost: the refusal said "leave it out" of a key the
    user never set; the --set it gives now resets it, and the run is then taken."""
    with pytest.raises(ConfigError) as error:
        config_module.load(run_experiment.DEFAULT_CONFIG, ["population.private_information='multidimensional'"])
    advice = re.search(r"--set '(population.cost=.*?)'", str(error.value)).group(1)
    config = config_module.load(run_experiment.DEFAULT_CONFIG, ["population.private_information='multidimensional'",
                                                                 advice, "mechanisms.compare=['standard']"])
    assert config["population"]["private_information"] == "multidimensional"


def test_a_delay_past_the_deadline_is_a_config_error():
    config = _section(n_agents=2, private_information="'multidimensional'", comm_delay="[1.0, 12.0]")
    with pytest.raises(ConfigError, match=r"^population.comm_delay\[1\]=12.0: allowed is a delay below "
                                          r"round_deadline=10.0 seconds"):
        run_experiment.build_agents(config["population"], 0, config["training"])


def test_a_bad_distribution_of_a_multidimensional_trait_is_a_config_error():
    """It was a ValueError traceback: the traits were drawn outside the error handling."""
    config = _section(n_agents=2, private_information="'multidimensional'",
                      comm_delay='{dist="uniform", low=5.0, high=1.0}')
    with pytest.raises(ConfigError, match=r"^population.comm_delay.high=1.0: allowed is a number >= low=5.0$"):
        run_experiment.build_agents(config["population"], 0, config["training"])


CONFIG = str(run_experiment.DEFAULT_CONFIG.parent / "multidimensional.toml")
FAST = ["population.n_agents=4", "training.rounds=4", "accuracy.pilot_sizes=[20, 60, 200]",
        "accuracy.pilot_repeats=1", "loop.max_iterations=1"]


def test_the_cli_refuses_a_linear_cost_mechanism_on_multidimensional_types(tmp_path, capsys):
    status = run_experiment.main([CONFIG, "--quiet", *(f"--set={o}" for o in FAST),
                                  f"--set=experiment.output_dir='{tmp_path}'",
                                  "--set=mechanisms.compare=['standard', 'shaping']"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert ("'shaping' assumes linear data costs and population.private_information='multidimensional' gives "
            "cost_exponent 3; allowed with convex costs is 'standard', 'shapley', 'contract'") in err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


@pytest.mark.parametrize("exponent_given", [False, True])
def test_the_cli_names_the_csv_whose_column_makes_costs_convex(tmp_path, capsys, exponent_given):
    """A population.csv with a cost_exponent column of 2 under shaping was refused naming
    population.cost_exponent, a key the user never set; the CSV is named. Where the config
    sets the same exponent, the key is."""
    agents = tmp_path / "agents.csv"
    agents.write_text("cost,endowment,cost_exponent\n0.001,50,2\n0.001,50,2\n")
    given = ["--set=population.cost_exponent=2"] if exponent_given else []
    status = run_experiment.main(["--quiet", f"--set=population.csv='{agents}'", *given,
                                  f"--set=experiment.output_dir='{tmp_path / 'runs'}'"])
    source = ("population.cost_exponent is 2.0" if exponent_given
              else f"population.csv={str(agents)!r} gives cost_exponent 2.0")
    assert status == 2
    assert f"'shaping' assumes linear data costs and {source}; allowed with convex costs is" in capsys.readouterr().err


def test_the_cli_runs_contracts_on_multidimensional_types(tmp_path):
    status = run_experiment.main([CONFIG, "--quiet", *(f"--set={o}" for o in FAST),
                                  f"--set=experiment.output_dir='{tmp_path}'",
                                  "--set=mechanisms.compare=['standard', 'contract']"])
    assert status == 0
    (folder,) = tmp_path.iterdir()
    with (folder / "agents.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["mechanism"] for row in rows} == {"standard", "contract"}
    for row in rows:
        assert float(row["data_cost"]) == pytest.approx(float(row["cost"]) * int(row["trained_contribution"]) ** 3)
    assert "convex data costs c_i m_i<sup>3</sup> derived from each agent" in (folder / "report.html").read_text()
    saved = config_module.load(folder / "config.toml")  # every key is written; --resume reads it back
    assert saved["population"]["private_information"] == "multidimensional"


def test_a_configured_exponent_reaches_sampled_and_csv_agents(tmp_path):
    config = _section(n_agents=3, cost_exponent=2)
    population = run_experiment.build_agents(config["population"], 0, config["training"])
    assert population.cost_exponent == 2.0
    agents = tmp_path / "agents.csv"
    agents.write_text("cost,endowment\n0.1,10\n0.2,10\n")
    from_csv = run_experiment.build_agents({**config["population"], "csv": str(agents)}, 0, config["training"])
    assert from_csv.cost_exponent == 2.0
    agents.write_text("cost,endowment,cost_exponent\n0.1,10,3\n0.2,10,3\n")
    with pytest.raises(ConfigError, match=r"population.cost_exponent=2: the CSV .* gives 3.0; allowed is one of"):
        run_experiment.build_agents({**config["population"], "csv": str(agents)}, 0, config["training"])
