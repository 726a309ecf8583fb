"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al., 2020, "SCAFFOLD:
Stochastic controlled averaging for federated learning", ICML, Algorithm 1).

Control variates estimate each client's drift: c_i for client i, c for the server
(all zero at first). Client i, starting from the global model x, takes K local steps

    y <- y - lr (g_i(y) - c_i + c),

which is SGD on its loss plus the linear term <c - c_i, y>, whose gradient is c - c_i
(``local_objective``). From its result y_i it gets, by option II,

    c_i+ = c_i - c + (x - y_i) / (K lr),

and the server steps, with S the round's clients and N the number of clients,

    x <- x + eta_g sum_{i in S} (n_i / n) (y_i - x),      c <- c + (1 / N) sum_{i in S} (c_i+ - c_i).

The model update is weighted by sample counts (FedAvg's convention; ``weighting="uniform"``
gives the paper's uniform average, n_i / n replaced by 1/|S|); c's keeps c = (1/N) sum_i c_i,
also when a client first available in a later round raises N (``configure_round``).
K is the number of steps the client took, so a straggler's partial work gives its own
correct c_i+; a client that took no step keeps its c_i.

The control variates are kept here, on the server, keyed by client id (a deployed
client would keep its own c_i); each task carries ``state = {"correction": c - c_i}``
from the first aggregation on. The c of the formula is the one sent with the client's
task, the last one ``configure_round`` gave the client: the runtime configures no client
whose result it has yet to aggregate (with buffered asynchronous aggregation, FedBuff
sends no new task to a client whose update waits in its buffer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np
import torch

from fl.algorithms.server_optimiser import ServerOptimiser
from fl.checks import check_positive
from fl.data.dataset import Subset
from fl.executors.base import ClientResult, ClientTask
from fl.models import Params


class Scaffold(ServerOptimiser):
    """SCAFFOLD with global step size ``server_lr`` (eta_g > 0); ``fedavg_options`` as for
    :class:`FedAvg` (local SGD steps of size ``lr``)."""

    def __init__(self, server_lr: float = 1.0, **fedavg_options):
        server_lr = check_positive("server_lr", server_lr)
        super().__init__(**fedavg_options)
        self.server_lr = server_lr
        self.reset()

    def reset(self) -> None:
        """Every control variate back to zero, no client seen."""
        self.control: Params = {}  # c; empty while zero
        self.client_controls: dict[int, Params] = {}  # c_i; absent while zero
        self.clients: set[int] = set()  # every client seen available: N = len(clients)
        self._sent: dict[int, Params] = {}  # the c each client was last sent

    def configure_round(
        self, round_index: int, available_clients: Mapping[int, Subset], seed: np.random.SeedSequence
    ) -> list[ClientTask]:
        """FedAvg's tasks, each with ``state = {"correction": c - c_i}`` once c is known.
        Clients seen for the first time join N with c_i = 0, so c = (1/N) sum_i c_i is
        rescaled by N_before / N_after (the sum is unchanged)."""
        before = len(self.clients)
        self.clients |= set(available_clients)
        if self.control and len(self.clients) > before:
            self.control = {name: c * (before / len(self.clients)) for name, c in self.control.items()}
        tasks = super().configure_round(round_index, available_clients, seed)
        if not self.control:
            return tasks
        for task in tasks:
            self._sent[task.client_id] = self.control
        return [replace(task, state={"correction": self._correction(task.client_id)}) for task in tasks]

    def local_objective(
        self, loss: torch.Tensor, params: Params, global_params: Params, client_state: dict
    ) -> torch.Tensor:
        """loss + <c - c_i, y>, summed over the trainable parameters."""
        correction = client_state.get("correction")
        if not correction:
            return loss
        return loss + sum(torch.sum(correction[name] * w) for name, w in params.items())

    def step(self, name: str, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x + eta_g Delta, Delta the round's sample-weighted mean change."""
        return w + self.server_lr * delta

    def aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        """The control variates' update of the module docstring, over the parameters, then
        the server's :meth:`step` on them (buffers, ``ClientResult.buffers``, take FedAvg's
        mean and have no control variate); with no results, or none holding samples, nothing
        changes (as :class:`ServerOptimiser`). ValueError, before any change, for a result of
        a client that no :meth:`configure_round` was given: N counts those clients alone."""
        unknown = sorted({result.client_id for result in results} - self.clients)
        if unknown:
            raise ValueError(
                f"results (from client ids {unknown[:5]}, never given to configure_round): allowed is results of "
                f"the clients configure_round was given, the N = {len(self.clients)} of c = (1/N) sum_i c_i"
            )
        if not any(result.num_samples for result in results):
            return global_params
        buffers = frozenset().union(*(result.buffers for result in results))
        floating = [name for name, w in global_params.items() if w.is_floating_point() and name not in buffers]
        zero = {name: torch.zeros_like(global_params[name]) for name in floating}
        change = dict(zero)
        for result in results:
            if result.steps == 0:  # no local step, no drift measured: c_i stays
                continue
            c_i = self.client_controls.get(result.client_id, zero)
            c = self._sent.get(result.client_id, zero)
            scale = 1.0 / (result.steps * self.lr)
            drift = {name: scale * (global_params[name] - result.params[name]) for name in floating}
            updated = {name: c_i[name] - c[name] + drift[name] for name in floating}
            change = {name: change[name] + updated[name] - c_i[name] for name in floating}
            self.client_controls[result.client_id] = updated
        control = self.control or zero
        self.control = {name: control[name] + change[name] / len(self.clients) for name in floating}
        return super().aggregate(global_params, results)

    def _correction(self, client: int) -> Params:
        c_i = self.client_controls.get(client)
        return {name: c - c_i[name] for name, c in self.control.items()} if c_i else dict(self.control)
