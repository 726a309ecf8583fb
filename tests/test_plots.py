"""The run's figures: the contribution per agent as bars for small populations and as a
heat map (mechanisms by agents ranked by cost) for large ones."""

from dataclasses import replace
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest

from analysis import plots
from incentives.accuracy import EffectiveData, PowerLaw
from incentives.loop import IterationRecord, LoopResult
from incentives.population import Population
from incentives.utility import local_contribution
from mechanisms.shaping import AccuracyShaping
from mechanisms.standard import StandardFL

MODEL = PowerLaw(1.0, 1.0, 0.5)  # a(m) = 1 - m^(-1/2)


def loop_result(population: Population, phi=None) -> LoopResult:
    """The two mechanisms' equilibria recorded as one loop iteration under the agents'
    value of accuracy ``phi`` (None: linear), trained as solved (whole samples); no
    training is read by the contribution figures."""
    records = []
    for mechanism in (StandardFL(), AccuracyShaping()):
        outcome = mechanism.solve(population, MODEL)
        trained = np.round(outcome.contributions)
        zeros = np.zeros(population.n_agents)
        records.append(IterationRecord(0, outcome, MODEL, trained, None, outcome.transfer, zeros, zeros, zeros, phi))
    return LoopResult(np.array([10.0, 100.0]), MODEL(np.array([10.0, 100.0])), MODEL, records)


@pytest.mark.parametrize("n_agents, shape", [(8, (440, 1078)), (30, (275, 1100))])
def test_contributions_are_bars_up_to_20_agents_and_a_heat_map_beyond(tmp_path, n_agents, shape):
    population = Population.from_lists(cost=np.geomspace(2e-4, 1e-3, n_agents)[::-1], endowment=1e6)
    path = plots.contributions(loop_result(population), population, tmp_path / "contributions.png")
    assert matplotlib.image.imread(path).shape[:2] == shape  # 110 dpi: 9.8 x 4 in, or 10 x (1.6 + 0.45 * 2) in


def test_the_heat_map_ranks_agents_by_cost_and_marks_the_free_riders():
    cost = np.geomspace(2e-4, 1e-3, 30)[::-1]  # the cheapest agent is the last one
    population = Population.from_lists(cost=cost, endowment=1e6)
    result = loop_result(population)
    local = local_contribution(population, MODEL)  # m_i^o = (1 / (2 c_i))^(2/3)
    names, order, samples, free_riders = plots.contribution_map(result, population, local)
    assert names == ["standard", "shaping"]
    np.testing.assert_array_equal(order, np.arange(30)[::-1])
    np.testing.assert_array_equal(samples[0], result.final()["standard"].trained_contributions[::-1])
    # standard FL: only the cheapest agent contributes (its m^o, the total the others free ride on)
    assert samples[0, 0] == pytest.approx(local[-1], abs=0.5) and not free_riders[0, 0]
    assert free_riders[0, 1:].all()
    # accuracy shaping asks everyone for at least its local optimum: nobody free rides
    assert not free_riders[1].any()


def test_the_seed_spread_bar_is_the_mean_over_the_seeds_with_a_number(tmp_path, monkeypatch):
    """summary.csv takes the mean over the seeds where a value is a number; the bar did
    np.mean, NaN with one NaN seed, and drew nothing."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    values = {("a", "total_data"): np.array([100.0, np.nan, 200.0]),
              ("a", "welfare_realised"): np.full(3, np.nan)}
    plots.seed_spread(values, ["a"], tmp_path / "seed_spread.png")
    data, welfare = figures[0].axes
    assert [bar.get_height() for bar in data.patches] == [150.0]
    assert not welfare.patches  # no seed has a number: no bar


def test_each_mechanism_is_drawn_against_the_social_optimum_of_its_own_game(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    summaries = {name: {"total_data": 10.0, "welfare_predicted": 1.0, "welfare_realised": 1.0,
                        "welfare_without_transfers": 1.0, "welfare_social_optimum": optimum}
                 for name, optimum in (("a", 2.0), ("b", 3.0))}
    plots.welfare_and_data(summaries, tmp_path / "welfare.png")
    lines = figures[0].axes[1].collections[1].get_segments()  # after the diamonds of the welfare less transfers
    assert [(segment[0][1], segment[0][0], segment[1][0]) for segment in lines] == [(2.0, -0.4, 0.4), (3.0, 0.6, 1.4)]


@pytest.mark.parametrize("iterations", [1, 3])
def test_the_convergence_figure_ticks_whole_loop_iterations(tmp_path, monkeypatch, iterations):
    """With one loop iteration the x axis showed fractional ticks (-0.045 ... 0.045): the
    integer locator gave up with fewer than two whole numbers in view."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    population = Population.from_lists(cost=np.geomspace(2e-4, 1e-3, 8)[::-1], endowment=1e6)
    once = loop_result(population)
    trained = SimpleNamespace(global_accuracy=np.full(population.n_agents, 0.8))  # all the figure reads of training
    records = [replace(record, iteration=t, training=trained) for t in range(iterations) for record in once.records]
    plots.convergence(replace(once, records=records), tmp_path / "convergence.png")
    axis = figures[0].axes[0]
    figures[0].canvas.draw()
    low, high = axis.get_xlim()
    shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
    assert shown == list(range(iterations))


def captured(monkeypatch) -> list:
    """The figures the plots draw, kept open instead of written (``plots._save`` keeps each)."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_twenty_agents_are_bars_marked_at_their_local_optimum_under_phi(tmp_path, monkeypatch):
    """Up to 20 agents, bars (no heat map image); each agent's mark is its local optimum
    under the phi the loop measured with, taken where phi is left out: with phi(a) = 2a on
    a = 1 - m^-1/2, 2 a'(m) = c gives m^o = c^(-2/3) (not (2c)^(-2/3), linear phi's);
    phi=None, another phi than the loop's, is refused, naming phi."""
    figures = captured(monkeypatch)
    cost = np.geomspace(2e-4, 1e-3, 20)[::-1]
    population = Population.from_lists(cost=cost, endowment=1e6)
    result = loop_result(population, phi=lambda a: 2 * a)
    plots.contributions(result, population, tmp_path / "contributions.png")
    (axis,) = figures[0].axes
    assert not axis.images and len(axis.patches) == 40  # two mechanisms' bars
    (marks,) = axis.collections
    np.testing.assert_allclose(marks.get_offsets()[:, 1], cost ** (-2 / 3), rtol=1e-4)
    with pytest.raises(ValueError, match=r"phi=None: the loop measured these records with phi=<function"):
        plots.contributions(result, population, tmp_path / "contributions.png", phi=None)


def test_the_heat_map_keeps_tied_costs_in_population_order_and_who_receives_with_its_agent():
    """Costs (3, 2, 1) x 1e-4 rank agents (2, 1, 0); agent 0 stays out (no model), agent 1
    takes part with 0 samples, agent 2 trains 300 >= its m^o = 292.4: agent 1 alone free
    rides. Ties keep the population's order: costs (2, 2, 1, 1) x 1e-4 rank (2, 3, 0, 1)."""
    population = Population.from_lists(cost=[3e-4, 2e-4, 1e-4], endowment=1e6)
    outcome = StandardFL().solve(population, MODEL)
    outcome = replace(outcome, contributions=np.array([0.0, 0.0, 300.0]), participates=np.array([False, True, True]))
    zeros = np.zeros(3)
    result = LoopResult(np.array([10.0, 100.0]), MODEL(np.array([10.0, 100.0])), MODEL,
                        [IterationRecord(0, outcome, MODEL, np.array([0, 0, 300]), None, zeros, zeros, zeros, zeros)])
    _, order, samples, riding = plots.contribution_map(result, population, local_contribution(population, MODEL))
    np.testing.assert_array_equal(order, [2, 1, 0])
    np.testing.assert_array_equal(samples, [[300.0, 0.0, 0.0]])
    np.testing.assert_array_equal(riding, [[False, True, False]])
    tied = Population.from_lists(cost=[2e-4, 2e-4, 1e-4, 1e-4], endowment=1e6)
    _, order, _, _ = plots.contribution_map(loop_result(tied), tied, local_contribution(tied, MODEL))
    np.testing.assert_array_equal(order, [2, 3, 0, 1])


def test_the_accuracy_figure_shows_what_was_promised_and_what_training_delivered(tmp_path, monkeypatch):
    """Promised 0.9 to both agents, delivered 0.8 and 0.7: the hollow points at 0.9, the
    crosses at 0.8 and 0.7, both at the trained contributions (100, 50)."""
    figures = captured(monkeypatch)
    population = Population.from_lists(cost=[1e-3, 2e-3], endowment=1e6)
    outcome = StandardFL().solve(population, MODEL)
    outcome = replace(outcome, accuracy=np.array([0.9, 0.9]))
    training = SimpleNamespace(delivered_accuracy=np.array([0.8, 0.7]))
    zeros = np.zeros(2)
    result = LoopResult(np.array([10.0, 100.0]), MODEL(np.array([10.0, 100.0])), MODEL,
                        [IterationRecord(0, outcome, MODEL, np.array([100, 50]), training, zeros, zeros, zeros, zeros)])
    plots.accuracy_vs_contribution(result, tmp_path / "accuracy.png")
    promised, delivered = figures[0].axes[0].collections
    np.testing.assert_array_equal(promised.get_offsets(), [[100.0, 0.9], [50.0, 0.9]])
    np.testing.assert_array_equal(delivered.get_offsets(), [[100.0, 0.8], [50.0, 0.7]])


def test_the_welfare_bars_are_the_predicted_and_the_realised_welfare(tmp_path, monkeypatch):
    figures = captured(monkeypatch)
    summaries = {"a": {"total_data": 10.0, "welfare_predicted": 1.0, "welfare_realised": 0.6,
                       "welfare_without_transfers": 1.0, "welfare_social_optimum": 2.0}}
    plots.welfare_and_data(summaries, tmp_path / "welfare.png")
    assert [bar.get_height() for bar in figures[0].axes[0].patches] == [10.0]
    assert [bar.get_height() for bar in figures[0].axes[1].patches] == [1.0, 0.6]


def test_the_social_optimum_is_drawn_beside_the_welfare_less_transfers_and_a_missing_value_is_named(
        tmp_path, monkeypatch):
    """Shapley rewards paid 1.6 out of the server's budget: the agents' welfare, 9.09 with
    the transfers, stood above the optimum of 8.16 that leaves them out, and read as an
    equilibrium beating the optimum where the price of anarchy is 8.16 / 7.49 = 1.09. The
    welfare less the transfers (a diamond) is what the dashed line bounds. A mechanism
    without a total read as 0 samples: its slot says n/a."""
    figures = captured(monkeypatch)
    summaries = {"shapley": {"total_data": 90.0, "welfare_predicted": 9.09, "welfare_realised": 9.24,
                             "welfare_without_transfers": 7.49, "welfare_social_optimum": 8.16},
                 "failed": {"total_data": float("nan"), "welfare_predicted": 1.0, "welfare_realised": 1.0,
                            "welfare_without_transfers": 1.0, "welfare_social_optimum": 1.0}}
    plots.welfare_and_data(summaries, tmp_path / "welfare.png")
    data, welfare = figures[0].axes
    (diamonds,) = welfare.collections[:1]
    np.testing.assert_array_equal(diamonds.get_offsets(), [[-0.2, 7.49], [0.8, 1.0]])
    assert [(text.get_text(), text.get_position()[0]) for text in data.texts] == [("n/a", 1.0)]
    assert not welfare.texts


@pytest.mark.parametrize("summaries, message", [
    ({}, r"^summaries=\{\}: allowed is a dict of at least one mechanism"),  # wrote an empty figure
    ({"a": {"total_data": 1.0}}, r"^summaries\['a'\] \(without welfare_predicted, welfare_realised, "),  # KeyError
])
def test_summaries_without_a_mechanism_or_a_metric_are_named(tmp_path, summaries, message):
    with pytest.raises(ValueError, match=message):
        plots.welfare_and_data(summaries, tmp_path / "welfare.png")
    with pytest.raises(ValueError, match=r"^values \(no entry \('a', 'welfare_realised'\)\): allowed is"):
        plots.seed_spread({("a", "total_data"): np.ones(2)}, ["a"], tmp_path / "spread.png")  # a KeyError


def test_a_dozen_mechanisms_get_a_colour_each_and_long_names_are_cut():
    """The colour cycle of 10 repeated: m00 and m10 were drawn alike in every figure; a
    name of 60 characters squeezed the axes and pushed the legend off the figure; a name
    is cut in its middle, so that two that differ at the end stay apart."""
    assert len({tuple(np.atleast_1d(c)) if not isinstance(c, str) else c for c in plots.colours(12)}) == 12
    assert len(set(plots.colours(30))) == 30
    assert plots.colours(3) == plots.COLOURS[:3]
    assert plots.label("shapley") == "shapley"
    assert len(plots.label("x" * 60)) == plots.LABEL_LENGTH
    long = ["contract_accuracy_incomplete_1", "contract_accuracy_incomplete_2"]  # cut at the end, both read alike
    assert [plots.label(name) for name in long] == ["contract_ac\u2026incomplete_1", "contract_ac\u2026incomplete_2"]


def test_a_mechanism_that_delivers_no_model_is_named_in_the_accuracy_legend(tmp_path, monkeypatch):
    """It had no point and no legend entry: 6 of the 7 mechanisms of the comparison showed,
    without a word about the money contract."""
    figures = captured(monkeypatch)
    population = Population.from_lists(cost=[1e-3, 2e-3], endowment=1e6)
    outcome = StandardFL().solve(population, MODEL)
    training = SimpleNamespace(delivered_accuracy=np.array([0.8, 0.7]))
    zeros = np.zeros(2)
    served = IterationRecord(0, outcome, MODEL, np.array([100, 50]), training, zeros, zeros, zeros, zeros)
    money = replace(served, outcome=replace(outcome, mechanism="contract", delivery_target=np.zeros(2)))
    result = LoopResult(np.array([10.0, 100.0]), MODEL(np.array([10.0, 100.0])), MODEL, [served, money])
    plots.accuracy_vs_contribution(result, tmp_path / "accuracy.png")
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["standard: promised", "standard: delivered (trained)", "contract: delivers no model in this run"]


def test_the_heat_map_scales_from_0_to_the_largest_endowment_and_sample_axes_start_at_0(tmp_path, monkeypatch):
    """The heat map's colours spanned the data's own range: 9 samples beside 20 took the
    colour of none, and all agents at their whole endowment looked as all at 0 (a flat
    mid-colour on 18-22 or -0.1-0.1); its free-rider legend showed where none rides. With
    every contribution 0 the sample axes ran from -0.04 to 0.04; the welfare bars took the
    mechanisms' colours, blue and orange meaning two things in one figure."""
    figures = captured(monkeypatch)
    population = Population.from_lists(cost=np.geomspace(2e-4, 1e-3, 30), endowment=20.0)
    result = loop_result(population)
    for record in result.records:
        record.trained_contributions[:] = 0.0
    plots.contributions(result, population, tmp_path / "map.png")
    axis = figures[-1].axes[0]
    assert axis.images[0].get_clim() == (0.0, 20.0) and axis.get_legend() is None
    small = Population.from_lists(cost=[1e-3, 2e-3], endowment=20.0)
    zero = loop_result(small)
    for record in zero.records:
        record.trained_contributions[:] = 0.0
    plots.contributions(zero, small, tmp_path / "bars.png")
    assert figures[-1].axes[0].get_ylim()[0] == 0.0  # its top: the local optima's marks
    summaries = {name: {"total_data": 0.0, "welfare_predicted": 1.0, "welfare_realised": 0.5,
                        "welfare_without_transfers": 1.0, "welfare_social_optimum": 2.0} for name in ("a", "b")}
    plots.welfare_and_data(summaries, tmp_path / "welfare.png")
    left, right = figures[-1].axes
    assert left.get_ylim() == (0.0, 1.0)
    assert {bar.get_facecolor() for bar in right.patches}.isdisjoint({bar.get_facecolor() for bar in left.patches})


def test_the_convergence_figure_draws_the_trained_totals_and_each_calibrated_curve(tmp_path, monkeypatch):
    """Solved for (60.4, 40.4) samples, trained on (60, 40): the loop's line is at 100
    trained samples (not 100.8 solved); a mechanism calibrated to gamma = 4 is drawn as
    a(4 m) = 1 - (4 m)^-1/2 (dashed), the pilot fit as a(m)."""
    figures = captured(monkeypatch)
    population = Population.from_lists(cost=[1e-3, 2e-3], endowment=1e6)
    outcome = replace(StandardFL().solve(population, MODEL), contributions=np.array([60.4, 40.4]))
    calibrated = EffectiveData(MODEL, 4.0)
    training = SimpleNamespace(global_accuracy=np.full(2, 0.9))
    zeros = np.zeros(2)
    result = LoopResult(np.array([10.0, 100.0]), MODEL(np.array([10.0, 100.0])), MODEL,
                        [IterationRecord(0, outcome, calibrated, np.array([60, 40]), training, zeros, zeros, zeros,
                                         zeros)])
    plots.convergence(result, tmp_path / "convergence.png")
    left, right = figures[0].axes
    assert list(left.lines[0].get_ydata()) == [100.0]
    fitted, mechanism = right.lines
    grid = fitted.get_xdata()
    np.testing.assert_allclose(fitted.get_ydata(), 1 - grid ** -0.5)
    np.testing.assert_allclose(mechanism.get_ydata(), 1 - (4 * grid) ** -0.5)
