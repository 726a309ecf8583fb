"""What every executor shares: importing them does not import Ray, and they train with
gradients on whatever the caller's grad mode; the serial executor's dropout draws from
each task's seed, and it trains from the template's own tensors as from a copy; both
train a parameter the forward does not read, and refuse wrong tasks and global models."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fl.algorithms import FedAvg, FedProx, child_seed
from fl.data.dataset import load_digits
from fl.executors import ClientTask, SerialExecutor, VectorisedExecutor
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


def dropout_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, 10))


def test_serial_dropout_draws_from_each_tasks_seed_not_from_torchs_global_generator():
    """Dropout drew from torch's global generator: client 0's model changed (by 0.05) when the
    clients ran in reverse order, or when other code had drawn from the generator before."""
    model = dropout_net()
    params = get_params(model)
    subsets = {c: TRAIN.subset(np.arange(30 * c, 30 * c + 30)) for c in range(3)}
    tasks = FedAvg(batch_size=10, lr=0.1).configure_round(0, subsets, child_seed(7, 1, 0))
    torch.manual_seed(1)
    forward = SerialExecutor().run(model, FedAvg(), params, tasks)
    after = torch.rand(3)
    torch.manual_seed(2)
    backward = SerialExecutor().run(model, FedAvg(), params, tasks[::-1])[::-1]
    for f, b in zip(forward, backward):
        assert f.client_id == b.client_id and f.train_loss == b.train_loss
        assert all(torch.equal(f.params[name], b.params[name]) for name in params)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # the caller's generator as it would be without the run
    # a task seeded by an int (as numpy's default_rng takes) draws as one seeded by SeedSequence(int)
    whole = dataclasses.replace(tasks[0], seed=7)
    (by_int,) = SerialExecutor().run(model, FedAvg(), params, [whole])
    sequence = dataclasses.replace(whole, seed=np.random.SeedSequence(7))
    (by_sequence,) = SerialExecutor().run(model, FedAvg(), params, [sequence])
    assert all(torch.equal(by_int.params[name], by_sequence.params[name]) for name in params)
    model[3].p = 0.0  # dropout off: other models, so the dropout above did act
    plain = SerialExecutor().run(model, FedAvg(), params, tasks)
    assert not torch.equal(plain[0].params["1.weight"], forward[0].params["1.weight"])


def test_serial_training_from_the_templates_own_tensors_starts_every_client_from_them():
    """Given ``model.state_dict()``, the serial executor trained those very tensors: client 1
    started from client 0's trained model, and FedProx's w^t moved with the weights."""
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)
    copy = get_params(model)
    subsets = {c: TRAIN.subset(np.arange(30 * c, 30 * c + 30)) for c in range(3)}
    tasks = FedAvg(batch_size=10, lr=0.1).configure_round(0, subsets, child_seed(7, 1, 0))
    strategy = FedProx(mu=0.5)
    expected = SerialExecutor().run(model, strategy, copy, tasks)
    model.load_state_dict(copy)
    own = model.state_dict()
    actual = SerialExecutor().run(model, strategy, own, tasks)
    for e, a in zip(expected, actual):
        assert e.train_loss == a.train_loss
        assert all(torch.equal(e.params[name], a.params[name]) for name in copy)


def test_a_batch_norm_model_given_a_mini_batch_of_one_sample_names_the_client_and_batch_size():
    """33 samples in batches of 16 end each pass with one sample, which BatchNorm1d in
    training mode refuses: torch's error named neither the client nor the batch size. A
    batch size leaving two over (15: 33 = 2 x 15 + 3) trains."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 10))
    subsets = {4: TRAIN.subset(np.arange(33))}
    tasks = FedAvg(batch_size=16, lr=0.1).configure_round(0, subsets, child_seed(7, 1, 0))
    with pytest.raises(ValueError, match=(
            r"^batch_size=16: client 4 has 33 sample\(s\), so a pass over them ends in a mini-batch of one sample, "
            r"which a batch norm layer in training mode cannot normalise \(Expected more than 1 value per channel "
            r"when training, got input size torch.Size\(\[1, 8\]\)\); allowed is a batch size > 1 that does not leave "
            r"one sample over \(n mod batch_size != 1\)")):
        SerialExecutor().run(model, FedAvg(), get_params(model), tasks)
    tasks = FedAvg(batch_size=15, lr=0.1).configure_round(0, subsets, child_seed(7, 1, 0))
    (result,) = SerialExecutor().run(model, FedAvg(), get_params(model), tasks)
    assert result.steps == 3 and np.isfinite(result.train_loss)


class UnusedHead(torch.nn.Module):
    """A classifier with a second head its forward never reads (e.g. an auxiliary one)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.out, self.aux = torch.nn.Linear(64, 10), torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.out(x.flatten(1))


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.5)], ids=["fedavg", "fedprox"])
def test_a_parameter_the_forward_does_not_read_trains_as_in_the_vectorised_executor(strategy):
    """With FedAvg's objective (the loss alone) the serial executor stopped at autograd's
    "appears to not have been used in the graph"; the vectorised one trained the model.
    The unused head's gradient is zero (FedProx's mu (w - w^t) is zero from w = w^t)."""
    model = UnusedHead()
    params = get_params(model)
    subsets = {c: TRAIN.subset(np.arange(30 * c, 30 * c + 10 * (c + 1))) for c in range(3)}
    tasks = FedAvg(batch_size=8, lr=0.1).configure_round(0, subsets, child_seed(0, 0))
    serial = SerialExecutor().run(model, strategy, params, tasks)
    vectorised = VectorisedExecutor().run(model, strategy, params, tasks)
    for s, v in zip(serial, vectorised):
        assert s.steps == v.steps > 0
        np.testing.assert_allclose(s.train_loss, v.train_loss, rtol=1e-5)
        for name in params:
            torch.testing.assert_close(s.params[name], v.params[name], atol=1e-5, rtol=0)
        assert torch.equal(s.params["aux.weight"], params["aux.weight"])
        assert not torch.equal(s.params["out.weight"], params["out.weight"])


def task(**fields) -> ClientTask:
    return ClientTask(**{"client_id": 0, "round_index": 0, "data": TRAIN.subset(np.arange(20)), "epochs": 1,
                         "batch_size": 8, "lr": 0.1, "seed": np.random.SeedSequence(0), **fields})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 0}, "batch_size=0: allowed is an integer >= 1"),  # ZeroDivisionError in batches()
        ({"batch_size": 2.5}, "batch_size=2.5: allowed is an integer >= 1"),  # TypeError
        ({"epochs": 0}, "epochs=0: allowed is an integer >= 1"),  # silently no step
        ({"steps": -3}, "steps=-3: allowed is None or an integer >= 0"),  # silently no step, loss nan
        ({"lr": -0.1}, "lr=-0.1: allowed is a finite number > 0"),  # silently gradient ascent
        ({"lr": float("nan")}, "lr=nan: allowed is a finite number > 0"),  # silently nan weights
        ({"lr": 0}, "lr=0: allowed is a finite number > 0"),
    ],
)
def test_a_client_task_a_custom_strategy_builds_wrong_is_refused(fields, message):
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        task(**fields)


def test_a_client_task_takes_what_the_strategies_and_the_deadline_give_it():
    """numpy integers and floats, and steps=0 (no step, as the tests of the schedule use)."""
    assert task(steps=0).num_steps == 0
    assert task(batch_size=np.int64(8), epochs=np.int32(2), lr=np.float32(0.5)).num_steps == 2 * 3  # ceil(20 / 8) = 3
    assert dataclasses.replace(task(), steps=5).num_steps == 5


@pytest.mark.parametrize("executor", [SerialExecutor(), VectorisedExecutor()], ids=["serial", "vectorised"])
def test_global_params_that_are_not_the_models_are_refused_before_training(executor):
    """The vectorised executor trained a 32-wide MLP, stacked from the parameters given,
    with a 64-wide template, and returned it; the serial one failed with torch's "size
    of tensor a (64) must match", or a bare KeyError for a missing entry."""
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)  # hidden (64,)
    narrow = get_params(build_model("mlp", TRAIN.feature_shape, 10, seed=0, hidden=(32,)))
    tasks = [task()]
    with pytest.raises(ValueError, match=re.escape("global_params['net.1.weight'] (shape (32, 64), torch.float32): "
                                                   "allowed is shape (64, 64), torch.float32, as the model's own")):
        executor.run(model, FedAvg(), narrow, tasks)
    missing = {name: value for name, value in get_params(model).items() if name != "net.3.bias"}
    with pytest.raises(ValueError, match=re.escape("global_params (missing keys ['net.3.bias'])")):
        executor.run(model, FedAvg(), missing, tasks)
