"""Whether an agent joins federated training or keeps the model it can train alone.

Agent i owns a local model (trained on its own data alone) of quality b_i^loc and would
receive a model of quality b_i^rec by taking part, paying c_i per contributed sample
(m_i of them) and a communication cost. Its gain from taking part is

    g_i = v_i (b_i^rec - b_i^loc) - c_i m_i - comm_i                 (accuracies), or
    g_i = v_i (b_i^loc - b_i^rec) - c_i m_i - comm_i                 (losses),

and it takes part iff g_i > 0 (an indifferent agent stays out). With v_i = 1 and no
costs, in loss terms, the participants are exactly the clients that Cho et al. (2022),
"To Federate or Not To Federate", call incentivised: f_i(w) < f_i(w_hat_i). For the
agents of a :class:`~incentives.population.Population`, pass ``value=pop.value`` and
``comm_cost=pop.comm_cost``, and for the data's cost either ``cost=pop.cost`` with the
contributions m (linear costs) or ``cost=1`` with ``contributions=pop.data_cost(m)`` (any
cost exponent: c_i m_i**beta in utility units); its ``outside_option`` plays no part
here, since the local model is the outside option.

A model trained on fewer agents may no longer beat the local models of those who stayed,
so one round of decisions is not the end: :func:`participation_equilibrium` lets the
agents with g_i <= 0 leave, retrains on those who remain, and repeats until nobody leaves.
Training is a callable (this package never imports torch or ``fl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from incentives.checks import as_floats, check_bool, check_entries, check_per_agent


@dataclass(frozen=True)
class ParticipationEquilibrium:
    """The end of iterated exit.

    participates: (N,) bool, the agents still in when nobody wants to leave.
    received: (N,) what the model trained on them gives each participant (NaN for the
        others, and for everyone when nobody is left: no model is trained then).
    gain: (N,) g_i at that model for the participants; NaN for the others.
    history: the participating set each training call was made with, in order
        (``len(history)`` trainings were done).
    """

    participates: np.ndarray
    received: np.ndarray
    gain: np.ndarray
    history: list[np.ndarray]


def participation_gain(
    received,
    local,
    value=1.0,
    cost=0.0,
    contributions=0.0,
    comm_cost=0.0,
    higher_is_better: bool = True,
) -> np.ndarray:
    """(N,) g_i of the module docstring. ``received`` and ``local`` are accuracies
    (``higher_is_better=True``) or losses (``False``), shape (N,); ``value`` v_i > 0,
    ``cost`` c_i >= 0 (utility per sample), ``contributions`` m_i >= 0 (samples) and
    ``comm_cost`` >= 0 (utility) are numbers or arrays of shape (N,)."""
    local, v, spent = _terms(local, value, cost, contributions, comm_cost, higher_is_better)
    received = check_per_agent("received", received, local.shape[0])
    return _gain(received, local, v, spent, higher_is_better)


def participates(
    received, local, value=1.0, cost=0.0, contributions=0.0, comm_cost=0.0, higher_is_better: bool = True
) -> np.ndarray:
    """(N,) bool: g_i > 0 (see :func:`participation_gain`, which takes the same arguments)."""
    return participation_gain(received, local, value, cost, contributions, comm_cost, higher_is_better) > 0


def participation_equilibrium(
    received_for: Callable[[np.ndarray], np.ndarray],
    local,
    value=1.0,
    cost=0.0,
    contributions=0.0,
    comm_cost=0.0,
    higher_is_better: bool = True,
) -> ParticipationEquilibrium:
    """Iterated exit, starting from everyone: S_0 = all agents, and

        S_{t+1} = {i in S_t : g_i(received_for(S_t)) > 0},

    until S_{t+1} = S_t (or S_t is empty). ``received_for(mask)`` trains on the agents of
    the boolean (N,) ``mask`` and returns (N,) the accuracy (or loss) each agent receives
    from that model; only the entries of the agents in ``mask`` are read. Agents who have
    left do not come back, so each call but the last removes at least one agent and there
    are at most N calls; the set reached is then stable against exit, and against entry
    where the model received only gets worse as agents leave. The other arguments are
    those of :func:`participation_gain`, checked before the first training.
    """
    local, v, spent = _terms(local, value, cost, contributions, comm_cost, higher_is_better)
    n = local.shape[0]
    inside = np.ones(n, dtype=bool)
    history: list[np.ndarray] = []
    while inside.any():
        history.append(inside.copy())
        out = as_floats("received_for(mask)", received_for(inside.copy()), f"({n},) numbers, one per agent")
        if out.shape != (n,):
            raise ValueError(f"received_for returned shape {out.shape}: allowed is ({n},), one value per agent")
        received = np.where(inside, out, np.nan)
        everyone = _gain(check_per_agent("received_for(mask)", np.where(inside, out, local), n), local, v, spent,
                         higher_is_better)
        gain = np.where(inside, everyone, np.nan)
        staying = inside & (gain > 0)
        if np.array_equal(staying, inside):
            return ParticipationEquilibrium(inside, received, gain, history)
        inside = staying
    return ParticipationEquilibrium(inside, np.full(n, np.nan), np.full(n, np.nan), history)


def _terms(local, value, cost, contributions, comm_cost, higher_is_better) -> tuple[np.ndarray, ...]:
    """(local (N,), v (N,), c m + comm (N,)) checked, and ``higher_is_better`` a bool."""
    local = _local_values(local)
    n = local.shape[0]
    check_bool("higher_is_better", higher_is_better)
    v = check_per_agent("value", value, n, 0.0, strict=True, broadcast=True)
    c, m, comm = (check_per_agent(key, raw, n, 0.0, broadcast=True)
                  for key, raw in (("cost", cost), ("contributions", contributions), ("comm_cost", comm_cost)))
    return local, v, c * m + comm


def _gain(received: np.ndarray, local: np.ndarray, v: np.ndarray, spent: np.ndarray, higher_is_better: bool):
    """g_i = v_i (received_i - local_i) - spent_i (accuracies; losses the other way round)."""
    improvement = received - local if higher_is_better else local - received
    return v * improvement - spent


def _local_values(raw) -> np.ndarray:
    """``local`` as a float array of shape (N,), N >= 1, of finite numbers: N is the
    number of agents every other argument is checked against."""
    local = as_floats("local", raw)
    if local.ndim != 1 or local.size == 0:
        raise ValueError(f"local has shape {local.shape}: allowed is (N,), one value per agent, N >= 1")
    check_entries("local", local)
    return local
