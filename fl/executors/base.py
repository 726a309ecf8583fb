"""What an executor is given and gives back, and the interface every executor offers.

The server asks the strategy for one :class:`ClientTask` per sampled client, hands the
tasks to an executor, and aggregates the :class:`ClientResult` list it returns. The
executor owns the local training loop: plain mini-batch SGD on the client's data,

    w <- w - lr * grad_w objective(w),   objective = strategy.local_objective(CE(f_w(x_b), y_b), ...)

with batches drawn in the order of ``numpy.random.default_rng(task.seed)``, and any random
numbers the model draws in training (dropout) from torch generators seeded from a child
of ``task.seed`` (``fl.executors.serial``; the vectorised executor refuses such models).
Because the seed belongs to the task (derived from the run's seed, the round and the
client id), every executor produces the same numbers whatever the order in which it runs
clients.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import nn

from fl.checks import check_integer, check_step
from fl.data.dataset import Subset
from fl.models import Params

if TYPE_CHECKING:
    from fl.algorithms.strategy import Strategy


@dataclass(frozen=True)
class ClientTask:
    """One client's local work in one round.

    data: the client's samples. epochs: full passes over them (E of McMahan et al.),
    ignored when ``steps`` is set. steps: exact number of SGD steps, passing over the
    data in fresh random orders as often as needed (none when there are no data).
    batch_size: B (the last batch of a pass may be smaller). lr: SGD step size. seed:
    the batch order's random stream.
    state: the strategy's per-client state (e.g. SCAFFOLD's control variate); empty for FedAvg.
    ValueError unless epochs and batch_size are integers >= 1, steps None or an integer
    >= 0 (0: no step), and lr a finite number > 0 (as ``FedAvg`` asks of its own).
    """

    client_id: int
    round_index: int
    data: Subset
    epochs: int
    batch_size: int
    lr: float
    seed: np.random.SeedSequence
    steps: int | None = None
    state: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_integer("epochs", self.epochs)
        check_integer("batch_size", self.batch_size)
        check_integer("steps", self.steps, least=0, optional=True)
        check_step("lr", self.lr)

    @property
    def num_steps(self) -> int:
        """The local SGD steps asked for: 0 when the client has no data (n = 0), else
        ``steps``, else epochs * ceil(n / B)."""
        n = len(self.data)
        if n == 0:
            return 0
        return self.steps if self.steps is not None else self.epochs * -(-n // self.batch_size)

    def batches(self) -> Iterator[np.ndarray]:
        """Positions into ``data`` of each local mini-batch, in training order: each pass
        over the data is a fresh permutation cut into batches of ``batch_size``."""
        rng = np.random.default_rng(self.seed)
        n = len(self.data)
        per_pass = -(-n // self.batch_size)
        for step in range(self.num_steps):
            if step % per_pass == 0:
                order = np.array_split(rng.permutation(n), range(self.batch_size, n, self.batch_size))
            yield order[step % per_pass]


@dataclass(frozen=True)
class ClientResult:
    """params: the client's model after local training. num_samples: n_k, its dataset
    size (FedAvg's aggregation weight). train_loss: mean mini-batch cross-entropy over
    its local steps (nats; before the strategy's regulariser). steps: SGD steps taken.
    buffers: the names of the entries of ``params`` that are the model's buffers, not
    its parameters (e.g. batch norm's running statistics: statistics of the data that
    the forward pass updates, not weights that SGD steps); empty: every entry is a
    parameter. Server optimisers step only the parameters (``fl.algorithms.server_optimiser``)."""

    client_id: int
    params: Params
    num_samples: int
    train_loss: float
    steps: int
    buffers: frozenset[str] = frozenset()


class UnsupportedModel(ValueError):
    """The executor cannot train this model (:meth:`Executor.check_model`)."""


class TrainingDiverged(ValueError):
    """Local SGD gave a non-finite loss: the step size is too large for the model and data."""


def check_finite_losses(
    tasks: list[ClientTask], results: list[ClientResult], server_lr: float | None = None
) -> list[ClientResult]:
    """``results`` unchanged; :class:`TrainingDiverged` naming the step size, client and
    round where a client that took steps reports a NaN or infinite mean loss (its model
    is then non-finite too, and so would every model averaged with it be). ``server_lr``:
    the server optimiser's step, named too (a server step too large diverges the same way)."""
    for task, result in zip(tasks, results):
        if result.steps > 0 and not math.isfinite(result.train_loss):
            raise TrainingDiverged(
                f"lr={task.lr!r}: local training of client {task.client_id} diverged in round "
                f"{task.round_index} (mean mini-batch loss {result.train_loss}); {_allowed_steps(server_lr)}"
            )
    return results


def check_finite_global(
    start: Params, params: Params, round_index: int, lr: float | None, server_lr: float | None,
    test_loss: float | None,
) -> None:
    """:class:`TrainingDiverged`, worded as by :func:`check_finite_losses`, where round
    ``round_index``'s server step took the global model from ``start`` to ``params`` with
    an entry finite before and NaN or infinite after (an entry non-finite from the start,
    e.g. a mask buffer of -inf, is the model's own), or to a NaN ``test_loss`` (None: not
    evaluated; the cross-entropy of finite logits is never NaN, so a finite model's logits
    overflowed). The server's step overshot (e.g. a FedAdam ``server_lr`` too large), or
    the clients' did; in a round before the last, the next round's clients would report it."""
    floating = [name for name, w in params.items() if w.is_floating_point()]
    finite = [torch.isfinite(params[name]).all() for name in floating]  # one pass, one device sync a round
    if finite and not bool(torch.stack(finite).all()) and any(  # only then: which entries were finite before
            bool((torch.isfinite(start[name]) & ~torch.isfinite(params[name])).any()) for name in floating):
        problem = "has a non-finite entry"
    elif test_loss is not None and math.isnan(test_loss):
        problem = f"gives test loss {test_loss}"
    else:
        return
    raise TrainingDiverged(
        f"lr={lr!r}: the global model after the server's step in round {round_index} {problem}; "
        f"{_allowed_steps(server_lr)}"
    )


def _allowed_steps(server_lr: float | None) -> str:
    """What TrainingDiverged allows: a smaller lr, and server_lr when the server steps too."""
    steps = "a step size" if server_lr is None else f"step sizes (lr and the server's server_lr={server_lr!r})"
    return f"allowed is {steps} small enough for finite losses"


class Executor(ABC):
    """Runs clients' local training."""

    @abstractmethod
    def run(
        self, model: nn.Module, strategy: "Strategy", global_params: Params, tasks: list[ClientTask]
    ) -> list[ClientResult]:
        """Train each task from ``global_params`` and return the results in task order.
        ``model`` is a template whose architecture is used (its own weights are not, and
        may be left changed). ValueError, before any training, unless ``global_params``
        has the keys, shapes and dtypes of ``model``'s state (``fl.models.check_params``)."""

    def check_model(self, model: nn.Module) -> None:
        """:class:`UnsupportedModel` when this executor cannot train ``model``, so that a
        caller can refuse it before any training; every model is supported by default."""
