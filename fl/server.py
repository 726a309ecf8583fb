"""``run_federated``: synchronous federated training, the runtime with no behaviours.

Each round t, ``strategy.configure_round`` picks the clients and their tasks, the
executor trains them all from the global model in one call, and ``strategy.aggregate``
combines the results in task order into the next global model; the model is evaluated
on ``test`` every ``evaluate_every`` rounds and after the last. This is
:func:`fl.runtime.simulate` with no behaviours and default client profiles (every
client fast and connected alike, so a round's clients start together); use
``simulate`` itself for stragglers, deadlines, dropout or asynchronous aggregation.
Seeds are those of :mod:`fl.runtime.launch`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from torch import nn

from fl.algorithms.strategy import Strategy
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import Executor
from fl.models import Params
from fl.runtime.simulation import SimulationResult, simulate


def run_federated(
    model: str | nn.Module,
    train_subsets: Sequence[Subset] | Mapping[int, Subset],
    strategy: Strategy,
    rounds: int,
    executor: Executor | None = None,
    seed: int | np.random.SeedSequence = 0,
    test: ArrayDataset | None = None,
    progress: bool = True,
    device: str = "cpu",
    model_options: dict | None = None,
    init_params: Params | None = None,
    evaluate_every: int = 1,
) -> SimulationResult:
    """Train ``rounds`` rounds of ``strategy`` over the clients' data: ``simulate`` with no
    behaviours and default profiles; the arguments are ``simulate``'s."""
    return simulate(
        model, train_subsets, strategy, rounds, executor=executor, seed=seed, test=test, progress=progress,
        device=device, model_options=model_options, init_params=init_params, evaluate_every=evaluate_every,
    )
