"""Server optimisers and SCAFFOLD: one step of each rule on tiny tensors, against
numbers worked out by hand in the comments, then a short real run on digits."""

import math
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from fl.algorithms import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, IncFL, Scaffold, child_seed
from fl.data import partition
from fl.data.dataset import load_digits
from fl.executors import ClientResult, SerialExecutor
from fl.models import build_model, get_params
from fl.server import run_federated

TRAIN, TEST = load_digits()


def results(*models, samples=None, steps=1):
    """ClientResults of clients 0, 1, ... holding the given {"w": [...]} models."""
    samples = samples or [1] * len(models)
    return [
        ClientResult(i, {"w": torch.tensor(m, dtype=torch.float64), "count": torch.tensor(3)}, n, 0.0, steps)
        for i, (m, n) in enumerate(zip(models, samples))
    ]


def start(*w):
    return {"w": torch.tensor(w, dtype=torch.float64), "count": torch.tensor(7)}


def test_fedavgm_two_momentum_steps():
    strategy = FedAvgM(momentum=0.9, server_lr=1.0)
    # round 1: mean (1*1 + 3*3)/4 = 2.5, Delta = 0 - 2.5 = -2.5, v = -2.5, w = 0 + 2.5 = 2.5
    w = strategy.aggregate(start(0.0), results([1.0], [3.0], samples=[1, 3]))
    assert w["w"].item() == pytest.approx(2.5) and w["count"].item() == 7
    # round 2: mean 3, Delta = 2.5 - 3 = -0.5, v = 0.9 * -2.5 - 0.5 = -2.75, w = 2.5 + 2.75 = 5.25
    w = strategy.aggregate(w, results([3.0]))
    assert w["w"].item() == pytest.approx(5.25)
    assert strategy.aggregate(w, []) is w
    # results without samples are no round either: no momentum step, the velocity kept
    assert strategy.aggregate(w, results([9.0], samples=[0])) is w
    assert strategy.velocity["w"].item() == pytest.approx(-2.75)


def test_fedavgm_without_momentum_is_fedavg():
    old = start(1.0, -2.0)
    new = FedAvgM(momentum=0.0, server_lr=1.0).aggregate(old, results([2.0, 0.0], [6.0, 4.0], samples=[3, 1]))
    torch.testing.assert_close(new["w"], FedAvg().aggregate(old, results([2.0, 0.0], [6.0, 4.0], samples=[3, 1]))["w"])


def test_fedadam_one_step():
    strategy = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # Delta = [1, 7]; m = 0.5 * Delta = [0.5, 3.5]; v = 0.5 * tau^2 + 0.5 * Delta^2 = [1, 25]
    # w = 0 + m / (sqrt(v) + tau) = [0.5 / 2, 3.5 / 6]
    w = strategy.aggregate(start(0.0, 0.0), results([1.0, 7.0]))
    torch.testing.assert_close(w["w"], torch.tensor([0.25, 7 / 12], dtype=torch.float64))
    assert w["count"].item() == 7


def test_fedadam_second_step_uses_both_moments():
    strategy = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    w = strategy.aggregate(start(0.0), results([7.0]))  # m = 3.5, v = 25, w = 3.5 / 6
    # Delta = 7 - 7/12 = 77/12; m = 1.75 + 0.5 * 77/12 = 119/24; v = 12.5 + 0.5 * (77/12)^2
    w = strategy.aggregate(w, results([7.0]))
    v = 12.5 + 0.5 * (77 / 12) ** 2
    assert w["w"].item() == pytest.approx(7 / 12 + (119 / 24) / (math.sqrt(v) + 1.0))


def test_fedyogi_moves_v_additively_both_ways():
    strategy = FedYogi(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # step 1: Delta = 4 > tau; v = 1 - 0.5 * 16 * sign(1 - 16) = 9; m = 2; w = 2 / (3 + 1) = 0.5
    w = strategy.aggregate(start(0.0), results([4.0]))
    assert w["w"].item() == pytest.approx(0.5)
    # step 2: Delta = 1.5 - 0.5 = 1; v = 9 - 0.5 * 1 * sign(9 - 1) = 8.5; m = 1 + 0.5 = 1.5
    w = strategy.aggregate(w, results([1.5]))
    assert w["w"].item() == pytest.approx(0.5 + 1.5 / (math.sqrt(8.5) + 1.0))


def test_fedadagrad_accumulates_squares():
    strategy = FedAdagrad(server_lr=1.0, beta1=0.0, tau=1.0)
    # v = 1 + 9 = 10 after Delta = 3; w = 3 / (sqrt(10) + 1); then Delta = -2: v = 14
    w = strategy.aggregate(start(0.0), results([3.0]))
    first = 3 / (math.sqrt(10) + 1)
    assert w["w"].item() == pytest.approx(first)
    w = strategy.aggregate(w, results([first - 2.0]))
    assert w["w"].item() == pytest.approx(first - 2 / (math.sqrt(14) + 1))


def test_scaffold_control_variates_option_two():
    strategy = Scaffold(lr=0.25)
    available = {i: TRAIN.subset(np.arange(4 * i, 4 * i + 4)) for i in range(4)}
    strategy.configure_round(0, available, child_seed(0, 1, 0))
    assert strategy.aggregate(start(1.0), results([5.0], samples=[0])) == start(1.0)  # no samples: no round
    assert strategy.control == {}  # (c stays "zero", so tasks carry no correction)
    assert all(not task.state for task in strategy.configure_round(0, available, child_seed(0, 1, 0)))  # c = c_i = 0
    # clients 0 and 1 start from x = 1 and end at y = 0 after K = 2 steps of lr 0.25:
    # c_i+ = 0 - 0 + (1 - 0) / (2 * 0.25) = 2, and c = 0 + (1/N)(2 + 2) = 1 with N = 4
    new = strategy.aggregate(start(1.0), results([0.0], [0.0], steps=2))
    assert new["w"].item() == 0.0 and new["count"].item() == 7
    assert strategy.control["w"].item() == 1.0
    assert [strategy.client_controls[i]["w"].item() for i in (0, 1)] == [2.0, 2.0]
    tasks = strategy.configure_round(1, available, child_seed(0, 1, 1))
    # each task carries c - c_i: 1 - 2 for clients 0 and 1, 1 - 0 for the others
    assert [t.state["correction"]["w"].item() for t in tasks] == [-1.0, -1.0, 1.0, 1.0]
    # a client that took no step (y = x) measured no drift: c_0 and c stay
    assert strategy.aggregate(start(0.0), results([0.0], steps=0))["w"].item() == 0.0
    assert strategy.client_controls[0]["w"].item() == 2.0 and strategy.control["w"].item() == 1.0


def test_scaffold_two_rounds_by_hand_with_a_server_step_and_unequal_clients():
    """eta_g = 0.5, N = 4, lr = 0.25; every number below is worked out by hand."""
    strategy = Scaffold(lr=0.25, server_lr=0.5)
    available = {i: TRAIN.subset(np.arange(4 * i, 4 * i + 4)) for i in range(4)}
    strategy.configure_round(0, available, child_seed(0, 1, 0))
    # round 0 from x = 1, K = 2: client 0 (1 sample) ends at 0, client 1 (3 samples) at 0.5
    # c_0+ = (1 - 0) / 0.5 = 2, c_1+ = (1 - 0.5) / 0.5 = 1, c = (2 + 1) / 4 = 0.75
    # x = 1 + 0.5 * ((1 * 0 + 3 * 0.5) / 4 - 1) = 1 - 0.5 * 0.625 = 0.6875
    x = strategy.aggregate(start(1.0), results([0.0], [0.5], samples=[1, 3], steps=2))
    assert x["w"].item() == pytest.approx(0.6875) and strategy.control["w"].item() == pytest.approx(0.75)
    tasks = strategy.configure_round(1, available, child_seed(0, 1, 1))
    assert [t.state["correction"]["w"].item() for t in tasks] == pytest.approx([-1.25, -0.25, 0.75, 0.75])
    # round 1, K = 1: client 0 (1 sample) ends at 0.4375, client 2 (3 samples) at 0.1875
    # c_0+ = c_0 - c + (x - y) / lr = 2 - 0.75 + 1 = 2.25; c_2+ = 0 - 0.75 + 2 = 1.25
    # c = 0.75 + ((2.25 - 2) + (1.25 - 0)) / 4 = 1.125
    # x = 0.6875 + 0.5 * ((0.4375 + 3 * 0.1875) / 4 - 0.6875) = 0.46875
    second = [ClientResult(0, start(0.4375), 1, 0.0, 1), ClientResult(2, start(0.1875), 3, 0.0, 1)]
    x = strategy.aggregate(x, second)
    assert x["w"].item() == pytest.approx(0.46875) and strategy.control["w"].item() == pytest.approx(1.125)
    assert [strategy.client_controls[i]["w"].item() for i in (0, 1, 2)] == pytest.approx([2.25, 1.0, 1.25])


def test_scaffold_refuses_results_of_clients_it_never_configured():
    """Before any configure_round, N = 0: aggregate set c = -inf without a word; a result of
    a client not counted in N made c's mean (1/N) sum_i c_i over too few clients."""
    strategy = Scaffold(lr=0.1)
    message = "results (from client ids [0], never given to configure_round): allowed is results of the clients " \
              "configure_round was given, the N = 0 of c = (1/N) sum_i c_i"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        strategy.aggregate(start(0.0), results([1.0], steps=3))
    available = {i: TRAIN.subset(np.arange(4 * i, 4 * i + 4)) for i in range(2)}
    strategy.configure_round(0, available, child_seed(0, 1, 0))
    stranger = [*results([1.0], [2.0]), ClientResult(5, start(3.0), 1, 0.0, 1), ClientResult(7, start(3.0), 1, 0.0, 1)]
    with pytest.raises(ValueError, match=re.escape("(from client ids [5, 7], never given to configure_round): "
                                                   "allowed is results of the clients configure_round was given, "
                                                   "the N = 2 of")):
        strategy.aggregate(start(0.0), stranger)
    assert strategy.control == {} and strategy.client_controls == {}  # refused before any change
    strategy.aggregate(start(0.0), results([1.0], [2.0]))
    assert strategy.control["w"].item() == pytest.approx((-1.0 / 0.1 - 2.0 / 0.1) / 2)  # (c_0+ + c_1+) / N


def test_scaffold_keeps_c_the_mean_over_all_clients_when_one_arrives_later():
    """A client first available in round 1 joins N with c_i = 0: c = (1/N) sum_i c_i must
    drop from (2 + 2) / 2 = 2 to (2 + 2) / 3 = 4/3 (it stayed 2, the mean of two clients)."""
    strategy = Scaffold(lr=0.25)
    two = {i: TRAIN.subset(np.arange(4 * i, 4 * i + 4)) for i in range(2)}
    strategy.configure_round(0, two, child_seed(0, 1, 0))
    strategy.aggregate(start(1.0), results([0.0], [0.0], steps=2))  # c_0+ = c_1+ = (1 - 0) / 0.5 = 2
    assert strategy.control["w"].item() == 2.0
    three = {**two, 2: TRAIN.subset(np.arange(8, 12))}
    tasks = strategy.configure_round(1, three, child_seed(0, 1, 1))
    assert strategy.control["w"].item() == pytest.approx(4 / 3)
    # c - c_i: 4/3 - 2 for clients 0 and 1, 4/3 - 0 for the newcomer
    assert [t.state["correction"]["w"].item() for t in tasks] == pytest.approx([-2 / 3, -2 / 3, 4 / 3])
    strategy.configure_round(2, two, child_seed(0, 1, 2))  # a client missing from a round stays in N
    assert strategy.control["w"].item() == pytest.approx(4 / 3)


def test_an_unknown_keyword_names_the_strategy_and_the_keywords_it_takes():
    """FedAdagrad(beta2=0.9) raised "FedAvg.__init__() got an unexpected keyword argument 'beta2'"."""
    message = "beta2=0.9: not an option of FedAdagrad; allowed are server_lr, beta1, tau, epochs, batch_size, lr, " \
              "fraction, clients_per_round, steps, weighting"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FedAdagrad(beta2=0.9)
    with pytest.raises(ValueError, match=r"^momentum=0.5: not an option of Scaffold; allowed are server_lr, epochs"):
        Scaffold(momentum=0.5)
    # IncFL sets the weighting itself: not offered; a subclass's *args is no keyword
    message = ("local_epochs=2: not an option of IncFL; allowed are local_losses, global_losses, gap_scale, epochs, "
               "batch_size, lr, fraction, clients_per_round, steps")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        IncFL([1.0], lambda params: [1.0], local_epochs=2)

    class Extended(FedAvg):
        def __init__(self, *args, extra=1, **options):
            super().__init__(*args, **options)

    with pytest.raises(ValueError, match=r"^local_epochs=2: not an option of Extended; allowed are extra, epochs,"):
        Extended(local_epochs=2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(momentum=0.5, batch_size=16, lr=0.05),
        lambda: FedAdam(server_lr=0.01, batch_size=16, lr=0.05),
        lambda: Scaffold(server_lr=0.5, batch_size=16, lr=0.05),
    ],
    ids=["FedAvgM", "FedAdam", "Scaffold"],
)
def test_a_strategy_trains_each_run_from_its_start(make):
    """The velocity, moments and control variates of one run used to carry into the next
    run of the same instance, which then trained from another start."""
    subsets = [TRAIN.subset(np.arange(40 * i, 40 * i + 40)) for i in range(3)]
    reused = make()
    first = run_federated("mlp", subsets, reused, 3, seed=0, progress=False)
    second = run_federated("mlp", subsets, reused, 3, seed=0, progress=False)
    fresh = run_federated("mlp", subsets, make(), 3, seed=0, progress=False)
    assert any(not torch.equal(first.params[k], first.initial_params[k]) for k in first.params)
    for name in fresh.params:
        assert torch.equal(first.params[name], fresh.params[name])
        assert torch.equal(second.params[name], fresh.params[name])


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(momentum=0.9, server_lr=0.5, batch_size=16, lr=0.05),
        lambda: FedAdam(server_lr=0.01, batch_size=16, lr=0.05),
        lambda: FedYogi(server_lr=0.01, batch_size=16, lr=0.05),
        lambda: FedAdagrad(server_lr=0.1, batch_size=16, lr=0.05),
        lambda: Scaffold(server_lr=2.0, batch_size=16, lr=0.05),
    ],
    ids=["FedAvgM", "FedAdam", "FedYogi", "FedAdagrad", "Scaffold"],
)
def test_server_optimisers_step_the_parameters_and_average_batch_norms_running_statistics(make):
    """Running statistics took the optimiser's step like weights (a velocity, Adam's moments):
    12 rounds of resnet8 on digits reached test accuracy 0.14 with FedAvgM, 0.29 with FedAdam,
    against 0.8 with the statistics averaged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    statistics = {"2.running_mean", "2.running_var", "2.num_batches_tracked"}
    subsets = {c: TRAIN.subset(np.arange(40 * c, 40 * c + 12 * (c + 1))) for c in range(3)}  # 12, 24, 36 samples
    strategy, params = make(), get_params(model)
    for round_index in range(2):  # the second: where a velocity or moments of the statistics would act
        tasks = strategy.configure_round(round_index, subsets, child_seed(0, round_index))
        clients = SerialExecutor().run(model, strategy, params, tasks)
        assert all(r.buffers == statistics for r in clients)
        new = strategy.aggregate(params, clients)

        def mean(name):
            return sum(r.num_samples * r.params[name] for r in clients) / sum(r.num_samples for r in clients)

        for name in ("2.running_mean", "2.running_var"):
            torch.testing.assert_close(new[name], mean(name))
        assert torch.equal(new["2.num_batches_tracked"], params["2.num_batches_tracked"])
        for name in ("1.weight", "2.weight", "4.bias"):  # parameters, batch norm's scale among them
            assert (new[name] - mean(name)).abs().max() > 1e-4  # the optimiser's step, not the mean
        if isinstance(strategy, Scaffold):  # control variates are kept for parameters only
            assert set(strategy.control) == {name for name in params if name not in statistics}
        params = new


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(momentum=0.9, server_lr=0.5, batch_size=16, lr=0.05),
        lambda: FedAdam(server_lr=0.1, tau=1e-7, batch_size=16, lr=0.05),
        lambda: FedYogi(server_lr=0.1, tau=1e-7, batch_size=16, lr=0.05),
        lambda: FedAdagrad(server_lr=0.1, tau=1e-7, batch_size=16, lr=0.05),
        lambda: Scaffold(server_lr=2.0, batch_size=16, lr=0.05),
    ],
    ids=["FedAvgM", "FedAdam", "FedYogi", "FedAdagrad", "Scaffold"],
)
def test_a_parameter_no_client_changes_stays_where_it_is(make):
    """A frozen first layer (as a dead unit's weights, no client changes it): the
    pseudo-gradient sum_k a_k w_k - w, summed in float32, was round-off of 1e-8 there, which
    Adam's m / (sqrt(v) + tau) scaled up to its step size: FedAdam at tau = 1e-7 moved the
    frozen weight by 11% of its largest entry in 10 rounds (Reddi et al.: Delta = 0, x stays).
    Delta is now summed as the clients' changes, exactly 0 there; the other layers train."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    model[1].weight.requires_grad_(False)
    subsets = {c: TRAIN.subset(np.arange(100 * c, 100 * c + 7 + 30 * c)) for c in range(4)}  # 7 to 97 samples
    strategy, params = make(), get_params(model)
    first = {name: value.clone() for name, value in params.items()}
    for round_index in range(5):
        tasks = strategy.configure_round(round_index, subsets, child_seed(0, round_index))
        clients = SerialExecutor().run(model, strategy, params, tasks)
        assert all(torch.equal(r.params["1.weight"], params["1.weight"]) for r in clients)
        params = strategy.aggregate(params, clients)
    assert torch.equal(params["1.weight"], first["1.weight"])
    assert (params["3.weight"] - first["3.weight"]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "make",
    [lambda: Scaffold(batch_size=16, lr=0.05), lambda: FedAdam(batch_size=16, lr=0.05), lambda: FedAvgM(lr=0.05)],
    ids=["Scaffold", "FedAdam", "FedAvgM"],
)
def test_the_client_view_carries_the_hyperparameters_not_the_servers_state(make):
    """RayExecutor sent every actor the whole strategy each round: SCAFFOLD's c and every
    c_i (N + 1 model copies), FedAdam's m and v."""
    subsets = [TRAIN.subset(np.arange(k * 30, (k + 1) * 30)) for k in range(4)]
    strategy = make()
    result = run_federated("mlp", subsets, strategy, 2, seed=0, progress=False)
    model_bytes = sum(w.numel() * w.element_size() for w in result.params.values())
    view = strategy.client_view()
    assert len(pickle.dumps(view)) == len(pickle.dumps(make())) < model_bytes / 10  # the hyperparameters alone
    assert len(pickle.dumps(strategy)) > model_bytes  # the strategy keeps its own state
    w = {"w": torch.tensor([1.0, -2.0], requires_grad=True)}
    state = {"correction": {"w": torch.tensor([0.5, 0.25])}}
    for client_state in ({}, state):
        loss = torch.tensor(0.3)
        assert view.local_objective(loss, w, w, client_state) == strategy.local_objective(loss, w, w, client_state)


def test_scaffold_correction_adds_c_minus_c_i_to_the_gradient():
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    loss = torch.sum(w**2)  # gradient 2w = [1, -2]
    correction = torch.tensor([0.25, 3.0])
    objective = Scaffold().local_objective(loss, {"w": w}, {}, {"correction": {"w": correction}})
    (gradient,) = torch.autograd.grad(objective, [w])
    torch.testing.assert_close(gradient, torch.tensor([1.25, 1.0]))
    assert Scaffold().local_objective(loss, {"w": w}, {}, {}) is loss


def test_scaffold_local_step_is_sgd_on_grad_plus_c_minus_c_i():
    """One real local step through the executor: y = x - lr (g + c - c_i)."""
    data = TRAIN.subset(np.arange(8))
    model = build_model("mlp", TRAIN.feature_shape, 10, seed=0, hidden=())
    x = get_params(model)
    strategy = Scaffold(lr=0.5, batch_size=8, steps=1)
    strategy.clients = {0}
    strategy.control = {name: torch.full_like(t, 0.1) for name, t in x.items()}
    [task] = strategy.configure_round(0, {0: data}, child_seed(0, 1, 0))
    [plain] = SerialExecutor().run(model, FedAvg(lr=0.5, batch_size=8, steps=1), x, [task])
    [corrected] = SerialExecutor().run(model, strategy, x, [task])
    for name in x:
        torch.testing.assert_close(corrected.params[name], plain.params[name] - 0.5 * 0.1)


@pytest.mark.parametrize(
    "strategy",
    [
        FedAvgM(momentum=0.5, batch_size=16, lr=0.05),
        FedAdam(server_lr=0.01, batch_size=16, lr=0.05),
        FedYogi(server_lr=0.01, batch_size=16, lr=0.05),
        FedAdagrad(server_lr=0.1, batch_size=16, lr=0.05),
        Scaffold(batch_size=16, lr=0.05),
    ],
    ids=lambda s: type(s).__name__,
)
def test_each_strategy_learns_non_iid_digits(strategy):
    parts = partition.dirichlet(TRAIN.labels(), 10, 0.3, seed=0, min_size=20)
    subsets = [TRAIN.subset(p) for p in parts]
    result = run_federated("mlp", subsets, strategy, 10, seed=0, test=TEST, progress=False)
    assert result.history[-1].test_accuracy > 0.8


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: FedAvgM(momentum=1.0), "momentum=1.0"),
        (lambda: FedAvgM(server_lr=0), "server_lr=0"),
        (lambda: FedAdam(beta2=1.5), "beta2=1.5"),
        (lambda: FedYogi(tau=0.0), "tau=0.0"),
        (lambda: FedAdagrad(beta1=-0.1), "beta1=-0.1"),
        (lambda: Scaffold(server_lr=-1.0), "server_lr=-1.0"),
    ],
)
def test_bad_settings_are_refused(make, key):
    with pytest.raises(ValueError, match=f"{key}: allowed"):
        make()
