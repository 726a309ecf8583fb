"""Federated algorithms as strategies (hooks called by ``fl.server.run_federated``)."""

from fl.algorithms.fedavg import FedAvg
from fl.algorithms.fedprox import FedProx
from fl.algorithms.strategy import Strategy, child_seed

__all__ = ["FedAvg", "FedProx", "Strategy", "child_seed"]

