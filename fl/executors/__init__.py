"""Executors run clients' local training for the server (see ``fl.executors.base``).

All of them give the same numbers for the same seed, up to float rounding: the serial
executor is the reference, the vectorised one trains many clients of one architecture
at once (summing in another order), and the Ray one runs clients on long-lived actors
(whose torch thread count may differ from this process's; Ray is imported only when it
runs). That holds step by step, from the same parameters (one SGD step: 1e-8 to 3e-8
apart in float32 for every built-in model and strategy); over many steps and rounds,
layers that are not smooth (ReLU, max pooling) can amplify the rounding where their
inputs nearly tie, so that trained models agree closely but not always to float
rounding. Measured on digits, ``fl.models``' CNN, 10 Dirichlet(1) clients, 3 rounds of
2 epochs, batch 16, lr 0.1 (``run_federated``): FedAvg's global weights differ by 6e-8,
SCAFFOLD's by 1.2e-3 with test accuracies 0.7604 and 0.7660; the jump was traced to one
unit of the CNN's dense layer whose pre-activation, 1.5e-7 from zero, had opposite signs
in the two executors. Run in float64 (model and features cast), the same trainings
agree to 4e-9.
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
