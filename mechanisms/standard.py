"""Standard federated learning: no mechanism.

Every agent that takes part receives the global model, trained on all contributed data,
whatever it contributed itself, and no money changes hands:

    a_i = a(M),  t_i = 0,  M = sum_j m_j.

Karimireddy, Guo & Jordan (2022, arXiv:2207.04557) show that this invites catastrophic
free-riding: at the Nash equilibrium the total data is what the single most eager agent
would collect on its own, however many agents there are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from incentives.accuracy import AccuracyModel, local_optimum
from incentives.checks import check_agent
from incentives.equilibrium import nash_equilibrium, settle_participation
from incentives.population import Population, check_world
from incentives.protocols import Allocation, Outcome, settings_of


@dataclass(frozen=True)
class StandardFL:
    """Everyone receives a(M); no transfers; the server delivers the global model (no target)."""

    name = "standard"
    uses_reported_costs = False  # nobody reports anything: everyone receives a(M)

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        check_world(population, model)
        m = population.check_contributions(contributions)
        accuracy = np.full(population.n_agents, model(m.sum()))
        return Allocation(accuracy=accuracy, transfer=np.zeros(population.n_agents))

    def allocate_to(self, i: int, profiles, population: Population, model: AccuracyModel) -> Allocation:
        """Agent i's accuracy a(M_g) and zero transfer under each of G contribution profiles
        (G, N), as (G,) arrays (``incentives.protocols.Mechanism``)."""
        check_world(population, model)
        check_agent(i, population.n_agents)
        m = population.check_profiles(profiles)
        return Allocation(accuracy=np.asarray(model(m.sum(axis=1)), dtype=float), transfer=np.zeros(len(m)))

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """Closed-form Nash equilibrium, agents who would rather stay out removed.

        Agent i's best response to the others' total M_{-i} is
        m_i = clip(m_i^* - M_{-i}, 0, n_i), where m_i^* solves v_i a'(m) = c_i on the
        concave part of a (``model.marginal_inverse``), or 0 where contributing does not
        beat contributing nothing. Sorting agents by m_i^* in decreasing order and letting
        each add min(n_i, m_i^* - M) while m_i^* > M gives a profile where every agent
        best-responds: only the last contributor is uncapped, it brings M up to its own
        m^*, and every later agent has m^* <= M. Uncapped, M equals the largest m_i^* (the
        agent with the smallest c_i / v_i) for any N; the others free-ride on a(M).
        Linear phi. The profile is an equilibrium when a(M) > 0 and every contributor's
        utility beats that of contributing nothing, v_i a(M) - c_i m_i >= v_i a(M - m_i)
        (a is 0 below its zero crossing, where the first-order condition says nothing),
        and when nobody contributes where no agent gains by contributing alone; both are
        checked (O(N)).

        Which equilibrium. Every equilibrium with a(M) > 0 has this total M (agents with
        m_i^* > M at their caps, those with m_i^* < M at 0), and differs from the profile
        only in how the agents tied with the last contributor (the same m^*, i.e. the same
        c_i / v_i) split its share. The solver returns the profile above (one agent tops
        up, the others free-ride) where it passes the check; else the same total with that
        share split equally among the tied agents, each capped at its n_i
        (:func:`_shared_top_up`), which passes wherever any split does (an agent's test
        holds iff its share is at most a bound common to the tied agents): under
        a(m) = 0.9 - 2 m^-1/2, with costs (1e-5, 0.05, 0.05) and endowments
        (3, 1000, 1000), the greedy (3, 4.37, 0) fails and
        (3, 2.18, 2.18) is returned, where nobody contributing is an equilibrium too. Where
        neither passes (e.g. the most eager agent's endowment is too small to train a
        useful model alone, while others' data would make its samples worth their cost)
        no equilibrium has a(M) > 0 with that total, and the equilibrium comes from
        best-response iteration from the profile: exact best responses under linear costs
        (:func:`_linear_best_responses`), else, or where they do not settle, the generic
        iteration (:func:`~incentives.equilibrium.nash_equilibrium`; a warning where it
        does not settle either).

        Convex costs c_i m**beta (beta > 1): the marginal cost of the first sample is 0, so
        nobody free-rides entirely. On the concave part of a, agent i's first-order
        condition v_i a'(M) = beta c_i m_i**(beta-1) gives
        m_i(M) = min(n_i, (v_i a'(M) / (beta c_i))**(1/(beta-1))) (n_i where c_i = 0;
        :meth:`~incentives.population.Population.marginal_cost_inverse`), and the
        equilibrium total is the root of M = sum_i m_i(M) on [zero_crossing, sum_i n_i]
        (the right side decreases in M: one root, by Brent's method to machine precision,
        whatever sum_i n_i), checked as above; where the check fails, the profile comes
        from the generic iteration. Where no root lies above the zero crossing m0
        (sum_i m_i(m0) <= m0, or sum_i n_i <= m0), no agent with a cost passes it
        profitably (:func:`_free_data_profile`), and the equilibrium is every free agent
        (c_i = 0) at n_i and everyone else at 0.
        """
        check_world(population, model)
        participation = settle_participation(lambda pop: nash_contributions(pop, model),
                                             lambda m, pop: self.allocate(m, pop, model), population)
        m = participation.contributions
        info = {
            "total": float(m.sum()),
            "free_riders": int(np.sum(participation.participates & (m == 0))),
        }
        return Outcome(
            mechanism=self.name,
            contributions=m,
            accuracy=participation.accuracy,
            transfer=participation.transfer,
            delivery_target=None,
            participates=participation.participates,
            info=info,
            settings=settings_of(self),
        )


def nash_contributions(population: Population, model: AccuracyModel) -> np.ndarray:
    """The equilibrium profile described in :meth:`StandardFL.solve`: the closed form where
    :func:`_holds` certifies it, else best-response iteration from it."""
    check_world(population, model)
    if population.linear_costs:
        roots = _linear_roots(population, model)
        m = _linear_cost_contributions(population, roots)
        if _holds(population, model, m):
            return m
        shared = _shared_top_up(population, roots, m)
        if shared is not None and _holds(population, model, shared):
            return shared
        settled = _linear_best_responses(population, model, roots, m)
        if settled is not None and _holds(population, model, settled):
            return settled
    else:
        m = _convex_cost_contributions(population, model)
        if m is None:
            return _free_data_profile(population)
        if _holds(population, model, m):
            return m
    iterated = nash_equilibrium(StandardFL(), population, model, start=m)
    if not iterated.converged:
        warnings.warn(f"standard: best-response iteration did not settle in {iterated.iterations} sweeps (last "
                      f"move {iterated.max_change:.3g} samples); the profile returned is where it stopped, not an "
                      "equilibrium", stacklevel=2)
    return iterated.contributions


_SWEEPS = 200  # Gauss-Seidel sweeps of exact best responses before the generic iteration takes over


def _linear_best_responses(population: Population, model: AccuracyModel, roots: np.ndarray,
                           start: np.ndarray) -> np.ndarray | None:
    """Gauss-Seidel sweeps of the agents' exact best responses under linear costs from
    ``start`` (``roots``: :func:`_linear_roots`), until a sweep moves no contribution by
    more than 1e-12 max(1, M) (None if none does within _SWEEPS). Agent i's utility given
    the others' total O, v_i a(O + x) - c_i x, is -c_i x (no better than contributing
    nothing) while O + x is below the zero crossing m0 and concave beyond it, so its best
    response is the better of 0 and clip(m_i^* - O, max(0, m0 - O), n_i)
    (m_i^*: v_i a'(m) = c_i), ties going to contributing: O(N) a sweep where the generic
    iteration evaluates a grid of profiles of all N agents for each agent."""
    cost, value, endowment = population.cost, population.value, population.endowment
    crossing = float(model.zero_crossing)
    m = np.array(start, dtype=float)
    for _ in range(_SWEEPS):
        total, moved = float(m.sum()), 0.0
        for i in range(population.n_agents):
            others = max(0.0, total - m[i])  # the running total's rounding can leave -1e-14 for 0
            low, best = max(0.0, crossing - others), 0.0
            if low <= endowment[i]:
                x = min(max(roots[i] - others, low), endowment[i])
                if value[i] * float(model(others + x)) - cost[i] * x >= value[i] * float(model(others)):
                    best = x
            moved = max(moved, abs(best - m[i]))
            total += best - m[i]
            m[i] = best
        if moved <= 1e-12 * max(1.0, total):
            return m
    return None


def _linear_roots(population: Population, model: AccuracyModel) -> np.ndarray:
    """(N,) m_i^*, the roots of v_i a'(m) = c_i (inf where c_i = 0)."""
    return np.asarray(model.marginal_inverse(population.cost / population.value), dtype=float).reshape(-1)


def _linear_cost_contributions(population: Population, roots: np.ndarray) -> np.ndarray:
    """The greedy profile on the roots m_i^* (:func:`_linear_roots`). Among agents of one
    root (the same c_i / v_i) the top-up goes first to the least burdened by taking part,
    the smallest (comm_i + r_i) / v_i: the one of them that stays in while paying for it
    where any does (v_i a(M) - c_i m_i - comm_i >= r_i iff a(M) - (c_i / v_i) m_i >=
    (comm_i + r_i) / v_i), so the others free-ride inside. Given to the lowest index, a
    top-up left an agent with comm_i = 0.7 at -0.11, it left, and joining the other again
    made it the top-up again: it stayed out, where free-riding inside would give it 0.029.
    Ties of that burden too (by default everyone's is 0) go to the lowest index."""
    burden = (population.comm_cost + population.outside_option) / population.value
    m = np.zeros(population.n_agents)
    total = 0.0
    for i in np.lexsort((burden, -roots)):  # by root, largest first, then by burden (stable)
        if roots[i] <= total:
            break
        m[i] = min(population.endowment[i], roots[i] - total)
        total += m[i]
    return m


def _shared_top_up(population: Population, roots: np.ndarray, m: np.ndarray) -> np.ndarray | None:
    """The greedy profile ``m`` with the samples of its last contributor (the smallest
    root among contributors) and of every agent tied with it (the same root) pooled and
    split equally, each agent capped at n_i: min(n_j, L) with sum_j min(n_j, L) = the
    pool (water-filling). The total and everyone else's samples stay as they are; None
    where no agent ties with the last contributor (nothing to split)."""
    contributors = np.flatnonzero(m > 0)
    if contributors.size == 0:
        return None
    tied = np.flatnonzero(roots == roots[contributors[np.argmin(roots[contributors])]])
    if tied.size == 1:
        return None
    caps = np.sort(population.endowment[tied])
    pool = float(m[tied].sum())
    filled = np.concatenate([[0.0], np.cumsum(caps)[:-1]])  # the k smallest caps, filled
    levels = (pool - filled) / (len(caps) - np.arange(len(caps)))  # the others' equal share then
    below = np.flatnonzero(levels <= caps)  # none where the pool fills every cap (to rounding: 0.6 / 3 > 0.2)
    shared = m.copy()
    shared[tied] = np.minimum(population.endowment[tied], levels[below[0]] if below.size else caps[-1])
    return shared


def _convex_cost_contributions(population: Population, model: AccuracyModel) -> np.ndarray | None:
    """The convex-cost profile described in :meth:`StandardFL.solve` (None: no root above
    the zero crossing)."""

    def respond(total: float) -> np.ndarray:
        return population.marginal_cost_inverse(population.value * float(np.asarray(model.derivative(total))))

    low, high = float(model.zero_crossing), float(population.endowment.sum())
    if low >= high or respond(low).sum() <= low:
        return None
    root = brentq(lambda total: respond(total).sum() - total, low, high, xtol=1e-300, rtol=4 * np.finfo(float).eps,
                  maxiter=500) if respond(high).sum() < high else high
    return respond(root)


def _free_data_profile(population: Population) -> np.ndarray:
    """Convex costs where :func:`_convex_cost_contributions` finds no root above the zero
    crossing m0 (sum_i n_i <= m0, or sum_i m_i(m0) <= m0 with m_i(M) the first-order
    contributions, n_i for free agents): every free agent (c_i = 0) at n_i, F samples in
    all, everyone else at 0, an equilibrium. A free agent loses nothing by contributing
    all it has. An agent with a cost gets a(F + x) = 0 while F + x <= m0, so contributing
    x there is worth -c_i x**beta <= 0, its utility at 0. It passes m0 only at
    x > x0 = m0 - F, so only where n_i > x0, never where sum_i n_i <= m0. Where n_i > x0
    (so sum_i m_i(m0) <= m0), m_i(m0) <= m0 - F = x0 < n_i (the others add at least 0),
    so v_i a'(m0) = beta c_i m_i(m0)**(beta-1) <= beta c_i x0**(beta-1): its utility,
    concave beyond x0, has slope v_i a'(F + x) - beta c_i x**(beta-1) <= 0 there, and its
    best there is x0, worth -c_i x0**beta <= 0. No agent gains by joining: nothing to check."""
    return np.where(population.cost == 0, population.endowment, 0.0)


def _holds(population: Population, model: AccuracyModel, m: np.ndarray) -> bool:
    """Whether a first-order profile ``m`` is an equilibrium (see :meth:`StandardFL.solve`):
    nobody contributing, where no agent gains alone (its local optimum is 0); else a(M) > 0
    and every contributor does at least as well as contributing nothing, to 1e-12 v_i: a
    tolerance in the utility's own units (v_i bounds its accuracy terms, a <= 1), so that
    the same game in other units (v and c scaled together, up or down) gets the same
    answer. On the concave part of a the first-order conditions settle the rest."""
    total = float(m.sum())
    if total == 0:
        alone = local_optimum(population.cost, population.value, model, population.endowment,
                              cost_exponent=population.cost_exponent)
        return bool(np.all(np.asarray(alone) == 0))
    if not float(model(total)) > 0:
        return False
    value = population.value
    contributing = value * float(model(total)) - population.data_cost(m)
    nothing = value * np.asarray(model(total - m), dtype=float)
    return bool(np.all(contributing >= nothing - 1e-12 * value))
