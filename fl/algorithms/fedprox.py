"""FedProx (Li et al., 2020, "Federated optimization in heterogeneous networks"):
FedAvg whose clients minimise h_k(w; w^t) = F_k(w) + (mu / 2) ||w - w^t||^2 (the paper's
eq. (2), the local subproblem of its Algorithm 2), which keeps local models near the
round's global model w^t under heterogeneous data."""

from __future__ import annotations

import torch

from fl.algorithms.fedavg import FedAvg
from fl.checks import check_nonnegative
from fl.models import Params


class FedProx(FedAvg):
    """FedAvg plus the proximal term with coefficient ``mu`` >= 0 (mu = 0 is FedAvg)."""

    def __init__(self, mu: float, **fedavg_options):
        mu = check_nonnegative("mu", mu)
        super().__init__(**fedavg_options)
        self.mu = mu

    def local_objective(
        self, loss: torch.Tensor, params: Params, global_params: Params, client_state: dict
    ) -> torch.Tensor:
        proximal = sum(torch.sum((w - global_params[name]) ** 2) for name, w in params.items())
        return loss + 0.5 * self.mu * proximal
