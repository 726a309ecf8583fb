"""The shape shared by FedAvg variants whose server takes an optimiser step.

The round's client mean (FedAvg's, sample-weighted or uniform by its ``weighting``)
defines a pseudo-gradient per parameter (Reddi et al., 2021, "Adaptive federated
optimization": x, the model's weights),

    Delta = sum_k a_k (w_k - w),      a_k = n_k / n, or 1/K with weighting="uniform",

summed as the clients' changes (:func:`~fl.algorithms.fedavg.weighted_change`), so that
an entry no client changed (a frozen weight, a dead unit's) has Delta = 0 exactly: as
sum_k a_k w_k - w in float32 it was round-off of 1e-8, which FedAdam's m / (sqrt(v) + tau)
scales up to its step size (tau = 1e-7 moved a frozen weight by 11% of its largest entry
in 10 rounds). The server replaces w by ``step(name, w, Delta)``. FedAvg is ``step = w + Delta``.
Buffers, the entries the results name in ``ClientResult.buffers`` (batch norm's running
statistics), are statistics of the data, not weights: floating-point ones take FedAvg's
mean w + Delta, integer ones keep the server's value, and no optimiser state is
kept for them. A round without results, or whose results hold no samples, changes
neither the model nor the optimiser's state.
"""

from __future__ import annotations

import copy
from abc import abstractmethod

import torch

from fl.algorithms.fedavg import FedAvg, weighted_change
from fl.executors.base import ClientResult
from fl.models import Params


class ServerOptimiser(FedAvg):
    """FedAvg whose server steps along the pseudo-gradient (see the module docstring).
    The optimiser's state lives in the instance until :meth:`reset`, which every run
    calls before its first round."""

    @abstractmethod
    def step(self, name: str, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The new value of entry ``name`` from its value ``w`` and pseudo-gradient ``delta``."""

    def client_view(self) -> "ServerOptimiser":
        """A shallow copy whose state is :meth:`reset`: the hyperparameters without the
        optimiser's state (this instance keeps its own)."""
        view = copy.copy(self)
        view.reset()
        return view

    def aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        weights = self.aggregation_weights(results)
        if weights is None:
            return global_params
        change = weighted_change(global_params, results, weights)  # floating-point entries only
        buffers = frozenset().union(*(result.buffers for result in results))
        new = dict(global_params)  # integer entries keep the server's value
        for name, delta in change.items():
            new[name] = global_params[name] + delta if name in buffers else self.step(name, global_params[name], delta)
        return new
