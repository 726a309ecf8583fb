"""The Ray executor gives the serial executor's numbers, on a local 2-CPU Ray.

Selected with ``pytest -m ray``; skipped when Ray is not installed.
"""

import os
import sys

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from fl.algorithms import FedAvg, FedProx, Scaffold, child_seed  # noqa: E402
from fl.data import partition  # noqa: E402
from fl.data.dataset import load_digits  # noqa: E402
from fl.executors import SerialExecutor  # noqa: E402
from fl.executors.ray_executor import RayExecutor  # noqa: E402
from fl.models import build_model, get_params  # noqa: E402
from fl.server import run_federated  # noqa: E402

pytestmark = pytest.mark.ray

TRAIN, TEST = load_digits()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-6  # actors use 1 torch thread, the test process more: float summation order may differ


@pytest.fixture(scope="module")
def local_ray():
    """A private 2-CPU Ray whose workers import this checkout's ``fl``."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
    )
    yield
    ray.shutdown()


def max_difference(a, b):
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.parametrize(
    "strategy",
    [FedAvg(batch_size=10, lr=0.05, clients_per_round=4), FedProx(mu=0.1, batch_size=10, lr=0.05, clients_per_round=4)],
    ids=["fedavg", "fedprox"],
)
def test_federated_run_matches_serial(local_ray, strategy):
    parts = [TRAIN.subset(p) for p in partition.dirichlet(TRAIN.labels(), 8, alpha=0.5, seed=3, min_size=5)]
    serial = run_federated("mlp", parts, strategy, rounds=4, seed=7, test=TEST, progress=False)
    with RayExecutor(num_actors=2) as executor:
        distributed = run_federated(
            "mlp", parts, strategy, rounds=4, seed=7, test=TEST, progress=False, executor=executor
        )
        # the dataset went into the object store once, and to each actor once
        assert len(executor._dataset_refs) == 1
        assert all(sum(kind == "data" for kind, _ in known) <= 1 for known in executor._known)
    assert max_difference(serial.params, distributed.params) < TOLERANCE
    for s, d in zip(serial.history, distributed.history):
        assert (s.clients, s.samples) == (d.clients, d.samples)
        assert s.train_loss == pytest.approx(d.train_loss, abs=TOLERANCE)
        assert s.test_accuracy == pytest.approx(d.test_accuracy, abs=1e-3)


def test_actors_are_sent_the_strategys_client_view_with_the_serial_numbers(local_ray, monkeypatch):
    """Every round sent every actor the whole strategy: for SCAFFOLD its c and every
    client's c_i (N + 1 model copies), though actors use only its local objective."""
    parts = [TRAIN.subset(p) for p in partition.dirichlet(TRAIN.labels(), 6, alpha=0.5, seed=3, min_size=5)]
    strategy = Scaffold(batch_size=10, lr=0.05)
    serial = run_federated("mlp", parts, strategy, rounds=3, seed=7, progress=False)
    put, sent = ray.put, []
    monkeypatch.setattr(ray, "put", lambda value, **options: sent.append(value) or put(value, **options))
    with RayExecutor(num_actors=2) as executor:
        distributed = run_federated("mlp", parts, strategy, rounds=3, seed=7, progress=False, executor=executor)
    shipped = [value for value in sent if isinstance(value, Scaffold)]
    assert len(shipped) == 3 and strategy.control  # one a round; the server kept its control variates
    assert not any(view.control or view.client_controls or view is strategy for view in shipped)
    assert max_difference(serial.params, distributed.params) < TOLERANCE


def test_results_come_back_in_task_order_whatever_the_actor(local_ray):
    """Uneven clients, tasks in a scrambled order, steps= and epochs= mixed: every
    result is the serial executor's for the same task, at the same position."""
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)
    params = get_params(model)
    sizes = [5, 40, 13, 120, 1, 77]
    offsets = np.cumsum([0, *sizes])
    subsets = {c: TRAIN.subset(np.arange(offsets[c], offsets[c + 1])) for c in range(len(sizes))}
    tasks = FedAvg(epochs=2, batch_size=8, lr=0.1).configure_round(0, subsets, child_seed(11, 1, 0))
    tasks = [tasks[i] for i in (3, 0, 5, 1, 4, 2)]
    tasks[2] = FedAvg(steps=9, batch_size=8, lr=0.1).configure_round(0, {5: subsets[5]}, child_seed(11, 1, 0))[0]
    expected = SerialExecutor().run(model, FedAvg(), params, tasks)
    with RayExecutor(num_actors=3, num_cpus=0.5) as executor:  # 3 actors on the fixture's 2 CPUs
        got = executor.run(model, FedAvg(), params, tasks)
        again = executor.run(model, FedAvg(), params, tasks)  # cached data and model, new round payload
    assert [r.client_id for r in got] == [t.client_id for t in tasks]
    for e, g, a in zip(expected, got, again):
        assert (e.client_id, e.num_samples, e.steps) == (g.client_id, g.num_samples, g.steps)
        assert g.train_loss == pytest.approx(e.train_loss, abs=TOLERANCE)
        assert max_difference(e.params, g.params) < TOLERANCE
        assert all(torch.equal(g.params[k], a.params[k]) for k in g.params)


def test_a_changed_template_is_sent_again_and_only_the_current_one_is_kept(local_ray):
    """Templates were cached by id(model) and never sent again: a layer frozen between two
    runs of one module still trained on the actors (it moved by 0.035). And every run's
    template stayed in the object store and on the actors until close()."""
    subsets = [TRAIN.subset(np.arange(40 * k, 40 * k + 40)) for k in range(3)]
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)
    with RayExecutor(num_actors=2) as executor:
        run_federated(model, subsets, FedAvg(lr=0.1), 1, seed=0, executor=executor, progress=False)
        model.net[1].requires_grad_(False)
        serial = run_federated(model, subsets, FedAvg(lr=0.1), 2, seed=0, progress=False)
        distributed = run_federated(model, subsets, FedAvg(lr=0.1), 2, seed=0, executor=executor, progress=False)
        for seed in range(3):  # a new module each run, as each retraining of the closed loop builds
            run_federated("mlp", subsets, FedAvg(lr=0.1), 1, seed=seed, executor=executor, progress=False)
        held = ray.get([actor.__ray_call__.remote(lambda worker: len(worker.models)) for actor in executor._actors])
    assert max_difference(serial.params, distributed.params) < TOLERANCE
    frozen = distributed.params["net.1.weight"] - distributed.initial_params["net.1.weight"]
    assert frozen.abs().max() < TOLERANCE  # the mean of unchanged copies: float rounding only
    assert held == [1, 1]


def test_oversubscribing_the_cluster_warns(local_ray):
    executor = RayExecutor(num_actors=3, num_cpus=1)
    with pytest.warns(RuntimeWarning, match="exceed the cluster"):
        executor._start()  # the third actor stays pending until close()
    executor.close()


def test_no_tasks_and_bad_settings(local_ray):
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0)
    assert RayExecutor(num_actors=1).run(model, FedAvg(), get_params(model), []) == []
    task = FedAvg().configure_round(0, {0: TRAIN.subset(np.arange(10))}, child_seed(0, 1, 0))
    # refused before any actor starts
    for options in ({"num_actors": 0}, {"num_cpus": -1}, {"num_cpus": float("nan")}, {"address": 5}):
        with pytest.raises(ValueError, match=next(iter(options))):
            RayExecutor(**options).run(model, FedAvg(), get_params(model), task)



class RefusingObjective(FedAvg):
    """A strategy whose clients refuse their settings, as a user's strategy may."""

    def local_objective(self, loss, params, global_params, client_state):
        raise ValueError("mu=-1: allowed is a number >= 0")


def test_a_users_value_error_on_an_actor_comes_back_as_serial_training_gives_it(local_ray):
    """It came back as a RuntimeError wrapping Ray's coloured traceback."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    subsets = [TRAIN.subset(np.arange(k * 40, (k + 1) * 40)) for k in range(2)]
    executor = RayExecutor(num_actors=1)
    try:
        with pytest.raises(ValueError, match=r"^mu=-1: allowed is a number >= 0$"):
            run_federated("mlp", subsets, RefusingObjective(), 1, executor=executor, progress=False)
    finally:
        executor.close()
