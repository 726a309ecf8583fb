"""The shape of a federated algorithm: a handful of hooks, after Flower's ``Strategy``.

A round of the server (``fl.server.run_federated``) is::

    tasks   = strategy.configure_round(t, available_clients, round_seed)   # who trains, how
    results = executor.run(model, strategy, global_params, tasks)          # local SGD on
              # strategy.local_objective(loss, params, global_params, task.state)
    global_params = strategy.aggregate(global_params, results)
    metrics = strategy.evaluate(model, global_params, test)

before the first round, ``strategy.reset()`` clears what an earlier run left. An executor
that ships the strategy to other processes (``RayExecutor``) ships ``strategy.client_view()``,
what the clients' ``local_objective`` needs, not the server's state.

Parameters are ``dict[str, Tensor]`` (a model's ``state_dict`` layout), so that
``torch.func.functional_call`` can run the model on them and an executor can stack
many clients' dicts. A new algorithm is one small class: FedProx overrides
``local_objective``; a server optimiser overrides ``aggregate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import numpy as np
import torch
from torch import nn

from fl.checks import check_seed
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult, ClientTask
from fl.models import Params


class Strategy(ABC):
    """A federated algorithm."""

    @abstractmethod
    def configure_round(
        self, round_index: int, available_clients: Mapping[int, Subset], seed: np.random.SeedSequence
    ) -> list[ClientTask]:
        """The tasks of round ``round_index`` (0-based): which of ``available_clients``
        (client id -> its data, never empty) train, and with what settings. All
        randomness comes from ``seed``, the round's stream; a client's batch order must
        come from ``child_seed(seed, client_id)``."""

    @abstractmethod
    def local_objective(
        self, loss: torch.Tensor, params: Params, global_params: Params, client_state: dict
    ) -> torch.Tensor:
        """The objective a client minimises, given its mini-batch loss. ``params`` are
        the client's trainable parameters (requiring grad); ``global_params`` the
        round's starting model; ``client_state`` the task's ``state``."""

    @abstractmethod
    def aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        """The next global model from the round's client results (maybe none)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, params: Params, dataset: ArrayDataset) -> dict[str, float]:
        """Server-side metrics of the global model on ``dataset``."""

    @property
    def label(self) -> str:
        """The strategy's name where a run shows it (its progress bar): its class's."""
        return type(self).__name__

    def reset(self) -> None:
        """Forget what an earlier run left in the instance (a server optimiser's moments,
        SCAFFOLD's control variates). :func:`fl.runtime.simulate` calls it before the
        first round, so one instance trains every run from the same start. Stateless
        strategies keep this default, which does nothing. It binds new objects to the
        state rather than clearing them in place: a server optimiser's :meth:`client_view`
        resets a shallow copy, which shares the instance's objects until then."""

    def client_view(self) -> "Strategy":
        """What clients need of the strategy: an object whose ``local_objective`` is this
        one's (a client's own state travels in its task's ``state``). Executors that send
        the strategy to other processes send this, every round. The default is the
        strategy itself; one that keeps server-side state (a server optimiser's moments,
        SCAFFOLD's control variates, IncFL's losses) returns a copy without it, so that
        only its hyperparameters travel."""
        return self


def child_seed(parent: int | np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """The independent stream of ``parent`` named by ``keys`` (e.g. (round,), then
    (round, client)): the same keys always give the same stream, whatever else is drawn."""
    if not isinstance(parent, np.random.SeedSequence):
        parent = np.random.SeedSequence(check_seed(parent))
    return np.random.SeedSequence(parent.entropy, spawn_key=(*parent.spawn_key, *keys))
