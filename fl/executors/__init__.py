"""Executors run clients' local training for the server (see ``fl.executors.base``).

All of them give the same numbers for the same seed, up to float rounding: the serial
executor is the reference, the vectorised one trains many clients of one architecture
at once (summing in another order), and the Ray one runs clients on long-lived actors
(whose torch thread count may differ from this process's; Ray is imported only when it
runs). That holds step by step, from the same parameters; over many steps and rounds,
layers that are not smooth (max pooling, ReLU) can amplify the rounding where their
inputs nearly tie, so that trained models agree closely but not always to float
rounding (e.g. differences of 6e-5 after three rounds of FedProx with ``fl.models``'
CNN on digits, against 5e-8 after one).
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
