"""Equilibria of the contribution game any :class:`~incentives.protocols.Mechanism` defines.

The game: each agent i chooses m_i in [0, n_i] (samples) or not to take part; the
mechanism's rule ``allocate(m)`` gives it accuracy a_i(m) and transfer t_i(m), and its
payoff is u_i from :func:`incentives.utility.utility`. The solvers here are numerical and
generic (they only call ``allocate``), so they check the closed forms each mechanism's
``solve`` returns:

- :func:`best_response`: agent i's utility-maximising m_i given the others;
- :func:`nash_equilibrium`: Gauss-Seidel best-response iteration (optionally damped);
- :func:`verify_equilibrium`: every agent's largest gain from a unilateral deviation;
- :func:`settle_participation`: who takes part, given the outside options;
- :func:`social_optimum`: the planner's contributions when everyone receives a(M).

Ties are broken toward the larger contribution: an agent indifferent over an interval
contributes its right end (the epsilon -> 0 limit of Karimireddy, Guo & Jordan 2022).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterator

import numpy as np
from scipy.optimize import minimize_scalar

from incentives.accuracy import AccuracyModel, check_phi
from incentives.checks import (as_floats, bad, check_agent, check_entries, check_integer, check_mechanism, check_number,
                               check_once, check_participates, finite_number, range_text)
from incentives.population import Population, check_world
from incentives.protocols import Allocation, Mechanism, Outcome
from incentives.search import maximise
from incentives.utility import Phi, utility

_BISECTION_STEPS = 60
_XTOL = 1e-10  # a best response's precision, samples per sample of max(1, m_i)
RESOLUTION = 1e-9  # the smallest contribution searched, as a share of the endowment
PARTICIPATION_SLACK = 1e-9  # a shortfall below r_i (or gain above it) of at most this share of max(1, |r_i|) is none
_PEAKS = 3  # the grid's local maxima a best response refines, the highest first
_EXHAUSTIVE_PLANS = 1024  # the social optimum tries every participation plan when there are at most this many
# the fewest grid points a search takes: size - size // 3 >= 31 log-spaced points over the 9 decades
# [n * RESOLUTION, n], a factor 10**(9/30) < 2 apart, so a set of better points that holds some [x, 2 x]
# in there meets the grid (with 15 linear points, n / 14 apart)
LEAST_GRID = 46
MOST_TIE_TOL = 1e-6  # ties cover rounding (float64: ~1e-16 of the terms); beyond this, real losses would count


@dataclass(frozen=True)
class Response:
    """An agent's best response: samples, its utility, and whether it takes part."""

    contribution: float
    utility: float
    participates: bool


@dataclass(frozen=True)
class Equilibrium:
    """A profile found by best-response iteration.

    contributions, participates, utilities: arrays of shape (N,).
    converged: whether, in the last sweep, every best response lay within the tolerance of
    the agent's contribution (:func:`nash_equilibrium`).
    iterations: sweeps done; max_change: the largest |BR_i - m_i| in the last sweep (samples;
    the undamped move).
    """

    contributions: np.ndarray
    participates: np.ndarray
    utilities: np.ndarray
    converged: bool
    iterations: int
    max_change: float

    @property
    def total(self) -> float:
        return float(np.sum(self.contributions))


@dataclass(frozen=True)
class Verification:
    """Result of :func:`verify_equilibrium`.

    gains: (N,) best deviation utility minus current utility (utility units; <= ~0 at an equilibrium).
    deviations: (N,) the best deviation found (samples; NaN where it is leaving for the outside option,
        or no better than leaving, as a contribution a contract does not reward: it signs nothing).
    ok: every gain is within the tolerance.
    """

    gains: np.ndarray
    deviations: np.ndarray
    ok: bool


@dataclass(frozen=True)
class Participation:
    """Result of :func:`settle_participation`: arrays of shape (N,), zeros for agents outside."""

    contributions: np.ndarray
    participates: np.ndarray
    accuracy: np.ndarray
    transfer: np.ndarray


@dataclass(frozen=True)
class SocialOptimum:
    """The planner's solution: contributions (N,), total M, accuracy a(M), welfare (sum of
    u_i, an agent left out counted at its outside option), and who takes part (N,)."""

    contributions: np.ndarray
    total: float
    accuracy: float
    welfare: float
    participates: np.ndarray


def _utilities(mechanism: Mechanism, i: int, contributions, population: Population, model: AccuracyModel,
               phi: Phi | None, points: np.ndarray) -> np.ndarray:
    """u_i at each of ``points``, the others keeping theirs, from what the rule gives agent i
    there (:func:`_agent_allocation`); its outside option where the rule leaves it out
    (``Allocation.takes_part``)."""
    share = _agent_allocation(mechanism, i, contributions, population, model, points)
    a = np.asarray(share.accuracy, dtype=float)
    v, c, comm, beta = population.value[i], population.cost[i], population.comm_cost[i], population.cost_exponent
    inside = v * (a if phi is None else np.asarray(phi(a), dtype=float)) + share.transfer - c * points**beta - comm
    return inside if share.takes_part is None else np.where(share.takes_part, inside, population.outside_option[i])


def _agent_allocation(mechanism: Mechanism, i: int, contributions, population: Population, model: AccuracyModel,
                      points: np.ndarray) -> Allocation:
    """Agent i's accuracy, transfer and taking part at each of ``points``, (P,) arrays,
    the others keeping theirs: one call of the mechanism's ``allocate_to`` where it has
    one, else ``allocate`` point by point; the same numbers either way."""
    profiles = np.repeat(np.asarray(contributions, dtype=float)[None, :], len(points), axis=0)
    profiles[:, i] = points
    allocate_to = getattr(mechanism, "allocate_to", None)
    if allocate_to is not None:
        share = allocate_to(i, profiles, population, model)
        given = {"accuracy": share.accuracy, "transfer": share.transfer}
        if share.takes_part is not None:  # None: everyone takes part
            given["takes_part"] = share.takes_part
        for key, value in given.items():  # (G, N) arrays broadcast in the utility, or failed there
            if np.shape(value) != (len(points),):
                raise ValueError(f"{getattr(mechanism, 'name', mechanism)!r}.allocate_to(i, profiles of shape "
                                 f"{profiles.shape}, ...).{key} has shape {np.shape(value)}: allowed is "
                                 f"({len(points)},), agent i's under each profile")
        check_once(_AGREED, mechanism, lambda: _check_agrees(mechanism, i, profiles, share, population, model))
        return share
    rows = [mechanism.allocate(profile, population, model) for profile in profiles]
    takes_part = None if rows[0].takes_part is None else np.array([row.takes_part[i] for row in rows])
    return Allocation(np.array([row.accuracy[i] for row in rows]), np.array([row.transfer[i] for row in rows]),
                      takes_part)


_AGREED: dict[int, weakref.ref] = {}  # id -> the mechanisms whose allocate_to has agreed with their allocate


def _check_agrees(mechanism: Mechanism, i: int, profiles: np.ndarray, share: Allocation, population: Population,
                  model: AccuracyModel) -> None:
    """ValueError naming the mechanism, the profile and the numbers where ``share``, what
    its ``allocate_to(i, profiles, ...)`` gave, differs from agent i's entries of its
    ``allocate`` at the first, middle and last of the (G, N) ``profiles`` (relative
    tolerance 1e-6): the solvers take the one for the other, and an ``allocate_to`` of
    other numbers gave another game's equilibrium without a word."""
    name = getattr(mechanism, "name", mechanism)
    for g in sorted({0, len(profiles) // 2, len(profiles) - 1}):
        whole = mechanism.allocate(profiles[g], population, model)
        pairs = [("accuracy", share.accuracy[g], whole.accuracy[i]), ("transfer", share.transfer[g], whole.transfer[i])]
        if share.takes_part is not None or whole.takes_part is not None:
            pairs.append(("takes_part", True if share.takes_part is None else share.takes_part[g],
                          True if whole.takes_part is None else whole.takes_part[i]))
        for key, fast, plain in pairs:
            if not np.isclose(float(fast), float(plain), rtol=1e-6, atol=1e-12):
                raise ValueError(
                    f"{name!r}.allocate_to({i}, profiles, ...).{key}={float(fast)!r} at the profile m with "
                    f"m[{i}]={float(profiles[g, i])!r} (the others' as given), where allocate(m, ...).{key}[{i}]="
                    f"{float(plain)!r}: allowed is allocate_to giving agent i's numbers of allocate under each profile "
                    "(incentives.protocols.Mechanism)")


def _grid(endowment: float, current: float, size: int, breakpoints=()) -> np.ndarray:
    """Sorted points of [0, n]: linear, log-spaced (down to n * RESOLUTION), around the
    current m, and the mechanism's ``breakpoints`` (:func:`_breakpoints`)."""
    linear = np.linspace(0.0, endowment, max(size // 3, 2))
    logarithmic = np.geomspace(endowment * RESOLUTION, endowment, max(size - size // 3, 2))
    near = current * (1.0 + np.array([-1e-3, -1e-6, 0.0, 1e-6, 1e-3]))
    points = np.concatenate([linear, logarithmic, near, np.asarray(breakpoints, dtype=float)])
    return np.unique(np.clip(points, 0.0, endowment))


def _breakpoints(mechanism: Mechanism, i: int, population: Population, model: AccuracyModel) -> np.ndarray:
    """The contributions where the rule gives agent i a step up (``mechanism.breakpoints``,
    e.g. a contract's items): a step function's best point lies exactly on one, which no
    grid need contain; none for a mechanism without them. ValueError naming the method
    where they are not samples >= 0 (NaN was refused as "m=nan", naming no method)."""
    breakpoints = getattr(mechanism, "breakpoints", None)
    if breakpoints is None:
        return np.zeros(0)
    key = f"{getattr(mechanism, 'name', mechanism)!r}.breakpoints({i}, ...)"
    points = as_floats(key, breakpoints(i, population, model), "samples >= 0", booleans=False)
    check_entries(key, points, least=0.0)
    return points.reshape(-1)


def _peaks(values: np.ndarray) -> list[int]:
    """Indices of the grid's highest local maxima (at most ``_PEAKS``; a plateau counts
    once, at its right end), the overall maximum first, the others only where their
    grid value is within 1% of the grid's range of it: where a utility has two peaks of
    nearly equal height, the cell of the higher grid value can hold the lower one."""
    left = np.concatenate([[-np.inf], values[:-1]])
    right = np.concatenate([values[1:], [-np.inf]])
    close = values >= values.max() - 0.01 * (values.max() - values.min())
    peaks = np.flatnonzero((values >= left) & (values > right) & close)
    top = int(np.argmax(values))
    ranked = [int(k) for k in peaks[np.argsort(-values[peaks], kind="stable")] if k != top]
    return [top, *ranked[:_PEAKS - 1]]


def _refined_maximum(u: Callable[[float], float], grid: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(m, u(m)): the best of the ``grid`` (its ``values``) and of bounded scalar
    maximisation of ``u`` over the two cells around each of the grid's highest local
    maxima (:func:`_peaks`: the best cell may hold the lower of two peaks)."""
    j = int(np.argmax(values))
    best_m, best_u = float(grid[j]), float(values[j])
    for peak in _peaks(values):
        lo, hi = grid[max(peak - 1, 0)], grid[min(peak + 1, len(grid) - 1)]
        if hi > lo:
            result = minimize_scalar(
                lambda m: -u(m), bounds=(lo, hi), method="bounded", options={"xatol": _XTOL * max(1.0, hi)}
            )
            if -result.fun > best_u:
                best_m, best_u = float(result.x), float(-result.fun)
    return best_m, best_u


def best_response(
    mechanism: Mechanism,
    i: int,
    contributions,
    population: Population,
    model: AccuracyModel,
    *,
    phi: Phi | None = None,
    grid_size: int = 160,
    tie_tol: float = 1e-13,
) -> Response:
    """argmax over m_i in [0, n_i] of u_i(m_i, m_{-i}), or leaving if the outside option is
    better by more than a tie: r_i > max + tie_tol * scale (an agent whose outside option
    equals its best utility, such as r_i = its local utility, takes part).

    Robust to kinks and plateaus: u_i is evaluated on a grid (linear plus log-spaced, plus
    points around the current m_i), refined by bounded scalar minimisation of -u_i over the
    two cells around each of the grid's highest local maxima (:func:`_peaks`), then moved
    right to the end of the set where u_i >= max - tie_tol * scale (bisection),
    scale = max(1, |max|, v_i, c_i m_i**beta), the size of the terms whose rounding
    tie_tol must cover: ties go to the larger contribution.
    The scalar search and the bisection both stop at 1e-10 * max(1, m_i) samples.
    At a smooth interior maximum this moves m_i right by about sqrt(2 tie_tol scale / |u_i''|);
    at a maximum at m_i = 0, where u_i falls with slope s, by tie_tol scale / s, so a set
    of ties that starts at 0 and ends below the resolution n_i * RESOLUTION is taken as 0
    (a free rider contributes nothing, not 1e-10 samples).

    grid_size: an integer >= LEAST_GRID (46: the log-spaced points a factor < 2 apart);
    tie_tol: a number in [0, MOST_TIE_TOL] (1e-6: ties cover rounding, not real losses);
    ValueError naming the argument otherwise.
    """
    check_mechanism("mechanism", mechanism, "allocate", named=False)
    check_world(population, model)
    check_agent(i, population.n_agents)
    contributions = population.check_contributions(contributions)
    check_phi(phi)
    check_integer("grid_size", grid_size, least=LEAST_GRID)
    if not (finite_number(tie_tol) and 0 <= tie_tol <= MOST_TIE_TOL):
        raise bad("tie_tol", tie_tol, f"{range_text(0.0, MOST_TIE_TOL)} (a tolerance relative to the utility's "
                  "terms, for rounding)")
    n_i = float(population.endowment[i])

    def u(m: float) -> float:
        return float(_utilities(mechanism, i, contributions, population, model, phi, np.array([m]))[0])

    grid = _grid(n_i, float(np.clip(contributions[i], 0.0, n_i)), grid_size,
                 _breakpoints(mechanism, i, population, model))
    values = _utilities(mechanism, i, contributions, population, model, phi, grid)
    peak_m, peak = _refined_maximum(u, grid, values)

    scale = max(1.0, abs(peak), float(population.value[i]),
                float(population.cost[i]) * peak_m ** population.cost_exponent)
    tie = tie_tol * scale
    if population.outside_option[i] > peak + tie:  # staying loses more than a tie: leave
        return Response(0.0, float(population.outside_option[i]), False)
    threshold = peak - tie
    start = float(np.max(grid[values >= threshold], initial=peak_m))
    above = grid[grid > start]
    if above.size:  # u(start) >= threshold > u(above[0]): bisect for the plateau's right end
        left, right = start, float(above[0])
        for _ in range(_BISECTION_STEPS):
            if right - left <= _XTOL * max(1.0, right):
                break
            mid = 0.5 * (left + right)
            left, right = (mid, right) if u(mid) >= threshold else (left, mid)
        start = left
    if start < n_i * RESOLUTION and values[0] >= threshold:  # values[0] = u(0): the grid starts at 0
        start = 0.0
    return Response(start, peak if start == peak_m else u(start), True)


def nash_equilibrium(
    mechanism: Mechanism,
    population: Population,
    model: AccuracyModel,
    *,
    start=None,
    tol: float = 1e-6,
    max_iter: int = 200,
    damping: float = 0.0,
    phi: Phi | None = None,
    grid_size: int = 160,
) -> Equilibrium:
    """Gauss-Seidel best-response iteration: m_i <- (1 - damping) BR_i(m) + damping m_i, i = 1..N
    (m_i <- 0 for an agent that leaves).

    Starts from ``start`` (default: nobody contributes; else (N,) contributions, checked
    as :meth:`Population.check_contributions` checks them) and stops after the first sweep
    in which every agent's best response lies within ``tol * max(1, m_i)`` samples of its
    contribution, |BR_i(m) - m_i| (|0 - m_i| for one that leaves; the distance to the
    best response, not the damped step, so a converged profile is a fixed point within
    tol whatever the damping), or after ``max_iter`` sweeps (``converged`` is then False;
    ``max_change`` is the last sweep's largest |BR_i(m) - m_i|, in samples). Each agent's
    move is judged against its own contribution: against max(1, M) an agent of 7e-4
    samples beside one of 1e6 stopped after moving 0.6, far from its best response (0.74).
    damping in [0, 1); grid_size: an integer >= LEAST_GRID (see :func:`best_response`).
    """
    check_mechanism("mechanism", mechanism, "allocate", named=False)
    check_world(population, model)
    check_phi(phi)
    if not (finite_number(damping) and 0 <= damping < 1):
        raise ValueError(f"damping={damping!r}: allowed is a number in [0, 1)")
    check_integer("max_iter", max_iter)
    check_number("tol", tol)
    check_integer("grid_size", grid_size, least=LEAST_GRID)
    n = population.n_agents
    m = np.zeros(n) if start is None else population.check_contributions(start, "start")
    participates = np.ones(n, dtype=bool)
    change = relative = np.inf
    for iteration in range(1, max_iter + 1):
        change = relative = 0.0
        for i in range(n):
            response = best_response(mechanism, i, m, population, model, phi=phi, grid_size=grid_size)
            target = response.contribution if response.participates else 0.0
            move = abs(target - m[i])
            change, relative = max(change, move), max(relative, move / max(1.0, m[i]))
            m[i] = (1.0 - damping) * target + damping * m[i] if response.participates else 0.0
            participates[i] = response.participates
        if relative <= tol:
            break
    allocation = mechanism.allocate(m, population, model)
    utilities = utility(population, allocation.accuracy, m, allocation.transfer, _inside(participates, allocation), phi)
    return Equilibrium(m, participates, utilities, bool(relative <= tol), iteration, float(change))


def _inside(participates: np.ndarray, allocation: Allocation) -> np.ndarray:
    """The agents that take part and that the rule counts in (``Allocation.takes_part``)."""
    return participates if allocation.takes_part is None else participates & allocation.takes_part


def verify_equilibrium(
    mechanism: Mechanism,
    contributions,
    population: Population,
    model: AccuracyModel,
    *,
    participates=None,
    tol: float = 1e-9,
    grid_size: int = 257,
    phi: Phi | None = None,
) -> Verification:
    """Largest gain each agent gets from deviating alone; ok iff no gain exceeds tol.

    Deviations tried: every point of a grid over [0, n_i] (linear, log-spaced and next to
    the current m_i), refined by bounded scalar search around the grid's highest peaks as
    :func:`best_response` is (a grid alone understates a gain near a smooth maximum), and
    leaving for the outside option (or joining, for an agent outside). gain_i = best
    deviation utility - current utility; ok iff
    gain_i <= tol * max(1, |u_i|) for all i.

    mechanism: a mechanism object (``StandardFL()``, not the class); contributions: (N,)
    with 0 <= m_i <= n_i (an Outcome's ``contributions``, not the Outcome), and m_i = 0 for
    an agent outside (its data would raise the others' accuracy while it is counted at its
    outside option); participates: None or (N,) booleans; tol: a finite number >= 0;
    grid_size: an integer >= LEAST_GRID (see :func:`best_response`). ValueError naming the
    argument otherwise.
    """
    check_mechanism("mechanism", mechanism, "allocate")
    check_world(population, model)
    if isinstance(contributions, Outcome):
        raise bad("contributions", contributions, "an (N,) array of samples: pass outcome.contributions (and "
                  "participates=outcome.participates)")
    m = population.check_contributions(contributions)
    participates = check_participates(participates, population.n_agents)
    outside_giving = np.flatnonzero(~participates & (m > 0))
    if outside_giving.size:
        i = int(outside_giving[0])
        raise ValueError(f"contributions[{i}]={float(m[i])!r} with participates[{i}]=False: allowed is 0 for an "
                         "agent outside (it contributes nothing)")
    check_number("tol", tol)
    check_integer("grid_size", grid_size, least=LEAST_GRID)
    check_phi(phi)
    allocation = mechanism.allocate(m, population, model)
    current = utility(population, allocation.accuracy, m, allocation.transfer, _inside(participates, allocation), phi)
    gains = np.empty(population.n_agents)
    deviations = np.empty(population.n_agents)
    for i in range(population.n_agents):
        grid = _grid(float(population.endowment[i]), float(m[i]), grid_size,
                     _breakpoints(mechanism, i, population, model))
        values = _utilities(mechanism, i, m, population, model, phi, grid)
        deviations[i], best = _refined_maximum(
            lambda x: float(_utilities(mechanism, i, m, population, model, phi, np.array([x]))[0]), grid, values)
        if participates[i] and population.outside_option[i] >= best:  # also a contribution that signs nothing
            best, deviations[i] = population.outside_option[i], np.nan
        gains[i] = best - current[i]
    ok = bool(np.all(gains <= tol * np.maximum(1.0, np.abs(current))))
    return Verification(gains, deviations, ok)


def settle_participation(
    contribute: Callable[[Population], np.ndarray],
    allocate: Callable[[np.ndarray, Population], Allocation],
    population: Population,
) -> Participation:
    """Who takes part: a set S that nobody in it leaves and nobody outside joins, by
    alternating exits and re-entries, starting from everyone.

    Exits: solve the game among S, let leave the agent furthest below its outside option
    r_i, and repeat until nobody in S is below it. One agent at a time: the others'
    utilities change once it has left (a Stackelberg reward is shared among fewer), and
    removing everyone below at once removed agents who would then have stayed (with
    communication costs (0, 0, 0.60, 0.61) and equal data costs, both costly agents left,
    although agent 2 does better than staying out once agent 3 has).
    Re-entry: once exits settle, every agent j outside is offered S + {j}: the game is
    solved there, and the agent of the largest gain u_j(S + {j}) - r_j > 0 joins (an
    agent that left early can gain once later exits changed the game); exits then
    settle again. Ties go to the lowest index; "below" and "gain" both allow
    PARTICIPATION_SLACK max(1, |r_i|): the games are solved to that tolerance on a gain
    (:func:`verify_equilibrium`'s, Stackelberg's followers'), so an agent whose
    equilibrium utility falls short of r_i by less is indifferent within the solver's
    precision. A slack of 1e-12 let a Stackelberg follower the leader's reward left at
    -6.3e-10 (where contributing nothing gains it 0) leave, and the game replayed without
    it paid 4.5 times the reward for 17% less profit.

    The result is stable both ways (nobody in S below r_i, nobody outside above r_j in
    S + {j}) unless the alternation does not end (no potential function makes it end in
    general): it stops when an exit-settled set repeats (a cycle) or after 2N re-entries
    (a bound on the work: 2N passes of at most N entrants' solves and N exits each,
    O(N^2) solves), with a warning naming the agent that would still join; S is then
    exit-settled only. Where nobody leaves, nobody is offered re-entry and S is
    everyone, from one solve.

    ``contribute(sub_population)`` returns the mechanism's contributions among the agents
    of ``sub_population``, and ``allocate(contributions, sub_population)`` what its rule
    gives them there (a mechanism's ``allocate`` under its accuracy model, or the rule as
    ``contribute`` last set it, e.g. under the reward announced to those agents; the last
    ``contribute`` is always among the agents of the result).
    With the default outside options (0) and no communication costs nobody leaves.
    Warnings raised while a game is solved (a mechanism's best responses that do not
    settle ...) are heard for the game returned only, which is solved once more where it
    raised any, so that they come from where they arise (their module's filters apply):
    those of the games tried on the way, among agents who then left or did not join,
    said "not an equilibrium" of a profile the outcome does not hold.
    """
    n = population.n_agents
    played: list = []  # the last game solved: its agents (N,) mask, their contributions, the allocation, warnings

    def play(members: np.ndarray, heard: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The game among ``members`` (N,) solved: its agents' utilities and outside options;
        its warnings held back (whether it raised any kept) unless ``heard``."""
        sub = population.subset(members)
        with warnings.catch_warnings(record=not heard) as said:  # None where heard
            if not heard:
                warnings.simplefilter("always")
            m_sub = np.asarray(contribute(sub), dtype=float)
            allocation = allocate(m_sub, sub)
        played[:] = [members.copy(), m_sub, allocation, bool(said)]
        return utility(sub, allocation.accuracy, m_sub, allocation.transfer), sub.outside_option

    def slack(option: np.ndarray) -> np.ndarray:
        return PARTICIPATION_SLACK * np.maximum(1.0, np.abs(option))

    inside = np.ones(n, dtype=bool)
    entrants: dict[bytes, int | None] = {}  # each exit-settled set met: the agent that joins it
    for passes in range(2 * n + 1):
        while inside.any():  # exits, one agent at a time
            u, option = play(inside)
            shortfall = np.where(u < option - slack(option), option - u, -np.inf)
            if not np.isfinite(shortfall).any():
                break
            inside[np.flatnonzero(inside)[int(np.argmax(shortfall))]] = False
        if inside.tobytes() in entrants:  # a cycle: the same entrant again, and the same exits
            entrant = entrants[inside.tobytes()]
            break
        gains = np.full(n, -np.inf)
        for j in np.flatnonzero(~inside):  # re-entry: each agent outside offered S + {j}
            joined = inside.copy()
            joined[j] = True
            u, option = play(joined)
            k = int(np.sum(joined[:j]))  # agent j's place among the agents of S + {j}
            gains[j] = u[k] - option[k] if u[k] > option[k] + slack(option[k]) else -np.inf
        entrant = entrants[inside.tobytes()] = int(np.argmax(gains)) if np.isfinite(gains).any() else None
        if entrant is None or passes == 2 * n:
            break
        inside[entrant] = True
    if entrant is not None:
        warnings.warn(f"settle_participation: exits and re-entries did not settle (an exit-settled set repeated, "
                      f"or {2 * n} re-entries); agent {entrant} would still gain by joining the {int(inside.sum())} "
                      "agents returned, among whom nobody gains by leaving", stacklevel=2)
    out = [np.zeros(n) for _ in range(3)]
    if inside.any():
        if not (played and np.array_equal(played[0], inside)) or played[3]:  # its warnings said where they arise
            play(inside, heard=True)
        _, m_sub, allocation, _ = played
        for arr, values in zip(out, (m_sub, allocation.accuracy, allocation.transfer)):
            arr[inside] = values
    return Participation(out[0], inside, out[1], out[2])


def social_optimum(population: Population, model: AccuracyModel, phi: Phi | None = None) -> SocialOptimum:
    """The planner's problem: who takes part (S), and what each contributes; everyone in S
    receives the global model a(M), everyone else keeps its outside option r_i:

        max_{S, 0 <= m_i <= n_i, m_i = 0 outside S}
            W = sum_{i in S} (v_i phi(a(M)) - C_i(m_i) - comm_i) + sum_{i not in S} r_i,   M = sum_i m_i,

    with C_i(m) = c_i m**beta (the population's cost exponent): the welfare the
    equilibria's utilities add up to, so that no equilibrium beats it.

    Who takes part. An agent with v_i phi(0) - comm_i >= r_i gains nothing by staying
    out, whatever M: it is in S (the defaults r_i = comm_i = 0 put everyone there). Of
    the other agents ("costly joiners"), S need only hold sets closed under dominance
    (:func:`_closed_sets`: with a joiner, every joiner at least as good in cost,
    endowment, value, communication cost and outside option), a chain of K + 1 sets
    when the joiners differ only in cost. Every such set is solved as below when there
    are at most 1024 of them (so never with K >= 1024 joiners); beyond that, from the
    better of all joiners in and all out, one joiner at a time joins or leaves while that
    raises W (a local optimum, the only case not solved exactly): K solves of a set a
    pass, each O(N log N) time, with only the best set met kept, so O(N) memory (the
    dominance of fewer than 1024 joiners, O(K^2), aside).

    For a given S (:func:`_everyone_in`), with N_j the cumulative endowments of S's
    agents in increasing order of cost:

    Linear costs (beta = 1): for a fixed M the cheapest way to collect it fills agents in
    increasing order of c_i, so the cost C(M) is piecewise linear and convex, with slope
    c_(j) on the j-th segment [N_{j-1}, N_j] of cumulative endowments.

    - Linear phi (``phi`` None), V = sum_i v_i: a is concave on [zero_crossing, inf), so
      W(M) = V a(M) - C(M) is concave there and its maximiser satisfies
      V a'(M) in [c_(j), c_(j+1)]: with M_j = a'^{-1}(c_(j) / V), it is max(M_j, N_{j-1})
      for the first j with M_j <= N_j (N_total if none). Below zero_crossing a = 0, so W
      is at most 0 = W(0) there: the answer is the better of that point and M = 0.
    - Any other ``phi``: W(M) = V phi(a(M)) - C(M) is maximised numerically over
      [0, N_total] (:func:`incentives.search.maximise`), the kinks N_j are tried as well,
      and the answer is again compared with M = 0.

    Convex costs (beta > 1): the cheapest way to collect M equalises marginal costs,
    m_i(lam) = min(n_i, (lam / (beta c_i))**(1/(beta-1))) (n_i where c_i = 0), M(lam)
    increasing in the marginal cost lam; the least cost C(M) and its contributions follow
    from M in closed form, stretch by stretch of the agents at their caps (:class:`_LeastCost`),
    and W(M) = V phi(a(M)) - C(M) is maximised over [F, N_total] (F: the free agents'
    samples) as above, then compared with M = 0.
    """
    check_world(population, model)
    check_phi(phi)
    n = population.n_agents
    benefit_at_zero = 0.0 if phi is None else float(np.asarray(phi(np.zeros(1)), dtype=float)[0])
    costly = np.flatnonzero(population.value * benefit_at_zero - population.comm_cost < population.outside_option)

    def solve(inside: np.ndarray) -> tuple[float, np.ndarray]:
        """(W, m) where the agents of the (N,) mask ``inside`` take part."""
        m = np.zeros(n)
        if inside.any():
            m[inside] = _everyone_in(population.subset(inside), model, phi)
        accuracy = np.full(n, float(model(m.sum())))
        return float(np.sum(utility(population, accuracy, m, participates=inside, phi=phi))), m

    def welfare(inside: np.ndarray) -> float:
        return solve(inside)[0]

    def plan(joiners) -> np.ndarray:
        """(N,) the agents that are not costly joiners, and ``joiners``."""
        inside = np.ones(n, dtype=bool)
        inside[costly] = False
        inside[list(joiners)] = True
        return inside

    plans = _few_closed_sets(population, costly, benefit_at_zero >= 0)
    if plans is not None:
        inside = max(map(plan, plans), key=welfare)
    else:  # from the better of all in and all out, one joiner at a time joins or leaves while W rises
        inside = max(plan([]), plan(costly), key=welfare)
        best_w, improved = welfare(inside), True
        while improved:
            improved = False
            for i in costly:
                inside[i] = not inside[i]
                w = welfare(inside)
                if w > best_w:
                    best_w, improved = w, True
                else:
                    inside[i] = not inside[i]
    total_welfare, m = solve(inside)
    return SocialOptimum(m, float(m.sum()), float(model(m.sum())), total_welfare, inside)


def _few_closed_sets(population: Population, joiners: np.ndarray, benefit_nonnegative: bool) -> list[frozenset] | None:
    """Every set of :func:`_closed_sets`, or None where there are more than _EXHAUSTIVE_PLANS
    of them: always so with K >= _EXHAUSTIVE_PLANS joiners, as the K + 1 leading runs of
    the dominance order are all closed; their K x K dominance matrix is then not built."""
    if joiners.size >= _EXHAUSTIVE_PLANS:
        return None
    plans = list(islice(_closed_sets(population, joiners, benefit_nonnegative), _EXHAUSTIVE_PLANS + 1))
    return plans if len(plans) <= _EXHAUSTIVE_PLANS else None


def _closed_sets(population: Population, joiners: np.ndarray, benefit_nonnegative: bool) -> Iterator[frozenset]:
    """Every set T of ``joiners`` that holds, with any agent j, each joiner i that
    dominates j: c_i <= c_j, n_i >= n_j, comm_i <= comm_j, r_i <= r_j and v_i = v_j
    (v_i >= v_j where phi(0) >= 0, ``benefit_nonnegative``), ties broken by index.
    Exchanging j for i keeps M and changes W by (v_i - v_j) phi(a) - (c_i - c_j) m_j^beta
    - (comm_i - comm_j) + (r_j - r_i) >= 0, so some optimal S is such a set."""
    p = population
    order = np.array(sorted(joiners.tolist(), key=lambda i: (p.cost[i], -p.endowment[i], p.comm_cost[i],
                                                             p.outside_option[i], -p.value[i], i)), dtype=int)
    # a dominating joiner comes before the ones it dominates: dominators[k] = those of order[k] before it
    c, n, comm, r, v = (x[order] for x in (p.cost, p.endowment, p.comm_cost, p.outside_option, p.value))
    value = v[:, None] >= v[None, :] if benefit_nonnegative else v[:, None] == v[None, :]
    dominates = value & (c[:, None] <= c) & (n[:, None] >= n) & (comm[:, None] <= comm) & (r[:, None] <= r)
    dominators = [set(order[:k][dominates[:k, k]].tolist()) for k in range(order.size)]
    stack = [(0, frozenset())]
    while stack:
        k, chosen = stack.pop()
        if k == order.size:
            yield chosen
        else:
            if dominators[k] <= chosen:
                stack.append((k + 1, chosen | {int(order[k])}))
            stack.append((k + 1, chosen))


def _everyone_in(population: Population, model: AccuracyModel, phi: Phi | None) -> np.ndarray:
    """The planner's contributions (N,) when every agent of ``population`` takes part
    (see :func:`social_optimum`): the better of the optimum below and nothing."""
    if population.linear_costs:
        m = _cheapest_first(population, model, phi)
    else:
        m = _equal_marginal_costs(population, model, phi)

    def welfare(m: np.ndarray) -> float:
        return float(np.sum(utility(population, np.full(population.n_agents, model(m.sum())), m, phi=phi)))

    return m if welfare(m) >= welfare(np.zeros(population.n_agents)) else np.zeros(population.n_agents)


def _cheapest_first(population: Population, model: AccuracyModel, phi: Phi | None) -> np.ndarray:
    """The planner's contributions under linear costs (see :func:`social_optimum`)."""
    order = np.argsort(population.cost, kind="stable")
    costs = population.cost[order]
    endowment = population.endowment[order]
    cumulative = np.cumsum(endowment)
    values_total = float(population.value.sum())
    if phi is None:
        total = float(cumulative[-1])
        previous = 0.0
        for c, upper in zip(costs, cumulative):
            candidate = float(model.marginal_inverse(c / values_total))
            if candidate <= upper:
                total = max(candidate, previous)
                break
            previous = float(upper)
    else:
        knots, spent = np.concatenate([[0.0], cumulative]), np.concatenate([[0.0], np.cumsum(costs * endowment)])

        def surplus(M: np.ndarray) -> np.ndarray:
            return values_total * np.asarray(phi(model(M)), dtype=float) - np.interp(M, knots, spent)

        best, _ = maximise(surplus, [cumulative[-1]])
        candidates = np.append(knots, best)  # the kinks of C(M) exactly, where the search only nears them
        total = float(candidates[np.argmax(surplus(candidates[None, :])[0])])
    m = np.zeros(population.n_agents)
    m[order] = np.clip(total - (cumulative - endowment), 0.0, endowment)
    return m


def _equal_marginal_costs(population: Population, model: AccuracyModel, phi: Phi | None) -> np.ndarray:
    """The planner's contributions under convex costs (see :func:`social_optimum`): W(M) =
    V phi(a(M)) - C(M) maximised over the total M (:func:`incentives.search.maximise`),
    with C(M) the least cost of collecting M (:class:`_LeastCost`)."""
    values_total = float(population.value.sum())
    benefit = (lambda a: a) if phi is None else phi
    least = _LeastCost(population)

    def surplus(extra: np.ndarray) -> np.ndarray:  # extra = M - F, the samples the priced agents give
        return values_total * np.asarray(benefit(model(least.free + extra)), dtype=float) - least.cost(extra)

    best, _ = maximise(surplus, [least.priced_total])
    candidates = np.array([0.0, least.priced_total, float(best[0])])
    return least.contributions(float(candidates[np.argmax(surplus(candidates[None, :])[0])]))


class _LeastCost:
    """The cheapest way to collect M samples from agents of costs c_i m**beta, beta > 1,
    capped at n_i. Agents of cost 0 give their n_i (F in all); the others ("priced")
    equalise their marginal costs beta c_i m**(beta-1) = lam, so m_i = min(n_i,
    exp(t - s_i)) with t = ln(lam) / (beta - 1) and s_i = ln(beta c_i) / (beta - 1).
    Ordered by the t at which each reaches its cap, b_i = s_i + ln n_i, the first j are
    capped on the j-th stretch of t, where the others give exp(t + L_j) together at a cost
    of exp(beta t + Q_j), with L_j = logsumexp(-s_k) and Q_j = logsumexp(ln c_k - beta s_k)
    over the uncapped k. So t, the contributions and C(M) follow from M in closed form,
    in logarithms, which stay finite where beta is close to 1 and the s_i are huge (a
    grid over lam there stepped from almost nothing to every cap at once)."""

    def __init__(self, population: Population):
        beta, c, n = population.cost_exponent, population.cost, population.endowment
        self.population, self.priced, self.beta = population, c > 0, beta
        self.free = float(n[~self.priced].sum())
        s = np.log(beta * c[self.priced]) / (beta - 1.0)
        cap = n[self.priced].astype(float)
        self.order = np.argsort(s + np.log(cap), kind="stable")
        s, cap, cost = s[self.order], cap[self.order], c[self.priced][self.order]
        self.s, self.cap = s, cap
        self.capped = np.concatenate([[0.0], np.cumsum(cap)])  # samples of the first j agents, all at their caps
        self.capped_cost = np.concatenate([[0.0], np.cumsum(cost * cap ** beta)])
        self.L = np.append(np.logaddexp.accumulate((-s)[::-1])[::-1], -np.inf)
        self.Q = np.append(np.logaddexp.accumulate((np.log(cost) - beta * s)[::-1])[::-1], -np.inf)
        self.priced_total = float(self.capped[-1])
        with np.errstate(over="ignore"):  # the priced samples at which the j-th agent (j = 1..K) reaches its cap
            self.knots = self.capped[1:] + np.exp(s + np.log(cap) + self.L[1:])

    def _stretch(self, extra) -> tuple[np.ndarray, np.ndarray]:
        """(j, ln of what the uncapped agents give) for ``extra`` samples from the priced agents."""
        extra = np.minimum(np.asarray(extra, dtype=float), self.priced_total)
        j = np.searchsorted(self.knots, extra, side="right")
        with np.errstate(divide="ignore"):
            return j, np.log(np.maximum(extra - self.capped[j], 0.0))

    def cost(self, extra) -> np.ndarray:
        """C(F + extra): the least cost of ``extra`` samples from the priced agents."""
        j, uncapped = self._stretch(extra)
        with np.errstate(over="ignore", invalid="ignore"):
            spread = np.exp(self.beta * (uncapped - self.L[j]) + self.Q[j])
        return self.capped_cost[j] + np.where(np.isfinite(self.L[j]), np.nan_to_num(spread), 0.0)

    def contributions(self, extra: float) -> np.ndarray:
        """(N,) the cheapest contributions totalling F + ``extra``."""
        j, uncapped = self._stretch(extra)
        with np.errstate(over="ignore", invalid="ignore"):
            spread = np.exp(uncapped - self.L[j] - self.s)
        m = np.where(np.arange(len(self.cap)) < j, self.cap, np.minimum(self.cap, np.nan_to_num(spread)))
        out = self.population.endowment.astype(float).copy()
        priced = np.empty_like(m)
        priced[self.order] = m
        out[self.priced] = priced
        return out
