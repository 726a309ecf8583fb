"""Executors run clients' local training for the server (see ``fl.executors.base``).

All of them give the same numbers for the same seed (the vectorised one up to float
rounding: it sums in another order): the serial executor is the reference, the
vectorised one trains many clients of one architecture at once, and the Ray one runs
clients on long-lived actors (Ray is imported only when it runs).
"""

from fl.executors.base import (
    ClientResult, ClientTask, Executor, TrainingDiverged, UnsupportedModel, check_finite_losses,
)
from fl.executors.ray_executor import RayExecutor
from fl.executors.serial import SerialExecutor
from fl.executors.vectorised import VectorisedExecutor

__all__ = [
    "ClientResult", "ClientTask", "Executor", "RayExecutor", "SerialExecutor", "TrainingDiverged",
    "UnsupportedModel", "VectorisedExecutor", "check_finite_losses",
]
