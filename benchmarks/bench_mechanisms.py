"""Timings of the mechanisms' solvers: ``python benchmarks/bench_mechanisms.py [--only SUBSTR]``.

Each case is a (name, callable) pair in :data:`CASES`; adding a case is one line. Every
case runs ``REPEAT`` times: ``first`` is the first call (for cvxpy contracts it includes
compiling the parameterised program), ``best`` the fastest call (for contracts, a
re-solve of the cached program with new numbers), ``best cpu`` the CPU time of that
fastest call (steadier than wall time on a shared machine), ``first cpu`` that of the first.
Ratios, of CPU times: all-pairs / reduced contract programs for each K where both run,
Shapley values of a sum game valued coalition by coalition / all prefixes at once; and
each case's first and best call against its target where it has one (a user solving
once waits for the first). The
cvxpy contract forms' distance from the closed-form menu at 200 and 1000 types. Last,
the Shapley estimators' error on the economic model against exact values (counted per
coalition size and total): the size strata the mechanism uses beyond 12 agents, and Monte
Carlo, on contributions uniform in 0-30 and on heavy-tailed ones; and a 14-agent
Shapley-rewards equilibrium solved with exact values, with the size strata (the
mechanism's rule, B phi_i / (a(M) - a(0))) and with the size strata divided by their own
sum. One case times an audit (``mechanisms.audit``) of a 100-agent shaping equilibrium;
two time Stackelberg pricing whose agents also receive the model (the leader's search
over rewards, each solving the followers' game (5)) for 1000 and 4000 agents. One times
accuracy shaping among 3000 agents where its fixed point is no equilibrium (the root of the
best responses, by Newton's method), and one standard FL under convex costs where nobody
profitably passes the accuracy curve's zero crossing (no best-response iteration).

``--only SUBSTR`` runs only the cases and the sections (:data:`SECTIONS`) whose name
contains SUBSTR; a ratio is printed where both of its cases ran.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import part_of  # noqa: E402
from incentives.accuracy import EffectiveData, PowerLaw  # noqa: E402
from incentives.equilibrium import social_optimum  # noqa: E402
from incentives.population import Population  # noqa: E402
from mechanisms.audit import MISREPORTS, Audit, audit  # noqa: E402
from mechanisms.screening import clear_program_cache, solve_screening  # noqa: E402
from mechanisms.shaping import AccuracyShaping  # noqa: E402
from mechanisms.shapley import (  # noqa: E402
    ShapleyRewards,
    SumGame,
    counted_shapley,
    gtg_shapley,
    monte_carlo_shapley,
    size_strata_shapley,
)
from mechanisms.stackelberg import StackelbergPricing, follower_equilibrium, leader_reward  # noqa: E402
from mechanisms.standard import StandardFL  # noqa: E402
from mechanisms.values import LogValue  # noqa: E402

REPEAT = 3
rng = np.random.default_rng(0)

# ----------------------------------------------------------------- inputs
N_AGENTS = 100_000
COSTS = rng.uniform(0.5, 2.0, N_AGENTS)          # utility per sample
ENDOWMENTS = rng.uniform(0.5, 3.0, N_AGENTS)     # samples
VALUE = LogValue(10.0)
AGENTS = Population.from_lists(cost=rng.lognormal(-9.0, 0.5, N_AGENTS), endowment=2000.0)
ACCURACY = PowerLaw(1.0, 1.0, 0.5)  # a(m) = 1 - m^(-1/2)
CONVEX = Population.from_lists(cost=rng.lognormal(-20.0, 0.5, N_AGENTS), endowment=2000.0,
                               cost_exponent=3)  # data cost c_i m**3


PILOT = PowerLaw(0.92, 10.38, 1.134)  # a(m) fitted to the digits pilot curve
PRICED = {n: Population.from_lists(cost=np.random.default_rng(n).lognormal(-9.0, 0.5, n), endowment=2000.0)
          for n in (1000, 4000)}
AUDITED = Population.from_lists(cost=np.random.default_rng(100).lognormal(-7.0, 0.5, 100), endowment=50.0)
CALIBRATED = EffectiveData(PILOT, 0.4)  # a loop's calibration of shaping on digits (gamma about 0.4)
SHAPING_ROOT = Population.from_lists(cost=[0.001, 0.002, 0.004] + [1000.0] * 2997,
                                     endowment=[500.0, 2000.0, 300.0] + [100.0] * 2997)  # 3 agents, 2997 priced out
PRICED_OUT = Population.from_lists(cost=10.0, endowment=100.0, n_agents=N_AGENTS, cost_exponent=2)
LIMITED = PowerLaw(0.9, 2.0, 0.5)  # zero crossing 4.94 samples


def shaping_audit() -> Audit:
    """The audit of accuracy shaping's equilibrium among the 100 AUDITED agents (delivered
    as promised): deviations on a grid, and MISREPORTS cost reports an agent."""
    mechanism = AccuracyShaping()
    outcome = mechanism.solve(AUDITED, CALIBRATED)
    return audit(mechanism, outcome, AUDITED, CALIBRATED, outcome.accuracy, outcome.transfer,
                 np.round(outcome.contributions))


SHAPLEY_AGENTS = 50
SHAPLEY_M = rng.uniform(10.0, 500.0, SHAPLEY_AGENTS)  # samples each agent contributes
SHAPLEY_GAME = SumGame(SHAPLEY_M, ACCURACY)  # U(S) = a(M_S), the economic model's game
SHAPLEY_POPULATION = Population.from_lists(cost=np.linspace(1e-4, 1e-3, 25), endowment=1e4)
FIDELITY_AGENTS = 14
FIDELITY_POPULATION = Population.from_lists(cost=np.linspace(1e-4, 1e-3, FIDELITY_AGENTS), endowment=1e4)


def one_coalition_at_a_time(coalition) -> float:
    """The same game as SHAPLEY_GAME, as a plain utility: one a(M_S) per coalition."""
    return float(ACCURACY(float(SHAPLEY_M[list(coalition)].sum())))


def types(K: int) -> tuple[np.ndarray, np.ndarray]:
    """K types: costs in [0.5, 5], random (uneven) probabilities."""
    r = np.random.default_rng(K)
    return np.sort(r.uniform(0.5, 5.0, K)), r.dirichlet(np.ones(K))


def contract(K: int, form: str, outside: float = 0.0, capped: bool = False) -> Callable[[], object]:
    """Solves of the menu for K types, costs x 1.00, 1.01, ... on successive calls;
    ``outside``: type k's outside utility is outside * k (per type: the reduced form
    keeps every IR and the adjacent IC both ways; 0: one common outside utility);
    ``capped``: a reward cap at half the largest reward of the uncapped closed form, which
    binds (as accuracy rewards' cap a(M) may)."""
    cost, p = types(K)
    calls = iter(range(10**9))
    cap = 0.5 * solve_screening(cost, p, VALUE, form="closed_form").reward.max() if capped else None

    def run():  # new numbers on every call: the cached program is re-solved, not rebuilt
        scale = 1.0 + 0.01 * next(calls)
        return solve_screening(cost * scale, p, VALUE, form=form, outside=outside * np.arange(K), reward_cap=cap)

    return run


def closed_form_errors(K: int) -> list[tuple[str, float, str]]:
    """(form, largest |q - q*| / largest q*, status) of each cvxpy form on the
    benchmark's K types (costs x 1.01), q* the closed form's menu; per-type outside
    utilities of 1e-12 k move the optimum by nothing measurable. Where the closed form
    replaced a form's menu, the error is the solver's own menu's (``Menu.extras
    ["closed_form_items"]["items_off"]``, over contributions and rewards alike)."""
    cost, p = types(K)
    exact = solve_screening(cost * 1.01, p, VALUE, form="closed_form").contribution
    out = []
    for label, form, outside in (("reduced", "reduced", 0.0), ("reduced, per-type outside", "reduced", 1e-12),
                                 ("all pairs", "all_pairs", 0.0)):
        menu = solve_screening(cost * 1.01, p, VALUE, form=form, outside=outside * np.arange(K))
        missed = menu.extras.get("closed_form_items")
        error = missed["items_off"] if missed else float(np.max(np.abs(menu.contribution - exact)) / exact.max())
        out.append((label, error, menu.status))
    return out


def all_pairs_case(K: int) -> str:
    """The all-pairs case's name: one program of K(K-1) IC up to 50 types, beyond them
    constraint generation (mechanisms.screening._generate_pairs)."""
    how = "K(K-1) IC in one program" if K <= 50 else "adjacent IC, then every pair checked"
    return f"contract K={K} all pairs (cvxpy, {how})"


# ----------------------------------------------------------------- the cases
CASES: list[tuple[str, Callable[[], object]]] = [
    (f"standard FL equilibrium N={N_AGENTS} (closed form)", lambda: StandardFL().solve(AGENTS, ACCURACY)),
    (f"accuracy shaping equilibrium N={N_AGENTS} (1-D root)",
     lambda: AccuracyShaping().solve(AGENTS, ACCURACY)),
    (f"stackelberg followers N={N_AGENTS} (no caps)", lambda: follower_equilibrium(COSTS, 1e5)),
    (f"stackelberg followers N={N_AGENTS} (endowment caps)",
     lambda: follower_equilibrium(COSTS, 1e5, ENDOWMENTS)),
    (f"stackelberg leader R* N={N_AGENTS} (closed form)", lambda: leader_reward(COSTS, VALUE)),
    (f"standard FL equilibrium N={N_AGENTS}, costs c m^3 (1-D root)",
     lambda: StandardFL().solve(CONVEX, ACCURACY)),
    (f"social optimum N={N_AGENTS}, costs c m^3 (equal marginal costs)",
     lambda: social_optimum(CONVEX, ACCURACY)),
    (f"stackelberg followers N={N_AGENTS}, costs c x^3 (1-D root, endowment caps)",
     lambda: follower_equilibrium(COSTS, 1e5, ENDOWMENTS, cost_exponent=3)),
    *[(f"stackelberg pricing N={n} (agents also receive the model: game (5) at 64+ rewards)",
       lambda n=n: StackelbergPricing(VALUE).solve(PRICED[n], ACCURACY)) for n in PRICED],
    (f"shapley values N={SHAPLEY_AGENTS} monte carlo K=100 (sum game, prefixes at once)",
     lambda: monte_carlo_shapley(SHAPLEY_GAME, SHAPLEY_AGENTS)),
    (f"shapley values N={SHAPLEY_AGENTS} monte carlo K=100 (one coalition at a time)",
     lambda: monte_carlo_shapley(one_coalition_at_a_time, SHAPLEY_AGENTS)),
    (f"shapley values N={SHAPLEY_AGENTS} gtg (sum game, prefixes at once)",
     lambda: gtg_shapley(SHAPLEY_GAME, SHAPLEY_AGENTS, round_eps=0.0)),
    (f"shapley values N={SHAPLEY_AGENTS} gtg (one coalition at a time)",
     lambda: gtg_shapley(one_coalition_at_a_time, SHAPLEY_AGENTS, round_eps=0.0)),
    (f"shapley values N={SHAPLEY_AGENTS} size strata (sizes 0-2 and the 3 heaviest exact)",
     lambda: size_strata_shapley(SHAPLEY_GAME)),
    ("shapley rewards equilibrium N=25 (size strata, best responses)",
     lambda: ShapleyRewards(1.0).solve(SHAPLEY_POPULATION, ACCURACY)),
    (f"audit of accuracy shaping N={AUDITED.n_agents} (grid deviations, {MISREPORTS} cost reports an agent)",
     shaping_audit),
    (f"accuracy shaping N={SHAPING_ROOT.n_agents}, the fixed point no equilibrium (Newton on BR(m) - m, O(N) a step)",
     lambda: AccuracyShaping().solve(SHAPING_ROOT, EffectiveData(LIMITED, 0.3))),
    (f"standard FL N={N_AGENTS}, costs c m^2, nobody passes the zero crossing (no iteration)",
     lambda: StandardFL().solve(PRICED_OUT, LIMITED)),
]
for K in (10, 100, 1000):
    CASES.append((f"contract K={K} closed form (virtual costs + ironing)", contract(K, "closed_form")))
for K in (10, 50, 100, 200, 1000):
    CASES.append((f"contract K={K} reduced (cvxpy, O(K) constraints)", contract(K, "reduced")))
CASES.append(("contract K=1000 reduced, per-type outside (cvxpy, adjacent IC)", contract(1000, "reduced", 1e-12)))
CASES.append(("contract K=1000 reduced, a reward cap that binds (cvxpy)", contract(1000, "reduced", capped=True)))
for K in (10, 50, 100, 200, 1000):
    CASES.append((all_pairs_case(K), contract(K, "all_pairs")))

SECTIONS = (  # the names of the sections after the cases' table, for --only
    "contract menus against the closed form, K=200 and 1000",
    "shapley estimators' error against exact values, N=16, 40 and 60",
    "size strata sweep against exact values",
    f"shapley rewards equilibrium N={FIDELITY_AGENTS}, exact values against size strata",
)
MENUS, ERRORS, SWEEP, FIDELITY = SECTIONS

TARGETS = {  # seconds, for the "vs target" column: 10^5 agents within 1 s, 1000 types within a few seconds
    **{name: 1.0 for name, _ in CASES[:8]},
    f"standard FL N={N_AGENTS}, costs c m^2, nobody passes the zero crossing (no iteration)": 1.0,
    "contract K=1000 reduced (cvxpy, O(K) constraints)": 3.0,
    "contract K=1000 reduced, per-type outside (cvxpy, adjacent IC)": 3.0,
    "contract K=1000 reduced, a reward cap that binds (cvxpy)": 3.0,
}


def timed(fn: Callable[[], object], repeat: int = REPEAT) -> tuple[float, float, float, float]:
    """(first wall time, best wall time, CPU time of this process in the call of the best
    wall time, in the first call), seconds; the contract programs' cache is emptied first, so that every
    case's first call compiles (the per-type case compiles the program all pairs use
    beyond 50 types)."""
    clear_program_cache()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    best = int(np.argmin(wall))
    return wall[0], wall[best], cpu[best], cpu[0]


def warm_up() -> None:
    """Solve a 3-type menu in each cvxpy form once before any case is timed, so that no
    case's first call pays the process's one-time start-up of cvxpy (about 8 ms: the
    reduced K=10 menu, timed first, read 0.8x of all pairs' first call instead of 1.4x)."""
    for form in ("reduced", "all_pairs"):
        contract(3, form)()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=part_of([name for name, _ in CASES] + list(SECTIONS)), metavar="SUBSTR",
                        help="run only the cases and sections whose name contains SUBSTR")
    args = parser.parse_args(argv)

    def chosen(name: str) -> bool:
        return args.only is None or args.only in name

    results: dict[str, tuple[float, float]] = {}  # name -> CPU seconds of (the first call, the best)
    cases = [(name, fn) for name, fn in CASES if chosen(name)]
    if cases:
        width = max(len(name) for name, _ in cases)
        warm_up()
        print(f"{'case':<{width}}  {'first [s]':>10}  {'best [s]':>10}  {'best cpu':>10}  {'first cpu':>10}  "
              "vs target (first, best)")
        for name, fn in cases:
            first, best, cpu, first_cpu = timed(fn)
            results[name] = (first_cpu, cpu)
            target = TARGETS.get(name)
            note = f"{first / target:6.3f}x, {best / target:6.3f}x of {target:g} s" if target else ""
            print(f"{name:<{width}}  {first:10.4f}  {best:10.4f}  {cpu:10.4f}  {first_cpu:10.4f}  {note}", flush=True)
        print()
    lines = []
    for K in (10, 50, 100, 200, 1000):
        pair = all_pairs_case(K)
        reduced = f"contract K={K} reduced (cvxpy, O(K) constraints)"
        if pair in results and reduced in results:
            (f1, b1), (f2, b2) = results[pair], results[reduced]
            lines.append(f"  K={K:<5d} first {f1 / f2:8.1f}x   re-solve {b1 / b2:8.1f}x")
    if lines:
        print("ratio all-pairs / reduced, CPU time (first call incl. compile; best = re-solve; the all-pairs "
              "program of K(K-1) IC up to 50 types, beyond them constraint generation from the adjacent IC)",
              *lines, sep="\n")
    if chosen(MENUS):
        print("contract menus against the closed form (costs x 1.01): largest |q - q*| / largest q*")
        for K in (200, 1000):
            errors = closed_form_errors(K)
            print(f"  K={K:<5d}" + "".join(f"  {label} {error:.1e} ({status})" for label, error, status in errors))
    lines = []
    for estimator in ("monte carlo K=100", "gtg"):
        alone, together = (f"shapley values N={SHAPLEY_AGENTS} {estimator} ({how})"
                           for how in ("one coalition at a time", "sum game, prefixes at once"))
        if alone in results and together in results:
            lines.append(f"  {estimator:<17} {results[alone][1] / results[together][1]:8.1f}x")
    if lines:
        print("ratio one coalition at a time / sum game (best, CPU time), Shapley values on the economic model",
              *lines, sep="\n")
    if chosen(ERRORS):
        print("error against the exact values (largest |error| / largest value), Shapley values of a(M_S), a = the "
              "digits pilot fit, on whole contributions uniform in 0-30 and rounded lognormal(2.5, 1.2) (a few giants)")
        for weights in ("uniform 0-30", "lognormal(2.5, 1.2), a few giants"):
            for n_players in (16, 40, 60):
                print(f"  {weights:<33} N={n_players:<3d}"
                      + "".join(f"  {name} {error:6.2%}" for name, error in strata_errors(n_players, weights)))
    if chosen(SWEEP):
        print(f"size strata against the exact values, worst over {len(SWEEP_SEEDS)} games at each of {SWEEP_PLAYERS} "
              "players, a = the pilot fit and 1 - m^-1/2 (largest |error| / largest value; |sum / exact sum - 1|)")
        for (weights, players), (error, total) in strata_sweep().items():
            print(f"  {weights:<38} {players:<13} {error:6.2%}  sum {total:6.2%}")
    if chosen(FIDELITY):
        print(f"shapley rewards equilibrium N={FIDELITY_AGENTS} (a = 1 - m^-1/2, B = 1): exact values against size "
              "strata")
        mechanisms = (("exact (2^N coalitions)", ExactModelValues(1.0)), ("size strata", ShapleyRewards(1.0)),
                      ("size strata / their sum", SharesOfTheirSum(1.0)))
        for label, mechanism in mechanisms:
            start = time.perf_counter()
            outcome = mechanism.solve(FIDELITY_POPULATION, ACCURACY)
            seconds = time.perf_counter() - start
            print(f"  {label:<24} total {outcome.total:8.2f} samples, cheapest agent {outcome.contributions[0]:7.2f}, "
                  f"promised transfers {outcome.transfer.sum():.7f} B, {seconds:5.1f} s")


class ExactModelValues(ShapleyRewards):
    """Shapley rewards valuing the model over all 2^N coalitions up to 20 agents (the
    mechanism itself does up to 12: beyond, an allocation takes milliseconds)."""

    def model_values(self, n_agents: int) -> str:
        return "exact" if n_agents <= 20 else super().model_values(n_agents)


class SharesOfTheirSum(ShapleyRewards):
    """Shapley rewards paying B phi_i / sum_j phi_j on the size strata's approximate values,
    the rule before B phi_i / (a(M) - a(0)) (see ``ShapleyRewards``): every agent's
    transfer then moves with every other's approximation error. Without ``allocate_to``
    (it needs everyone's values), so best responses evaluate ``allocate`` point by point."""

    allocate_to = None

    def _transfers(self, m, values, model):
        accuracy, _ = super()._transfers(m, values, model)
        return accuracy, self.budget * values / np.maximum(values.sum(axis=1, keepdims=True), 1e-300)


SWEEP_SEEDS = range(4)
SWEEP_PLAYERS = (13, 16, 20, 30, 60, 100)
SWEEP_WEIGHTS = {  # contributions of a sweep game: name -> (rng, n) -> whole samples
    "uniform 0-30": lambda rng, n: rng.integers(0, 31, n).astype(float),
    "uniform 0-30, 4 holding nothing": lambda rng, n: np.concatenate([np.zeros(4), rng.integers(0, 31, n - 4)]),
    "lognormal(2.5, 0.6)": lambda rng, n: np.round(rng.lognormal(2.5, 0.6, n)),
    "lognormal(2.5, 1.2), a few giants": lambda rng, n: np.round(rng.lognormal(2.5, 1.2, n)),
}


def strata_sweep() -> dict[tuple[str, str], tuple[float, float]]:
    """{(weights, players): (largest error / largest exact value, |sum / exact sum - 1|)}
    of :func:`size_strata_shapley` against :func:`counted_shapley`, the worst over the
    sweep's games, up to 20 players and beyond."""
    curves = (PILOT, PowerLaw(1.0, 1.0, 0.5))
    worst: dict[tuple[str, str], tuple[float, float]] = {}
    for weights, draw in SWEEP_WEIGHTS.items():
        for n_players in SWEEP_PLAYERS:
            for seed, curve in itertools.product(SWEEP_SEEDS, curves):
                game = SumGame(draw(np.random.default_rng(seed), n_players), curve)
                exact, estimate = counted_shapley(game).values, size_strata_shapley(game).values
                key = (weights, "13-20 players" if n_players <= 20 else "30-100 players")
                error = float(np.max(np.abs(estimate - exact)) / np.max(exact))
                total = abs(float(estimate.sum() / exact.sum()) - 1.0)
                worst[key] = tuple(np.maximum(worst.get(key, (0.0, 0.0)), (error, total)))
    return worst


def strata_errors(n_players: int, weights: str) -> list[tuple[str, float]]:
    """(estimator, largest error / largest exact value) on one random game of n_players
    whose contributions are drawn as ``SWEEP_WEIGHTS[weights]`` draws them."""
    w = SWEEP_WEIGHTS[weights](np.random.default_rng(3), n_players)
    game = SumGame(w, PILOT)
    exact = counted_shapley(game).values
    estimates = {"size strata": size_strata_shapley(game).values,
                 "monte carlo K=100": monte_carlo_shapley(game, n_players, n_permutations=100, seed=0).values,
                 "monte carlo K=10000": monte_carlo_shapley(game, n_players, n_permutations=10_000, seed=0).values}
    return [(name, float(np.max(np.abs(v - exact)) / np.max(exact))) for name, v in estimates.items()]


if __name__ == "__main__":
    main()
