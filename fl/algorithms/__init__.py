"""Federated algorithms as strategies (hooks called by ``fl.server.run_federated``)."""

from fl.algorithms.fedavg import FedAvg
from fl.algorithms.fedavgm import FedAvgM
from fl.algorithms.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fl.algorithms.fedprox import FedProx
from fl.algorithms.incfl import IncFL, incentivised_fraction
from fl.algorithms.scaffold import Scaffold
from fl.algorithms.strategy import Strategy, child_seed

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "IncFL",
    "Scaffold",
    "Strategy",
    "child_seed",
    "incentivised_fraction",
]
