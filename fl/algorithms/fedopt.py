"""Adaptive server optimisers: FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021,
"Adaptive federated optimization", ICLR, Algorithm 2).

With the round's pseudo-gradient, the clients' sample-weighted mean minus the global
model (weighting by n_k is FedAvg's convention; ``weighting="uniform"`` gives the
paper's uniform mean, n_k / n replaced by 1/K),

    Delta = sum_k (n_k / n) w_k - w,

the server keeps moments m (zero at first) and v (tau^2 at first, the paper's
v_{-1} >= tau^2) and steps each parameter, coordinate-wise (buffers such as batch norm's
running statistics take FedAvg's mean instead, see ``fl.algorithms.server_optimiser``),

    m <- beta1 m + (1 - beta1) Delta
    v <- v + Delta^2                                        FedAdagrad
    v <- beta2 v + (1 - beta2) Delta^2                      FedAdam
    v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)          FedYogi
    w <- w + eta m / (sqrt(v) + tau)

with no bias correction, as in the paper. tau bounds the step where v is small.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from fl.algorithms.server_optimiser import ServerOptimiser
from fl.checks import check_fraction, check_positive


class FedOpt(ServerOptimiser):
    """The shared step of Algorithm 2; subclasses define the second moment's update.
    server_lr: eta > 0. beta1: first-moment decay in [0, 1). tau: adaptivity > 0.
    ``fedavg_options`` as for :class:`FedAvg`."""

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, tau: float = 1e-3, **fedavg_options):
        server_lr, tau = check_positive("server_lr", server_lr), check_positive("tau", tau)
        check_fraction("beta1", beta1)
        super().__init__(**fedavg_options)
        self.server_lr, self.beta1, self.tau = server_lr, float(beta1), tau
        self.reset()

    def reset(self) -> None:
        """The moments back to their start: m = 0, v = tau^2."""
        self.first_moment: dict[str, torch.Tensor] = {}
        self.second_moment: dict[str, torch.Tensor] = {}

    @abstractmethod
    def update_second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        """The new v from the old one and Delta^2."""

    def step(self, name: str, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """m and v updated with Delta = delta, then w + eta m / (sqrt(v) + tau)."""
        m = self.first_moment.get(name, torch.zeros_like(w))
        v = self.second_moment.get(name, torch.full_like(w, self.tau**2))
        m = self.first_moment[name] = self.beta1 * m + (1 - self.beta1) * delta
        v = self.second_moment[name] = self.update_second_moment(v, delta * delta)
        return w + self.server_lr * m / (torch.sqrt(v) + self.tau)


class FedAdagrad(FedOpt):
    """v <- v + Delta^2."""

    def update_second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v + delta_squared


class FedAdam(FedOpt):
    """v <- beta2 v + (1 - beta2) Delta^2, beta2 in [0, 1)."""

    def __init__(
        self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, **fedavg_options
    ):
        check_fraction("beta2", beta2)
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau, **fedavg_options)
        self.beta2 = float(beta2)

    def update_second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * delta_squared


class FedYogi(FedAdam):
    """v <- v - (1 - beta2) Delta^2 sign(v - Delta^2): v moves towards Delta^2 by an
    additive step, not multiplicatively as in Adam (Zaheer et al., 2018, "Adaptive
    methods for nonconvex optimization")."""

    def update_second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * delta_squared * torch.sign(v - delta_squared)
