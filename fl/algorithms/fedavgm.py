"""FedAvgM: FedAvg with server momentum (Hsu, Qi & Brown, 2019, "Measuring the effects
of non-identical data distribution for federated visual classification").

With the round's pseudo-gradient, the global model minus the clients' sample-weighted
mean,

    Delta = w - sum_k (n_k / n) w_k,

the server keeps a velocity v (zero at first) and steps

    v <- beta v + Delta,     w <- w - eta v.

beta = 0 and eta = 1 give FedAvg's w <- sum_k (n_k / n) w_k.
"""

from __future__ import annotations

from fl.algorithms.fedavg import FedAvg
from fl.executors.base import ClientResult
from fl.models import Params


class FedAvgM(FedAvg):
    """FedAvg with server ``momentum`` (beta, in [0, 1)) and ``server_lr`` (eta > 0);
    ``fedavg_options`` as for :class:`FedAvg`. The velocity lives in the instance: use a
    fresh one per training run."""

    def __init__(self, momentum: float = 0.9, server_lr: float = 1.0, **fedavg_options):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r}: allowed is a number in [0, 1)")
        if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) or not server_lr > 0:
            raise ValueError(f"server_lr={server_lr!r}: allowed is a number > 0")
        super().__init__(**fedavg_options)
        self.momentum, self.server_lr = float(momentum), float(server_lr)
        self.velocity: Params = {}

    def aggregate(self, global_params: Params, results: list[ClientResult]) -> Params:
        """One momentum step on the floating-point entries (integer buffers keep the
        server's value); with no results the model and velocity are unchanged."""
        if not results:
            return global_params
        mean = super().aggregate(global_params, results)
        new = dict(global_params)
        for name, w in global_params.items():
            if w.is_floating_point():
                delta = w - mean[name]
                self.velocity[name] = self.momentum * self.velocity[name] + delta if name in self.velocity else delta
                new[name] = w - self.server_lr * self.velocity[name]
        return new
