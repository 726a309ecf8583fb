"""Accuracy shaping, after Karimireddy, Guo & Jordan (2022), "Mechanisms that Incentivize
Data Sharing in Federated Learning" (arXiv:2207.04557), Section "accuracy shaping".

The server gives agent i not the global model but a model of accuracy

    a_i(m) = min(a(M), a(m_i^o) + gamma_i(m_i))   if m_i >= m_i^o,
    a_i(m) = min(a(M), a(m_i))                    if m_i <  m_i^o,
    gamma_i(m_i) = (c_i / v_i + epsilon) (m_i - m_i^o),

where m_i^o is what agent i would collect training alone
(:func:`~incentives.utility.local_contribution`, capped at n_i) and M = sum_j m_j; a(m_i^o)
and a(m_i) below it are on the curve of an agent's own training (``model.alone``), a(M)
on the federation's (they differ once the loop calibrates a(M) to training). Below its
local optimum an agent gets no more than it could reach alone; above it, every extra
sample earns c_i / v_i + epsilon accuracy, which pays for the sample (exactly, with
epsilon = 0), up to the accuracy of the global model. No money changes hands. On one
curve a(M) >= a(m_i), and the min below m_i^o is the paper's rule; on a calibrated
federation's curve a(M) can fall below a(m_i^o), and the server, whose models are all
degraded copies of the global one, cannot deliver more than a(M) on either branch (the
rule stays continuous at m_i^o).

Equilibrium. Agent i's utility is flat (epsilon = 0) or increasing (epsilon > 0) along
the shaping line and decreases once the line passes a(M), so it contributes up to where
they meet (ties go to contributing, the epsilon -> 0 limit of the paper):

    m_i(M) = clip(m_i^o + (a(M) - a(m_i^o)) / (c_i / v_i + epsilon), m_i^o, n_i)   if a(M) >= a(m_i^o),
    m_i(M) = a^-1(a(M)) on its own curve, the least data reaching a(M)              otherwise,

and the total solves the fixed point M = sum_i m_i(M), a 1-D root found with brentq. In
the second case the agent gets its own curve up to a^-1(a(M)), where its utility
v_i a - c_i m rises from that curve's zero crossing on (up to m_i^o, its optimum alone),
and a(M) beyond, where only the cost grows: no contribution from the crossing on beats
a^-1(a(M)). Below the crossing its own curve is 0, and contributing nothing, worth 0,
beats a^-1(a(M)) where v_i a(M) < c_i a^-1(a(M)): such a fixed point is no equilibrium,
which the solver's deviation check finds. With epsilon = 0 an agent with
a(M) >= a(m_i^o) gets exactly its local-only utility (individually rational, and no
surplus left to it); one with a(M) < a(m_i^o) gets less than training alone,
v_i a(M) - c_i a^-1(a(M)), which the audit reports as an individual-rationality
shortfall: such a federation is not worth joining for it. Linear phi.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.optimize import brentq

from incentives.accuracy import AccuracyModel
from incentives.checks import check_agent, check_number
from incentives.equilibrium import nash_equilibrium, settle_participation
from incentives.population import Population, check_world
from incentives.protocols import Allocation, Outcome, settings_of
from incentives.search import row_sums, sign_change
from incentives.utility import local_contribution, utility

_SCAN_POINTS = 256
_GAIN_TOL = 1e-9  # a deviation better by at most this share of max(v_i, |u_i|) is no gain
_NEWTON_STEPS = 100  # Newton steps on BR(m) - m from one start
_HALVINGS = 10  # halvings of a Newton step that does not lower |F| before it is taken whole


@dataclass(frozen=True)
class AccuracyShaping:
    """The accuracy-shaping rule with extra slope epsilon >= 0 (accuracy per sample)."""

    epsilon: float = 0.0

    name = "shaping"
    uses_reported_costs = True  # m_i^o and the slope c_i / v_i come from agents' reports
    linear_costs_only = True  # the slope c_i / v_i is the marginal cost of linear costs

    def __post_init__(self) -> None:
        check_number("epsilon", self.epsilon)

    def _rule(self, population: Population, model: AccuracyModel) -> _Rule:
        """The rule for these agents under this model, their terms computed once."""
        population.require_linear_costs(self.name)
        return _Rule(population, model, self.epsilon)

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        check_world(population, model)
        m = population.check_contributions(contributions)
        return self._rule(population, model).allocate(m, population, model)

    def allocate_to(self, i: int, profiles, population: Population, model: AccuracyModel) -> Allocation:
        """Agent i's accuracy (and zero transfer) under each of G contribution profiles
        (G, N), as (G,) arrays: min(a(M_g), own_i(m_gi)), the numbers of :meth:`allocate`
        with agent i's terms alone computed, once (``incentives.protocols.Mechanism``)."""
        check_agent(i, population.n_agents)
        m = population.check_profiles(profiles)
        return self._rule(population.subset([i]), model).share(m, i, 0)

    def solve(self, population: Population, model: AccuracyModel) -> Outcome:
        """The equilibrium in closed form up to the 1-D root M = sum_i m_i(M).

        g(M) = sum_i m_i(M) - M is >= 0 at M = 0 and < 0 at U = sum_i min(n_i, m_i^o +
        (a_max - a(m_i^o)) / slope_i) (m_i(M) at a(M) = a_max, the most any agent gives)
        unless every agent gives that much (then M = U). m_i(M) >= m_i^o once
        a(M) >= a(m_i^o) for all i, and then g is concave where a is (a(M) > 0), so it has
        at most one root there; M = 0 may be another equilibrium (nobody's data is worth
        anything). The solver scans g on log-spaced points of [1e-12 U, U] (of [0, sum_i n_i]
        it missed the root of 7627 among endowments of 1e16 each), brackets its largest sign
        change, and solves it with brentq to machine precision: the largest equilibrium
        total. Where some agent would gain by
        deviating from it (:meth:`deviation_gains`; a calibrated curve steeper than its
        c_i / v_i), the equilibrium is the root of the agents' exact best responses
        found from it (:meth:`_equilibrium`). The agents' terms (m_i^o, a(m_i^o), the
        slopes and the federation curve's points of those slopes) are computed once for
        the solve (once more for each smaller set of agents, where some leave).
        The delivery target is the shaped accuracy a_i(m) (0 for agents who stay out).
        """
        check_world(population, model)
        rule = self._rule(population, model)

        def rule_for(agents: Population) -> _Rule:  # a set of N agents is everyone
            return rule if agents.n_agents == population.n_agents else self._rule(agents, model)

        participation = settle_participation(lambda agents: self._equilibrium(agents, rule_for(agents)),
                                             lambda m, agents: rule_for(agents).allocate(m, agents, model),
                                             population)
        m = participation.contributions
        info = {
            "total": float(m.sum()),
            "global_accuracy": float(model(m.sum())),
            "epsilon": self.epsilon,
            "local_optimum": rule.optimum,
            "local_accuracy": rule.local_accuracy,
            "shaping_slope": rule.slope,
        }
        return Outcome(
            mechanism=self.name,
            contributions=m,
            accuracy=participation.accuracy,
            transfer=participation.transfer,
            delivery_target=participation.accuracy,
            participates=participation.participates,
            info=info,
            settings=settings_of(self),
        )

    def _equilibrium(self, population: Population, rule: _Rule) -> np.ndarray:
        """The fixed point of :meth:`_contributions` where it is an equilibrium; else the
        root of BR(m) - m (BR: every agent's exact best response to the others, the best
        points of :meth:`deviation_gains`) by Newton's method (:func:`_newton_root`),
        sought from the fixed point and, failing that, from where best-response iteration
        from it stops (``incentives.equilibrium``). A profile counts as an equilibrium
        where no agent gains more than _GAIN_TOL max(v_i, |u_i|) by deviating
        (:func:`_no_gain`: in the utility's own units, as v_i is). The
        iteration alone stops within its tolerance on the moves, not at the equilibrium;
        it is returned, with a warning, only if no root is found."""
        m = self._contributions(population, rule)
        if _no_gain(m, population, rule):
            return m

        def respond(x: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
            return _best_deviations(x, population, rule, others)[0]

        found = _newton_root(respond, m, population.endowment)
        if _no_gain(found, population, rule):
            return found
        iterated = nash_equilibrium(rule, population, rule.model, start=m)
        found = _newton_root(respond, iterated.contributions, population.endowment)
        if _no_gain(found, population, rule):
            return found
        warnings.warn(f"shaping: no profile without a profitable deviation found from the fixed point (best "
                      f"responses {'settled' if iterated.converged else 'did not settle'} in {iterated.iterations} "
                      "sweeps); the profile returned is where they stopped, not an equilibrium", stacklevel=3)
        return iterated.contributions

    def deviation_gains(self, contributions, population: Population, model: AccuracyModel) -> np.ndarray:
        """(N,) each agent's largest utility gain from changing its own contribution alone.

        Agent i's utility v_i min(a(M_-i + x), own_i(x)) - c_i x (own_i: its curve alone
        below m_i^o, the shaping line above) is the smaller of two non-decreasing functions
        less a linear cost. Where own_i is the smaller, its maximum is at 0, m_i^o, n_i or
        where the two meet: on the line the utility is flat or rising; below m_i^o its own
        curve is 0 up to that curve's zero crossing, where the utility -c_i x falls, and
        rises faster than c_i / v_i from there to m_i^o, its optimum alone. Where a is the
        smaller, the maximum is at 0, a meeting point, n_i or where
        v_i a'(M_-i + x) = c_i: x = (a')^-1(c_i / v_i) - M_-i (a is 0 below its zero
        crossing and concave above). So the points compared with x = m_i are 0, n_i,
        m_i^o, that last one, and the meeting points. On the alone part the gap
        a(M_-i + x) - own_i(x) is 0 wherever both curves are 0 (x below both zero
        crossings, where x = 0 is better), of one strict sign where only one is, so its
        sign change is sought from the larger of the two crossings, max(own curve's,
        a's - M_-i), to m_i^o (for a calibrated curve base(gamma (M_-i + x)) - base(x) it
        changes sign once, at x = gamma M_-i / (1 - gamma), gamma < 1); on the line part,
        a(M_-i + x) less the line is concave where a is positive, largest where
        a'(M_-i + x) equals the line's slope, and has at most one root on either side
        of that peak. Each root is found by a bracketed search
        (:func:`incentives.search.sign_change`, the ITP method: about 11 evaluations
        where bisection takes 60), so a gain there is exact to about 2**-60 of the point's
        own size in x (of the endowment, it missed gains among endowments of 1e50), and the
        float just above each root is scored too: a steep line (a large epsilon) can meet
        a(M) within one rounding step of x, its accuracy jumping from the line's to a(M)
        there, and the search's point may land on the lower side (with epsilon = 1e12
        at m_i^o, a gain of 2.3e-3 went unseen).
        """
        check_world(population, model)
        m = population.check_contributions(contributions)
        _, best, current = _best_deviations(m, population, self._rule(population, model))
        return best - current

    def _contributions(self, population: Population, rule: _Rule) -> np.ndarray:
        optimum, local_accuracy, slope, model = rule.optimum, rule.local_accuracy, rule.slope, rule.model
        endowment = population.endowment
        paying = slope > 0

        def demand(totals: np.ndarray) -> np.ndarray:  # (T, N) m_i(M) at T totals; slope 0 (free data): all n_i
            accuracy = np.asarray(model(totals), dtype=float).reshape(-1, 1)
            with np.errstate(over="ignore"):  # a subnormal c_i / v_i (v_i = 1e306): inf, clipped to n_i
                step = (accuracy - local_accuracy) / np.where(paying, slope, 1.0)
            along = np.where(paying, np.clip(optimum + step, optimum, endowment), endowment)
            short = accuracy < local_accuracy  # the global model falls short of training alone
            reach = np.zeros_like(accuracy)  # the least data reaching a(M) alone, where some agent needs it
            needed = short.any(axis=1) & (accuracy[:, 0] > 0)
            if needed.any():
                reach[needed] = np.asarray(model.alone.inverse(accuracy[needed]), dtype=float)
            return np.where(short, np.minimum(reach, optimum), along)

        def excess(totals: np.ndarray) -> np.ndarray:  # (T,) sum_i m_i(M) - M
            return row_sums(demand, totals, len(optimum)) - totals

        # m_i(M) is at most its value where a(M) = a_max, U in all, and so is any root: the scan stays at the roots'
        # scale however large the endowments (from 1e-12 sum_i n_i, 1e5 for endowments of 1e16, it missed 7627)
        with np.errstate(over="ignore"):
            most = np.where(paying, np.clip(optimum + (model.a_max - local_accuracy) / np.where(paying, slope, 1.0),
                                            optimum, endowment), endowment)
        low, high = 0.0, float(most.sum())
        if excess(np.array([high]))[0] >= 0:
            return demand(np.array([high]))[0]
        scan = np.concatenate([[low], low + np.geomspace((high - low) * 1e-12, high - low, _SCAN_POINTS)])
        j = int(np.flatnonzero(excess(scan) >= 0)[-1])
        root = brentq(lambda total: float(excess(np.array([total]))[0]), scan[j], scan[j + 1],
                      xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        return demand(np.array([root]))[0]


class _Rule:
    """Accuracy shaping for one population and accuracy model, each agent's terms computed
    once, (N,) arrays: m_i^o (``optimum``), a(m_i^o) on its own curve (``local_accuracy``),
    the line's slope c_i / v_i + epsilon (``slope``), and, on first use, where the
    federation's curve has slope c_i / v_i (``steep``) and the line's slope (``peak``),
    ``model.marginal_inverse`` of each (inf where the slope is 0). Its ``allocate`` and
    ``allocate_to`` are :class:`AccuracyShaping`'s for the population and model it was
    built for (and must be called with those), so a solve hands it to the generic
    best-response iteration as the mechanism, and every evaluation reuses the terms."""

    def __init__(self, population: Population, model: AccuracyModel, epsilon: float) -> None:
        self.model = model
        self.optimum = local_contribution(population, model)
        self.local_accuracy = np.asarray(model.alone(self.optimum), dtype=float).reshape(population.n_agents)
        self.ratio = population.cost / population.value
        self.slope = self.ratio + epsilon

    @cached_property
    def steep(self) -> np.ndarray:
        return np.asarray(self.model.marginal_inverse(self.ratio), dtype=float).reshape(-1)

    @cached_property
    def peak(self) -> np.ndarray:
        if np.array_equal(self.slope, self.ratio):  # epsilon = 0
            return self.steep
        return np.asarray(self.model.marginal_inverse(self.slope), dtype=float).reshape(-1)

    def own(self, m: np.ndarray, agents=slice(None)) -> np.ndarray:
        """own_i(m_i) of the ``agents`` (all, or one index) at contributions ``m`` (an
        array whose last axis holds those agents): a(m_i) on the agent's own curve below
        m_i^o, the shaping line a(m_i^o) + slope_i (m_i - m_i^o) above."""
        optimum, local_accuracy, slope = self.optimum[agents], self.local_accuracy[agents], self.slope[agents]
        return np.where(m >= optimum, local_accuracy + slope * (m - optimum), self.model.alone(m))

    def allocate(self, contributions, population: Population, model: AccuracyModel) -> Allocation:
        m = population.check_contributions(contributions)
        return Allocation(accuracy=np.minimum(self.model(m.sum()), self.own(m)), transfer=np.zeros(population.n_agents))

    def allocate_to(self, i: int, profiles, population: Population, model: AccuracyModel) -> Allocation:
        return self.share(population.check_profiles(profiles), i)

    def share(self, m: np.ndarray, i: int, agent: int | None = None) -> Allocation:
        """Agent i's accuracy min(a(M_g), own_i(m_gi)) and zero transfer under G checked
        profiles ``m`` (G, N), as (G,) arrays, from the terms of this rule's agent
        ``agent`` (i itself by default; 0 for a rule built for agent i alone)."""
        own = self.own(m[:, i], i if agent is None else agent)
        return Allocation(accuracy=np.minimum(np.asarray(self.model(m.sum(axis=1)), dtype=float), own),
                          transfer=np.zeros(len(m)))


def _best_deviations(m: np.ndarray, population: Population, rule: _Rule,
                     others: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) each agent's best contribution given the others' (the points of
    :meth:`AccuracyShaping.deviation_gains`), (N,) its utility there, and (N,) its utility
    at its own contribution m_i (>= 0 apart); ``others``: the others' totals M_-i
    (default sum_j m_j - m_i)."""
    model, optimum, endowment = rule.model, rule.optimum, population.endowment  # m_i^o, already within n_i
    others = m.sum() - m if others is None else others

    def utility_at(x: np.ndarray) -> np.ndarray:  # agent i contributing x_i, the others M_-i
        return utility(population, np.minimum(np.asarray(model(others + x), dtype=float), rule.own(x)), x)

    def gap(x: np.ndarray) -> np.ndarray:  # a(M_-i + x) - own_i(x): 0 where the two meet
        return np.asarray(model(others + x), dtype=float) - rule.own(x)

    steep = rule.steep - others
    peak = np.clip(rule.peak - others, optimum, endowment)
    crossing = np.clip(np.maximum(model.alone.zero_crossing, model.zero_crossing - others), 0.0, optimum)
    meeting = sign_change(gap, np.stack([crossing, optimum, peak]), np.stack([optimum, peak, endowment]))
    meeting = np.where(np.isnan(meeting), 0.0, meeting)
    points = np.stack([m, np.zeros_like(m), endowment, optimum, np.where(np.isfinite(steep), steep, 0.0),
                       *meeting, *np.nextafter(meeting, np.inf)])
    points = np.clip(points, 0.0, endowment)
    values = np.array([utility_at(x) for x in points])
    best = np.argmax(values, axis=0)  # the first of equal values: the agent's own contribution
    rows = np.arange(population.n_agents)
    return points[best, rows], values[best, rows], values[0]


def _no_gain(m: np.ndarray, population: Population, rule: _Rule) -> bool:
    """Whether no agent gains more than _GAIN_TOL max(v_i, |u_i|) by deviating from ``m``
    (:func:`_best_deviations`): a tolerance in the utility's own units, so that the same
    game in other units (v and c scaled together, up or down) gets the same answer; at
    v_i = 1 it is 1e-9 accuracy, or 1e-9 of |u_i| where that is larger."""
    _, best, current = _best_deviations(m, population, rule)
    return bool(np.all(best - current <= _GAIN_TOL * np.maximum(population.value, np.abs(current))))


def _newton_root(respond, start: np.ndarray, endowment: np.ndarray) -> np.ndarray:
    """A root of F(x) = BR(x) - x in the box 0 <= x <= n by Newton's method from
    ``start``, each iterate projected into the box; ``respond(x, others)`` is BR, every
    agent's best response to the others' totals (default sum_j x_j - x_i). BR_i depends on
    M_-i alone, so the Jacobian of F is s 1^T - diag(s) - I (BR_i'(M_-i) = s_i off the
    diagonal, -1 on it), s_i by a forward difference of 1e-7 max(1, M_-i) samples, and
    each step solves it in O(N) time and memory (:func:`_newton_step`). A step is halved
    until |F|^2 falls by the Armijo share 2e-4 of the step; where _HALVINGS halvings do
    not get there, the whole step is taken all the same (BR is only piecewise smooth: a
    step across a kink can raise |F| on its way to a root). The iteration stops where
    |F|_inf <= 1e-12 max(1, sum_j x_j), where the step is singular, or after
    _NEWTON_STEPS steps, or where an iterate comes back (each step depends on the iterate
    alone, so from there the steps cycle; near kinks where two agents' BR_i' = -1 the near
    singular steps jumped between box corners in a cycle of six, and the 100 steps with
    their halvings took 1.5 s of a 4-agent solve), and returns the iterate of smallest
    |F|_inf (the caller checks it)."""
    x = np.clip(start, 0.0, endowment)
    response = respond(x)
    best, best_norm, visited = x, np.inf, set()
    for _ in range(_NEWTON_STEPS):
        seen = hash(x.tobytes())  # 8 bytes an iterate, not 8 N
        if seen in visited:  # the iteration is deterministic in x: it cycles from here on
            break
        visited.add(seen)
        F = response - x
        norm = float(np.max(np.abs(F)))
        if norm < best_norm:
            best, best_norm = x, norm
        if norm <= 1e-12 * max(1.0, float(x.sum())):
            break
        others = x.sum() - x
        h = 1e-7 * np.maximum(1.0, others)
        step = _newton_step((respond(x, others + h) - response) / h, -F)
        if step is None:
            break
        for halving in range(_HALVINGS + 1):
            y = np.clip(x + 0.5**halving * step, 0.0, endowment)
            moved = respond(y)
            if halving == 0:
                whole = y, moved
            if np.sum((moved - y) ** 2) <= (1.0 - 2e-4 * 0.5**halving) * np.sum(F**2):
                break
        else:
            y, moved = whole
        x, response = y, moved
    return best if best_norm <= float(np.max(np.abs(response - x))) else x


def _newton_step(s: np.ndarray, r: np.ndarray) -> np.ndarray | None:
    """d with (s 1^T - diag(s) - I) d = r, in O(N). With T = sum_j d_j, row i reads
    s_i T - (1 + s_i) d_i = r_i: every row but that of the agent p with the smallest
    |1 + s_i| gives d_i = (s_i T - r_i) / (1 + s_i), and p's row with T = sum_j d_j leaves
    a 2 x 2 system in (d_p, T), solved with pivoting (so 1 + s_p = 0, an agent whose best
    response is x = (a')^-1(c_p / v_p) - M_-p, is no division by 0). None where the
    system is singular (two such agents) or the step is not finite."""
    q = 1.0 + s
    p = int(np.argmin(np.abs(q)))
    rest = np.arange(len(s)) != p
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a, b = np.sum(s[rest] / q[rest]), np.sum(r[rest] / q[rest])
        try:
            d_p, total = np.linalg.solve(np.array([[-q[p], s[p]], [1.0, a - 1.0]]), np.array([r[p], b]))
        except np.linalg.LinAlgError:
            return None
        d = (s * total - r) / q
    d[p] = d_p
    return d if np.all(np.isfinite(d)) else None
