"""Multi-dimensional private information reduced to one criterion, after Ding, Fang & Huang,
"Optimal Contract Design for Efficient Federated Learning With Multi-Dimensional Private
Information", IEEE JSAC 39(1), 2021.

A type's (computation cost, communication delay) enters its cost of any menu item only
through one number theta_k ((6) in :func:`reduce_multidimensional_types`, this module's
numbering), which orders the types completely; its data size caps the items it can fill.
The contract is then the one-dimensional screening problem of :mod:`mechanisms.screening`
with cost exponent 3 and the data sizes as capacities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from incentives.checks import bad, check_integer, finite_number
from mechanisms.screening import per_type

__all__ = ["ReducedTypes", "reduce_multidimensional_types"]


@dataclass(frozen=True)
class ReducedTypes:
    """Multi-dimensional types summarised into one criterion.

    cost: (K,) theta_k, utility per sample**cost_exponent (pass as ``cost`` with
    ``cost_exponent`` to :func:`~mechanisms.screening.solve_screening`); capacity: (K,)
    data size n_k (samples, pass as ``capacity``); order: (K,) the complete order of the
    types (most efficient first).
    """

    cost: np.ndarray
    cost_exponent: float
    capacity: np.ndarray
    order: np.ndarray


def reduce_multidimensional_types(
    compute_cost,
    comm_delay,
    data_size,
    *,
    round_deadline: float,
    rounds: int = 1,
    local_epochs: int = 1,
    cycles_per_sample: float = 1.0,
) -> ReducedTypes:
    """Summarise (computation cost, communication delay, data size) into one criterion.

    Ding, Fang & Huang (IEEE JSAC 2021) summarise users' multi-dimensional private
    information (training cost, communication delay) into a one-dimensional criterion
    that orders users completely, and design the contract on that criterion. Their
    paper's full text was not available to check its exact equations; the model below
    is derived here from the standard FL computation model (CPU frequency scaling, as in
    Kang et al. 2019 and Zhan et al. 2020) and follows the same idea:

    - each of G = ``rounds`` global rounds, type k trains E = ``local_epochs`` epochs on
      its q samples: E * nu * q CPU cycles (nu = ``cycles_per_sample``);
    - the round has a deadline T (``round_deadline``, seconds); uploading takes the
      private communication delay tau_k (seconds), leaving T - tau_k for computing, so
      the CPU frequency must be f >= E nu q / (T - tau_k);
    - computing at frequency f costs zeta_k * (cycles) * f**2 (utility units; zeta_k =
      ``compute_cost``, the private computation-cost coefficient: effective switched
      capacitance times the price of energy), minimised at the smallest feasible f:

          cost_k(q) = G * zeta_k * (E nu)**3 * q**3 / (T - tau_k)**2 = theta_k * q**3,
          theta_k   = G * zeta_k * (E nu)**3 / (T - tau_k)**2;                   (6)

    - the private data size n_k caps the contribution, q <= n_k.

    So the type (zeta_k, tau_k, n_k) values a menu item (q, R) it can fill (q <= n_k)
    at u_k = R - theta_k q**3: types of equal theta_k and equal data size are
    indistinguishable to any menu, theta orders the costs completely (single crossing),
    and :func:`~mechanisms.screening.solve_screening` with ``cost_exponent=3`` applies,
    the data sizes as per-type capacities. The program imposes IC against every item,
    including items a small-data type could not fill. That is conservative (the menu
    stays IC if types could acquire data) and exact where such constraints do not bind,
    as where the cheaper types hold at least as much data; where a cheap type holds
    little, it can cost the server: theta = (1, 2), data sizes (0.5, 100), p = 1/2 and
    V = 10 ln(1 + q) pool both types at (0.5, 0.25), profit 3.80 a type, where the menu
    {(0.5, 0.125), (0.93, 1.61)}, IC given the data sizes, earns 4.45. Ding et al.'s
    private dimensions are the training cost and the communication delay; the data size
    as a private capacity is this module's addition. Unlike the paper's model, the delay
    enters only the agent's cost, not the server's value, so a smaller theta is always the
    better type for the server; the paper's abstract reports that serving the users of
    lowest cost and delay is not always optimal, which this reduction cannot show.
    """
    K = np.size(compute_cost)
    if np.ndim(compute_cost) != 1 or K == 0:
        raise bad("compute_cost", compute_cost, "a non-empty 1-D array of finite numbers > 0")
    zeta = per_type("compute_cost", compute_cost, K, positive=True)
    tau = per_type("comm_delay", comm_delay, K, nonneg=True)
    n = per_type("data_size", data_size, K, positive=True)
    if not (finite_number(round_deadline) and round_deadline > 0):
        raise bad("round_deadline", round_deadline, "a finite number of seconds > 0")
    late = np.flatnonzero(tau >= round_deadline)
    if late.size:
        raise bad(f"comm_delay[{late[0]}]", float(tau[late[0]]), f"a delay below round_deadline="
                  f"{round_deadline!r} seconds (a type that cannot upload in time cannot take part)")
    check_integer("rounds", rounds)  # counts: 2.5 rounds changed the costs without a word
    check_integer("local_epochs", local_epochs)
    if not (finite_number(cycles_per_sample) and cycles_per_sample > 0):
        raise bad("cycles_per_sample", cycles_per_sample, "a finite number > 0")
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):  # checked below
        work = (np.float64(local_epochs) * np.float64(cycles_per_sample)) ** 3  # (E nu)**3, in float64
        theta = np.float64(rounds) * zeta * work / (round_deadline - tau) ** 2
    if not np.isfinite(work):
        raise bad("cycles_per_sample", cycles_per_sample, "a number whose (local_epochs * cycles_per_sample)**3 is "
                  f"finite in float64 (with local_epochs={local_epochs!r}: at most "
                  f"{np.cbrt(np.finfo(np.float64).max) / local_epochs:.4g})")
    wrong = np.flatnonzero(~(np.isfinite(theta) & (theta > 0)))
    if wrong.size:
        k = int(wrong[0])
        raise ValueError(f"compute_cost[{k}]={float(zeta[k])!r} with comm_delay[{k}]={float(tau[k])!r}: its theta = "
                         f"rounds * compute_cost * (local_epochs * cycles_per_sample)**3 / (round_deadline - "
                         f"comm_delay)**2 = {rounds!r} * {float(zeta[k])!r} * ({local_epochs!r} * "
                         f"{cycles_per_sample!r})**3 / ({round_deadline!r} - {float(tau[k])!r})**2 is "
                         f"{float(theta[k])!r} in float64; allowed is a type whose theta is a finite number > 0")
    return ReducedTypes(cost=theta, cost_exponent=3.0, capacity=n,
                        order=np.argsort(theta, kind="stable"))
