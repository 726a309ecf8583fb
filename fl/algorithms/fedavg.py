"""Federated Averaging (McMahan et al., 2017, "Communication-efficient learning of deep
networks from decentralized data", Algorithm 1).

Each round the server samples m = max(1, floor(C * K)) of the K available clients (the
paper's m = max(C K, 1), rounded down; or a fixed number), each client runs E epochs of
mini-batch SGD (batch size B, step size lr) from the global model w^t on its n_k samples,
and the server sets

    w^{t+1} = sum_k (n_k / n) w_k^{t+1},   n = sum over sampled clients of n_k.

With ``weighting="uniform"`` it sets w^{t+1} = (1/K) sum_k w_k^{t+1} over the K clients
of the round instead, the uniform average that Reddi et al. (FedOpt), Karimireddy et al.
(SCAFFOLD) and Nguyen et al. (FedBuff) write; every strategy built on FedAvg's mean (the
server optimisers and SCAFFOLD) takes the option. The default is the paper's n_k / n, so
that a client counts in proportion to its data, as in the objective sum_k (n_k / n) F_k.
"""

from __future__ import annotations

import inspect
import math
from typing import Mapping

import numpy as np
import torch
from torch import nn

from fl import evaluation
from fl.algorithms.strategy import Strategy, child_seed
from fl.checks import check_integer, check_options, check_step, check_unit
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult, ClientTask
from fl.models import Params


class FedAvg(Strategy):
    """FedAvg with client fraction ``fraction`` (C, in (0, 1]) or a fixed
    ``clients_per_round``, local ``epochs`` (E) or an exact number of local ``steps``,
    ``batch_size`` (B) and SGD step size ``lr``; ``weighting`` of the clients' models in
    the mean, "samples" (n_k / n) or "uniform" (1/K). Any other keyword (``unknown``) is
    refused with a ValueError naming the class constructed and the keywords it takes."""

    #: FedAvg options a subclass sets itself and refuses (left out of the keywords it takes)
    FIXED_KEYWORDS: tuple[str, ...] = ()

    def __init__(
        self,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.1,
        fraction: float = 1.0,
        clients_per_round: int | None = None,
        steps: int | None = None,
        weighting: str = "samples",
        **unknown,
    ):
        check_options(type(self).__name__, unknown, _constructor_keywords(type(self)))
        check_integer("epochs", epochs)
        check_integer("batch_size", batch_size)
        check_integer("clients_per_round", clients_per_round, optional=True)
        check_integer("steps", steps, optional=True)
        check_step("lr", lr)
        check_unit("fraction", fraction, positive=True)
        if clients_per_round is not None and fraction != 1.0:
            raise ValueError(f"fraction={fraction!r}: allowed is 1.0 when clients_per_round is given")
        if weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting={weighting!r}: allowed is 'samples' or 'uniform'")
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.fraction, self.clients_per_round, self.steps = float(fraction), clients_per_round, steps
        self.weighting = weighting

    def configure_round(
        self, round_index: int, available_clients: Mapping[int, Subset], seed: np.random.SeedSequence
    ) -> list[ClientTask]:
        """Sample clients uniformly without replacement; tasks are in client-id order."""
        ids = sorted(available_clients)
        wanted = self.clients_per_round or max(1, math.floor(self.fraction * len(ids) + 1e-9))
        if wanted < len(ids):
            ids = sorted(np.random.default_rng(seed).choice(ids, size=wanted, replace=False).tolist())
        return [
            ClientTask(
                client_id=client,
                round_index=round_index,
                data=available_clients[client],
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                seed=child_seed(seed, client),
                steps=self.steps,
            )
            for client in ids
        ]

    def local_objective(
        self, loss: torch.Tensor, params: Params, global_params: Params, client_state: dict
    ) -> torch.Tensor:
        """FedAvg's clients minimise their empirical loss as it is."""
        return loss

    def aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        """The mean sum_k a_k w_k of the floating-point entries, a_k = n_k / n
        (``weighting="samples"``) or 1/K over the K results with samples ("uniform");
        integer buffers (e.g. BatchNorm's batch counter) keep the server's value. With no
        results, or none with samples, the global model is unchanged."""
        weights = self.aggregation_weights(results)
        return global_params if weights is None else weighted_average(global_params, results, weights)

    def aggregation_weights(self, results: list[ClientResult]) -> list[float] | None:
        """a_k, one per result: n_k / n (``weighting="samples"``) or 1/K over the K results
        with samples ("uniform"); None where no result holds samples."""
        counts = [r.num_samples if self.weighting == "samples" else min(r.num_samples, 1) for r in results]
        total = sum(counts)
        return None if total == 0 else [count / total for count in counts]

    def evaluate(self, model: nn.Module, params: Params, dataset: ArrayDataset) -> dict[str, float]:
        """Mean cross-entropy ``loss`` (nats) and top-1 ``accuracy`` on ``dataset``."""
        return evaluation.evaluate(model, params, dataset)


def _constructor_keywords(cls: type) -> list[str]:
    """The keywords the constructor of ``cls``, FedAvg or a subclass, takes: those its own
    ``__init__`` names, then those of each FedAvg class it extends (which it passes on),
    less the subclass's ``FIXED_KEYWORDS`` (FedAvg options it sets itself)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    keywords: list[str] = []
    for owner in cls.__mro__:
        if issubclass(owner, FedAvg) and "__init__" in vars(owner):
            parameters = list(inspect.signature(owner.__init__).parameters.values())[1:]  # after self
            keywords += [p.name for p in parameters if p.kind in named and p.name not in keywords]
    return [keyword for keyword in keywords if keyword not in cls.FIXED_KEYWORDS]


def weighted_change(global_params: Params, results: list[ClientResult], weights) -> Params:
    """sum_k weights_k (w_k - w) over the floating-point entries w of ``global_params``:
    exactly 0 where no client changed an entry (sum_k a_k w_k - w, in float32, left
    round-off of 1e-8 there, which an adaptive server step scales up to its step size)."""
    return {name: sum(float(a) * (r.params[name] - value) for a, r in zip(weights, results))
            for name, value in global_params.items() if value.is_floating_point()}


def weighted_average(global_params: Params, results: list[ClientResult], weights) -> Params:
    """sum_k weights_k w_k over the results' floating-point entries (the weights should
    sum to 1); integer buffers (e.g. BatchNorm's batch counter) keep the server's value."""
    return {
        name: sum(float(a) * r.params[name] for a, r in zip(weights, results)) if value.is_floating_point() else value
        for name, value in global_params.items()
    }
