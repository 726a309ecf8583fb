"""What every executor shares: importing them does not import Ray, and they train with
gradients on whatever the caller's grad mode."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fl.algorithms import FedAvg, FedProx, child_seed
from fl.data.dataset import load_digits
from fl.executors import SerialExecutor, VectorisedExecutor
from fl.models import build_model, get_params

TRAIN, _ = load_digits()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str) -> str:
    """What ``code`` prints, run by a fresh interpreter in this checkout."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_importing_the_executors_does_not_import_ray():
    """``import fl.executors`` imported Ray (about 0.35 s of every command-line start), though
    the Ray executor needs it only when it runs."""
    assert python("import sys, fl.executors; print('ray' in sys.modules)").strip() == "False"


def test_without_ray_the_ray_executor_imports_closes_and_says_what_to_install_when_it_runs():
    said = python(
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from fl.executors import RayExecutor\n"
        "executor = RayExecutor(); executor.close()\n"
        "try:\n"
        "    executor.nodes()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert said.strip() == 'RayExecutor needs Ray: pip install "ray>=2.9" (or "fedecon[ray]")'


@pytest.mark.parametrize("executor", [SerialExecutor(), VectorisedExecutor(workers=2)], ids=["serial", "vectorised"])
@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.5)], ids=["fedavg", "fedprox"])
def test_training_inside_no_grad_gives_the_numbers_outside_it(executor, strategy):
    """Inside ``torch.no_grad()`` the serial executor, and the vectorised one's probe of
    FedProx's objective, failed with "element 0 of tensors does not require grad"."""
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)
    params = get_params(model)
    subsets = {c: TRAIN.subset(np.arange(30 * c, 30 * c + 10 * (c + 1))) for c in range(4)}
    tasks = FedAvg(batch_size=8, lr=0.1).configure_round(0, subsets, child_seed(0, 0))
    expected = executor.run(model, strategy, params, tasks)
    with torch.no_grad():
        actual = executor.run(model, strategy, params, tasks)
        assert not torch.is_grad_enabled()  # the caller's mode, back
    for e, a in zip(expected, actual):
        assert e.train_loss == a.train_loss
        assert all(torch.equal(e.params[name], a.params[name]) for name in params)
