"""The event-driven runtime: run_federated as its synchronous case, the clock, behaviours."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from fl import evaluation
from fl.algorithms import FedAvg, FedAvgM, FedProx, Scaffold
from fl.algorithms.strategy import child_seed
from fl.data import partition
from fl.data.dataset import ArrayDataset, load_digits
from fl.executors import SerialExecutor
from fl.models import build_model, get_params
from fl.runtime import SERVER, ClientProfile, Deadline, Dropout, EventQueue, FedBuff, Kind, Message, Node, simulate
from fl.runtime.launch import DISPATCH_STREAM, DROPOUT_STREAM, INIT_STREAM, PICK_STREAM
from fl.runtime.messages import params_nbytes
from fl.server import run_federated

TRAIN, TEST = load_digits()
SUBSETS = [TRAIN.subset(p) for p in partition.dirichlet(TRAIN.labels(), 8, 0.5, seed=1, min_size=20)]
QUIET = {"progress": False}
OTHER_SHAPE = ArrayDataset("flat digits", TEST.x.flatten(1), TEST.y, 10)  # the same data, other shape
FEWER_CLASSES = ArrayDataset("digits 0-4", TEST.x[TEST.y < 5], TEST.y[TEST.y < 5], 5)


class RecordingExecutor(SerialExecutor):
    """The serial executor, keeping (global_params, tasks, results) of every call."""

    def __init__(self):
        self.calls = []

    def run(self, model, strategy, global_params, tasks):
        results = super().run(model, strategy, global_params, tasks)
        self.calls.append((global_params, tasks, results))
        return results


class RecordingFedAvg(FedAvg):
    """FedAvg keeping (global_params, results) of every aggregation."""

    def __init__(self, **options):
        super().__init__(**options)
        self.aggregations = []

    def aggregate(self, global_params, results):
        self.aggregations.append((global_params, results))
        return super().aggregate(global_params, results)


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def model_bytes(data):
    return params_nbytes(simulate("mlp", data, FedAvg(), 0, **QUIET).params)


@pytest.mark.parametrize("strategy", [FedAvg, Scaffold])
def test_client_speeds_change_the_clock_but_not_the_numbers(strategy):
    """run_federated (no behaviours, default profiles) trains each round's clients in one
    executor call. Clients of different speeds and bandwidths answer out of order and
    start at different instants (several executor calls), yet every number is the same."""
    profiles = [ClientProfile(speed=5.0 + 7 * i, upload=1e5 * (8 - i), download=2e5 * (1 + i % 3)) for i in range(8)]
    together = RecordingExecutor()
    reference = run_federated(
        "mlp", SUBSETS, strategy(clients_per_round=3, lr=0.1), 4, seed=3, test=TEST, executor=together, **QUIET
    )
    assert [len(tasks) for _, tasks, _ in together.calls] == [3, 3, 3, 3]
    executor = RecordingExecutor()
    options = dict(seed=3, test=TEST, profiles=profiles, executor=executor, **QUIET)
    result = simulate("mlp", SUBSETS, strategy(clients_per_round=3, lr=0.1), 4, **options)
    assert same(reference.initial_params, result.initial_params) and same(reference.params, result.params)
    for expected, got in zip(reference.history, result.history, strict=True):
        assert (got.clients, got.updates, got.samples) == (expected.clients, expected.clients, expected.samples)
        assert (got.train_loss, got.test_loss, got.test_accuracy) == (
            expected.train_loss,
            expected.test_loss,
            expected.test_accuracy,
        )
        assert (got.bytes_down, got.bytes_up) == (expected.bytes_down, expected.bytes_up)
    assert len(executor.calls) > 4  # the clients of a round did not all start at once
    times = [r.time for r in result.history]
    assert times == sorted(times) and times[0] > 0


def test_round_time_is_the_slowest_download_compute_upload():
    data = {0: TRAIN.subset(np.arange(40)), 1: TRAIN.subset(np.arange(40, 60))}
    nbytes = model_bytes(data)
    # client 0: 1 s download, 4 steps * 10 / 20 = 2 s compute, 0.5 s upload = 3.5 s
    # client 1: 0.25 s download, 2 steps * 10 / 10 = 2 s compute, 2 s upload = 4.25 s
    profiles = {
        0: ClientProfile(speed=20, upload=2 * nbytes, download=nbytes),
        1: ClientProfile(speed=10, upload=nbytes / 2, download=4 * nbytes),
    }
    result = simulate("mlp", data, FedAvg(batch_size=10), 2, profiles=profiles, **QUIET)
    assert [r.time for r in result.history] == [4.25, 8.5]
    assert [c.finished_at for c in result.clients.values()] == [8.5, 8.5]


def test_the_clock_and_the_deadline_charge_a_short_last_batch_its_own_samples():
    """B = 10 over 25 samples: batches of 10, 10 and 5, so one epoch processes 25 samples,
    5 s at 5 samples a second (not 3 * 10 = 30 samples, 6 s), and fits a 5 s deadline."""
    data = {0: TRAIN.subset(np.arange(25))}
    result = simulate("mlp", data, FedAvg(batch_size=10), 1, profiles=ClientProfile(speed=5.0), **QUIET)
    assert result.history[0].time == 5.0
    executor = RecordingExecutor()
    simulate("mlp", data, FedAvg(batch_size=10), 1, profiles=ClientProfile(speed=5.0), executor=executor,
             behaviours=[Deadline(5.0)], **QUIET)
    assert [r.steps for r in executor.calls[0][2]] == [3]


def test_profiles_need_only_cover_the_clients_with_data():
    """Client 1 holds no sample and takes no part: 20 samples at 4 a second take 5 s."""
    data = {0: TRAIN.subset(np.arange(20)), 1: TRAIN.subset([])}
    result = simulate("mlp", data, FedAvg(batch_size=10), 1, profiles={0: ClientProfile(speed=4.0)}, **QUIET)
    assert result.history[0].time == 5.0 and list(result.clients) == [0]


def test_a_rounds_train_loss_is_weighted_by_samples():
    executor = RecordingExecutor()
    data = {0: TRAIN.subset(np.arange(10)), 1: TRAIN.subset(np.arange(10, 100))}
    result = simulate("mlp", data, FedAvg(batch_size=10), 1, executor=executor, **QUIET)
    [(_, _, [r0, r1])] = executor.calls
    assert result.history[0].train_loss == pytest.approx((10 * r0.train_loss + 90 * r1.train_loss) / 100)


def test_a_strategy_object_used_again_gives_the_same_run():
    """FedAvgM's momentum from the first run does not carry into the second."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(2)]
    strategy = FedAvgM(momentum=0.9, lr=0.1, batch_size=10)
    first, second = (simulate("mlp", data, strategy, 2, seed=1, **QUIET) for _ in range(2))
    assert same(first.params, second.params)


def test_a_module_given_with_init_params_keeps_its_own_weights():
    module = build_model("mlp", TRAIN.feature_shape, 10, np.random.SeedSequence(1))
    own = get_params(module)
    other = get_params(build_model("mlp", TRAIN.feature_shape, 10, np.random.SeedSequence(2)))
    result = simulate(module, [TRAIN.subset(np.arange(40))], FedAvg(), 1, init_params=other, **QUIET)
    assert same(get_params(module), own) and same(result.initial_params, other)


def test_a_models_size_on_the_wire_counts_each_tensors_element_size():
    assert params_nbytes({"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float16)}) == 28


def test_clients_starting_together_share_one_executor_call():
    executor = RecordingExecutor()
    profiles = [ClientProfile(speed=1.0 + i) for i in range(8)]
    simulate("mlp", SUBSETS, FedAvg(), 2, profiles=profiles, executor=executor, **QUIET)
    assert [len(tasks) for _, tasks, _ in executor.calls] == [8, 8]


def test_event_queue_orders_by_time_then_kind_then_sending():
    queue = EventQueue()
    events = [(Kind.TIMEOUT, 1.0), (Kind.UPDATE, 1.0), (Kind.UPDATE, 1.0), (Kind.TRAIN, 0.5), (Kind.FINISH, 2.0)]
    for tag, (kind, time) in zip("abcde", events):
        queue.push(Message(kind, 0, SERVER, time, tag))
    assert queue.next_time() == 0.5
    assert [queue.pop().payload for _ in range(5)] == ["d", "b", "c", "a", "e"]
    assert queue.next_time() == float("inf")
    node = Node(3)
    with pytest.raises(LookupError, match="no handler for JOIN"):
        node.handle(Message(Kind.JOIN, 0, 3, 0.0))
    first, second = (lambda message: None), (lambda message: None)
    assert node.on(Kind.JOIN, first) is None and node.on(Kind.JOIN, second) is first  # the handler it replaces


def test_a_straggler_does_the_steps_that_fit_before_the_deadline():
    data = {0: TRAIN.subset(np.arange(50)), 1: TRAIN.subset(np.arange(50, 100))}
    # B = 10, 5 planned steps. Client 0: 1 step/s, upload 1 s: 2 steps fit in 3 s.
    # Client 1: 10 steps/s: all 5 steps, done at 0.5 s.
    profiles = {0: ClientProfile(speed=10, upload=model_bytes(data)), 1: ClientProfile(speed=100)}
    executor = RecordingExecutor()
    result = simulate(
        "mlp", data, FedAvg(batch_size=10), 1, profiles=profiles, executor=executor, behaviours=[Deadline(3.0)], **QUIET
    )
    [(_, tasks, results)] = executor.calls
    assert {t.client_id: t.steps for t in tasks} == {0: 2, 1: None}
    assert [r.steps for r in results] == [2, 5]
    assert result.history[0].updates == 2 and result.history[0].time == 3.0  # arrival at the deadline counts


def test_without_partial_work_a_straggler_sends_nothing():
    data = {0: TRAIN.subset(np.arange(50)), 1: TRAIN.subset(np.arange(50, 100))}
    profiles = {0: ClientProfile(speed=10), 1: ClientProfile(speed=100)}
    strategy = RecordingFedAvg(batch_size=10)
    dropping = Deadline(3.0, partial_work=False)
    result = simulate("mlp", data, strategy, 1, profiles=profiles, behaviours=[dropping], **QUIET)
    [(_, results)] = strategy.aggregations
    assert [r.client_id for r in results] == [1]
    record = result.history[0]
    assert (record.updates, record.bytes_up, record.time) == (1, params_nbytes(result.params), 3.0)


def test_dropout_is_seeded_and_closes_rounds_at_the_deadline():
    def run(probability):
        behaviours = [Deadline(1000.0), Dropout(probability)]
        return simulate("mlp", SUBSETS, FedAvg(), 3, seed=4, behaviours=behaviours, **QUIET)

    a, b, everyone = run(0.5), run(0.5), run(1.0)
    assert same(a.params, b.params) and [r.updates for r in a.history] == [r.updates for r in b.history]
    assert 0 < sum(r.updates for r in a.history) < 24
    assert [r.clients for r in a.history] == [8, 8, 8]  # the orders sent, answered or not
    assert [r.updates for r in everyone.history] == [0, 0, 0] and same(everyone.params, everyone.initial_params)
    assert [r.time for r in everyone.history] == [1000.0, 2000.0, 3000.0]
    assert [r.bytes_up for r in everyone.history] == [0, 0, 0]


def test_each_orders_dropout_is_drawn_from_the_dropout_stream_keyed_by_its_dispatch():
    """Dropout's draws came from the run's round stream (spawn key 1) instead of its own
    (DROPOUT_STREAM): the order of dispatch d dropped out by the draw of round d's stream.
    Every client is sent an order each round, so round t's order to client c is dispatch 8t + c
    and the client trains unless default_rng(child_seed(seed, DROPOUT_STREAM, 8t + c)).random() < 0.5."""
    executor = RecordingExecutor()
    simulate("mlp", SUBSETS, FedAvg(), 2, seed=4, executor=executor, behaviours=[Deadline(1000.0), Dropout(0.5)],
             **QUIET)
    trained = [[task.client_id for task in tasks] for _, tasks, _ in executor.calls]
    expected = [[c for c in range(8) if np.random.default_rng(child_seed(4, DROPOUT_STREAM, 8 * t + c)).random() >= 0.5]
                for t in range(2)]
    assert trained == expected


def test_dropout_without_deadline_is_refused_before_training():
    executor = RecordingExecutor()
    with pytest.raises(ValueError, match=r"behaviours \(Dropout\(0.3\) without a Deadline\): allowed is"):
        simulate("mlp", SUBSETS, FedAvg(), 2, behaviours=[Dropout(0.3)], executor=executor, **QUIET)
    assert executor.calls == []
    for behaviours in ([Dropout(0.3), Deadline(1000.0)], [Dropout(0.0)]):  # either order; no dropout, no deadline
        simulate("mlp", SUBSETS, FedAvg(), 1, behaviours=behaviours, **QUIET)


def test_a_refused_simulation_closes_its_progress_bar():
    """Dropout without a Deadline is refused after the server has opened its progress bar;
    the bar used to stay open (and on screen) after the error."""
    from tqdm.auto import tqdm

    with pytest.raises(ValueError, match="without a Deadline"):
        simulate("mlp", SUBSETS, FedAvg(), 2, behaviours=[Dropout(0.3)], progress=True)
    assert [bar for bar in tqdm._instances if bar.desc == "FedAvg"] == []


class SilentClients:
    """A behaviour of the user's own: clients that never answer."""

    def install(self, simulation):
        for client in simulation.clients.values():
            client.on(Kind.TRAIN, lambda message: None)


class Watch:
    """A behaviour that only keeps the simulation, for a test to look at its server."""

    def install(self, simulation):
        self.simulation = simulation


def test_a_server_left_waiting_for_answers_that_never_come_is_reported():
    with pytest.raises(RuntimeError, match="ran out of events in round 0: the server waits for clients"):
        simulate("mlp", SUBSETS, FedAvg(), 2, behaviours=[SilentClients()], **QUIET)


def test_clients_evaluate_the_global_model_on_their_own_test_sets():
    head = TEST.subset(np.arange(100))
    tests = {0: head, 5: TEST}
    result = simulate("mlp", SUBSETS, FedProx(mu=0.1), 4, test=TEST, client_tests=tests, evaluate_every=3, **QUIET)
    assert [sorted(r.client_accuracy) for r in result.history] == [[], [], [0, 5], [0, 5]]
    last = result.history[-1]
    assert last.client_accuracy[5] == last.test_accuracy
    own = evaluation.accuracy(result.model, result.params, ArrayDataset("head", *head.tensors(), 10))
    assert last.client_accuracy[0] == own


def test_fedbuff_weights_stale_updates_and_steps_every_k():
    """Client 1 is slow: by the time its update arrives the model has moved on tau
    versions, and it enters as x_now + (1 + tau)^(-1/2) (y_1 - x_sent)."""
    data = {0: TRAIN.subset(np.arange(40)), 1: TRAIN.subset(np.arange(40, 80))}
    strategy, executor = RecordingFedAvg(batch_size=10), RecordingExecutor()
    profiles = {0: ClientProfile(speed=100), 1: ClientProfile(speed=12)}
    buffered = FedBuff(buffer_size=1, concurrency=2)
    result = simulate("mlp", data, strategy, 10, profiles=profiles, executor=executor, behaviours=[buffered], **QUIET)
    assert [r.updates for r in result.history] == [1] * 10
    stale = next(i for i, (_, results) in enumerate(strategy.aggregations) if results[0].client_id == 1)
    assert stale > 0
    x_sent, y = next((x, r) for x, _, results in executor.calls for r in results if r.client_id == 1)
    x_now, [rebased] = strategy.aggregations[stale]
    for name in x_now:
        expected = x_now[name] + (1 + stale) ** -0.5 * (y.params[name] - x_sent[name])
        torch.testing.assert_close(rebased.params[name], expected)
    assert [r.time for r in result.history] == sorted(r.time for r in result.history)


def test_fedbuff_takes_fresh_updates_whole_and_gives_each_order_its_own_batch_order():
    """One client, one slot, K = 1: every update is trained from the current model
    (tau = 0, s(0) = 1), so x_{t+1} = x_t + (y_t - x_t) = y_t. Each order is configured
    from a stream of its own: the client's batch order changes from order to order."""
    executor = RecordingExecutor()
    result = simulate("mlp", {0: TRAIN.subset(np.arange(40))}, FedAvg(batch_size=10), 3, executor=executor,
                      behaviours=[FedBuff(buffer_size=1, concurrency=1)], **QUIET)
    assert len(executor.calls) == 3
    following = [x for x, _, _ in executor.calls[1:]] + [result.params]
    for (_, _, [y]), x_next in zip(executor.calls, following):
        for name in x_next:
            torch.testing.assert_close(x_next[name], y.params[name])  # x + (y - x): y up to rounding
    orders = {tuple(np.concatenate(list(task.batches()))) for _, [task], _ in executor.calls}
    assert len(orders) == 3


class SentModels:
    """A behaviour that keeps, for each task sent, the model its order carried."""

    def install(self, simulation):
        self.models = {}
        for client in simulation.clients.values():
            def train(message, inner=client.handlers[Kind.TRAIN]):
                self.models[id(message.payload.task)] = message.payload.params
                inner(message)

            client.on(Kind.TRAIN, train)


def test_fedbuff_trains_each_client_from_the_model_its_order_carried():
    """4 updates arrive at once with K = 1: 4 steps at one instant, each sending the
    client that reported a new version; those clients start together, on 4 models."""
    sent, executor = SentModels(), RecordingExecutor()
    data = [TRAIN.subset(np.arange(50 * i, 50 * i + 50)) for i in range(4)]
    simulate("mlp", data, FedAvg(), 8, executor=executor, behaviours=[FedBuff(buffer_size=1, concurrency=4), sent],
             **QUIET)
    assert [len(tasks) for _, tasks, _ in executor.calls] == [4, 1, 1, 1, 1]
    for global_params, tasks, _ in executor.calls:
        assert all(sent.models[id(task)] is global_params for task in tasks)


def test_fedbuff_with_no_client_data_takes_its_steps_at_once_without_updates():
    result = simulate("mlp", [TRAIN.subset([])], FedAvg(), 3, behaviours=[FedBuff(buffer_size=1)], **QUIET)
    assert [r.updates for r in result.history] == [0, 0, 0] and same(result.params, result.initial_params)


def test_fedbuff_with_uniform_weighting_takes_the_papers_step():
    """Nguyen et al. (2022), Algorithm 1: x <- x + eta_g (1/K) sum_i s(tau_i) Delta_i. Both
    clients train from x and arrive before it moves (s(0) = 1); K = 2, eta_g = 0.5. The
    runtime's step used to weigh the buffer by samples (10 and 90) whatever the strategy."""
    data = {0: TRAIN.subset(np.arange(10)), 1: TRAIN.subset(np.arange(10, 100))}
    executor = RecordingExecutor()
    strategy = FedAvgM(momentum=0.0, server_lr=0.5, weighting="uniform", batch_size=10, steps=1)
    buffered = FedBuff(buffer_size=2, concurrency=2)
    result = simulate("mlp", data, strategy, 1, profiles=ClientProfile(speed=1e6), executor=executor,
                      behaviours=[buffered], **QUIET)
    x, _, [y0, y1] = executor.calls[0]
    for name, w in x.items():
        torch.testing.assert_close(result.params[name], w + 0.5 * 0.5 * ((y0.params[name] - w) + (y1.params[name] - w)))


def test_fedbuff_learns_digits():
    profiles = [ClientProfile(speed=20.0 * (1 + i)) for i in range(8)]
    buffered = FedBuff(buffer_size=3, concurrency=4)
    result = simulate("mlp", SUBSETS, FedAvg(lr=0.1), 12, test=TEST, profiles=profiles, behaviours=[buffered], **QUIET)
    assert len(result.history) == 12 and all(r.updates == 3 for r in result.history)
    assert result.history[-1].test_accuracy > 0.7


def test_fedbuff_takes_no_step_past_its_rounds_while_clients_report_metrics():
    """With client test sets the server waits for their metrics after the last round;
    updates that arrive meanwhile are not aggregated."""
    data = [TRAIN.subset(np.arange(50 * i, 50 * i + 50)) for i in range(4)]  # 4 updates arrive at once
    buffered = FedBuff(buffer_size=1, concurrency=4)
    result = simulate("mlp", data, FedAvg(), 3, client_tests={0: TEST}, behaviours=[buffered], **QUIET)
    assert [r.round_index for r in result.history] == [0, 1, 2]
    assert set(result.history[-1].client_accuracy) == {0}


def test_a_run_finishes_once_every_evaluation_it_sent_has_reported():
    """Client 0 holds a test set and takes 5 s to download a model; client 1 answers
    FedBuff's orders in 1 s, so steps close at 1, 2 and 3 s, faster than client 0's
    evaluations come back (at 6, 7 and 8 s). The server finishes at 8 s, not at the first."""
    data = [TRAIN.subset(np.arange(10)), TRAIN.subset(np.arange(10, 20))]
    profiles = [ClientProfile(speed=10.0, download=model_bytes(data) / 5), ClientProfile(speed=10.0)]
    result = simulate("mlp", data, FedAvg(batch_size=10), 3, client_tests={0: TEST}, profiles=profiles,
                      behaviours=[FedBuff(buffer_size=1, concurrency=2)], **QUIET)
    assert [r.time for r in result.history] == [1.0, 2.0, 3.0]
    assert [set(r.client_accuracy) for r in result.history] == [{0}, {0}, {0}]
    assert [c.finished_at for c in result.clients.values()] == [8.0, 8.0]


def test_fedbuff_gives_up_on_clients_that_miss_the_deadline():
    data = {i: TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(3)}
    profiles = {0: ClientProfile(speed=100), 1: ClientProfile(speed=100), 2: ClientProfile(speed=1)}  # 2 needs 20 s
    strategy = RecordingFedAvg(batch_size=10)
    behaviours = [FedBuff(buffer_size=2, concurrency=3), Deadline(5.0, partial_work=False)]
    result = simulate("mlp", data, strategy, 4, profiles=profiles, behaviours=behaviours, **QUIET)
    assert [r.updates for r in result.history] == [2] * 4
    assert {r.client_id for _, results in strategy.aggregations for r in results} == {0, 1}


@pytest.mark.parametrize("speeds, buffer_size, missed", [((1.0, 1.0, 1.0), 1, 3), ((100.0, 1.0, 1.0), 2, 2)])
def test_fedbuff_stops_when_too_few_clients_can_answer_instead_of_sending_orders_forever(speeds, buffer_size, missed):
    """Every step of 16 samples takes 16 s at a speed of 1 sample a second: past a 5 s
    deadline such a client never answers. FedBuff used to time out and resend forever;
    a step holds one update per client, so with buffer_size=2 one fast client is not enough."""
    data = {i: TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(3)}
    profiles = [ClientProfile(speed=speed) for speed in speeds]
    fedbuff = FedBuff(buffer_size=buffer_size, concurrency=2)
    executor = RecordingExecutor()
    with pytest.raises(ValueError, match=rf"^Deadline\(5.0\): {missed} of the 3 clients cannot meet it on the model of "
                                         rf"server step 0 .* fewer than buffer_size={buffer_size} to answer"):
        simulate("mlp", data, FedAvg(batch_size=16), 2, profiles=profiles, executor=executor,
                 behaviours=[fedbuff, Deadline(5.0)], **QUIET)
    assert all(task.client_id == 0 for _, tasks, _ in executor.calls for task in tasks)


def test_fedbuff_with_every_client_dropping_out_is_refused_before_training():
    """No order would ever be answered; the run used to end in an error blaming the deadline."""
    executor = RecordingExecutor()
    behaviours = [FedBuff(buffer_size=2, concurrency=2), Deadline(1000.0), Dropout(1.0)]
    with pytest.raises(ValueError, match=r"^behaviours \(FedBuff with Dropout\(1.0\)\): every order drops out"):
        simulate("mlp", SUBSETS, FedAvg(), 2, executor=executor, behaviours=behaviours, **QUIET)
    assert executor.calls == []


def test_fedbuff_stops_when_a_behaviour_drops_every_order():
    """The Deadline closes every order the silent clients leave unanswered, and FedBuff
    sent each again, forever. A client that leaves 1000 orders unanswered since it last
    answered counts as one that will not answer: both clients get there at the 1000th
    deadline of 5 s, and no step can come."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(2)]
    watch, executor = Watch(), RecordingExecutor()
    behaviours = [FedBuff(buffer_size=1, concurrency=2), Deadline(5.0), SilentClients(), watch]
    with pytest.raises(ValueError, match=r"^behaviours \(2 of the 2 clients left 1000 orders unanswered by the "
                                         r"deadline since they last answered, leaving fewer than buffer_size=1"):
        simulate("mlp", data, FedAvg(), 2, executor=executor, behaviours=behaviours, **QUIET)
    assert watch.simulation.now == 5000.0 and executor.calls == []


class AnsweringEvery:
    """A behaviour of the user's own: each client answers only every n-th order it is sent."""

    def __init__(self, n):
        self.n = n

    def install(self, simulation):
        for client in simulation.clients.values():
            def train(message, inner=client.handlers[Kind.TRAIN], sent=itertools.count(1)):
                if next(sent) % self.n == 0:
                    inner(message)

            client.on(Kind.TRAIN, train)


def test_fedbuff_counts_the_orders_a_client_leaves_unanswered_since_it_last_answered():
    """Orders go out every 5 s (the deadline); the client answers its 1000th and 2000th,
    0.2 s after each is sent, and leaves 999 unanswered before each: never 1000 since it
    last answered, so the run goes on."""
    behaviours = [FedBuff(buffer_size=1, concurrency=1), Deadline(5.0), AnsweringEvery(1000)]
    result = simulate("mlp", [TRAIN.subset(np.arange(20))], FedAvg(batch_size=10), 2,
                      profiles=ClientProfile(speed=100.0), behaviours=behaviours, **QUIET)
    assert [r.time for r in result.history] == pytest.approx([4995.2, 9990.4])


def test_fedbuff_goes_on_when_clients_drop_out_at_random():
    """Dropout was drawn once per (server step, client): a client that dropped out of an
    order dropped out of every re-sent order of the step, so whenever every client drew
    "drop" the run was refused with an error blaming the generous deadline (5 of these 10
    seeds). Each order now draws its own dropout; the run is still a function of the seed."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(4)]

    def run(seed):
        behaviours = [FedBuff(buffer_size=2, concurrency=4), Deadline(1000.0), Dropout(0.5)]
        return simulate("mlp", data, FedAvg(batch_size=10, steps=1), 10, seed=seed, profiles=ClientProfile(speed=100.0),
                        behaviours=behaviours, **QUIET)

    results = [run(seed) for seed in range(10)]
    for result in results:
        assert [r.updates for r in result.history] == [2] * 10
    assert max(r.history[-1].time for r in results) > 1000.0  # orders dropped, timed out and sent again
    again = run(9)
    assert same(again.params, results[9].params)
    assert [r.time for r in again.history] == [r.time for r in results[9].history]


def test_the_synchronous_runtime_stops_when_no_client_can_meet_the_deadline():
    """It returned the untrained model after rounds of no update, without a word, where
    FedBuff refused the same run. With client sampling the misses add up over the rounds."""
    data = {i: TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(3)}  # 16-sample steps take 16 s
    for strategy in (FedAvg(batch_size=16), FedAvg(batch_size=16, clients_per_round=1)):
        executor = RecordingExecutor()
        expected = (r"^Deadline\(5.0\): every one of the 3 clients has missed it with the local work that round \d+ "
                    "asks of it again")
        with pytest.raises(ValueError, match=expected):
            simulate("mlp", data, strategy, 30, executor=executor, behaviours=[Deadline(5.0)], **QUIET)
        assert executor.calls == []


def test_a_client_whose_download_alone_passes_the_deadline_has_missed_it():
    """The order arrived after its TIMEOUT had been counted as a chance miss: the synchronous
    run returned the untrained model after five rounds of no update, and FedBuff sent 2000
    orders before blaming "a behaviour"."""
    data = {i: TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(2)}
    slow_link = ClientProfile(speed=1000.0, download=model_bytes(data) / 2)  # the model takes 2 s to arrive
    for behaviours, expected in (
            ([Deadline(1.0)], r"^Deadline\(1.0\): every one of the 2 clients has missed it with the local work that "
                              r"round 1 asks"),
            ([FedBuff(buffer_size=1, concurrency=2), Deadline(1.0)],
             r"^Deadline\(1.0\): 2 of the 2 clients cannot meet it on the model of server step 0")):
        executor = RecordingExecutor()
        with pytest.raises(ValueError, match=expected):
            simulate("mlp", data, FedAvg(batch_size=10), 5, profiles=slow_link, executor=executor,
                     behaviours=behaviours, **QUIET)
        assert executor.calls == []


class ShrinkingSteps(FedAvg):
    """FedAvg asking 10 local steps of the clients it configures first (round 0, or
    FedBuff's first orders) and 1 step after: a schedule of local work."""

    def reset(self):
        super().reset()
        self.configured = 0

    def configure_round(self, round_index, available, seed):
        tasks = super().configure_round(round_index, available, seed)
        self.configured += 1
        return [replace(task, steps=10 if self.configured == 1 else 1) for task in tasks]


class OneClientARound(FedAvg):
    """FedAvg training one client a round: round t's task goes to client plan[t][0] and
    asks plan[t][1] local steps."""

    def __init__(self, plan, **options):
        super().__init__(**options)
        self.plan = plan

    def configure_round(self, round_index, available, seed):
        client, steps = self.plan[round_index]
        [task] = super().configure_round(round_index, {client: available[client]}, seed)
        return [replace(task, steps=steps)]


def test_a_client_that_missed_the_deadline_is_counted_again_only_on_the_same_work():
    """Every client misses round 0 (10 steps of 10 samples at 1 sample/s against 15 s)
    but meets the later rounds' single step: the runtime goes on instead of calling the
    deadline unmeetable after round 0."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(3)]
    result = simulate("mlp", data, ShrinkingSteps(batch_size=10), 3,
                      behaviours=[Deadline(15.0, partial_work=False)], **QUIET)
    assert [r.updates for r in result.history] == [0, 3, 3]


def test_a_slow_client_sampled_again_does_not_stop_a_run_that_another_client_trains():
    """One client a round: client 1 needs 10 s for its step and misses a 5 s deadline
    every time it is sampled, but client 0 meets it."""
    data = {i: TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(2)}
    profiles = {0: ClientProfile(speed=1000.0), 1: ClientProfile(speed=1.0)}
    result = simulate("mlp", data, FedAvg(batch_size=10, clients_per_round=1), 12, profiles=profiles,
                      behaviours=[Deadline(5.0)], **QUIET)
    assert sorted({r.updates for r in result.history}) == [0, 1]


def test_a_miss_before_the_last_update_does_not_count_against_the_run():
    """10 steps of 10 samples take 100 s at 1 sample/s, 1 step 10 s, against 15 s. Client 0
    misses round 0, client 1 trains in round 1 and misses round 2; round 3 asks client 0
    its 10 steps again (a miss), yet client 1 meets round 4's single step. Counting client
    0's miss from before round 1's update, the runtime would stop the run at round 3."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(2)]
    plan = [(0, 10), (1, 1), (1, 10), (0, 10), (1, 1)]
    result = simulate("mlp", data, OneClientARound(plan, batch_size=10), 5,
                      behaviours=[Deadline(15.0, partial_work=False)], **QUIET)
    assert [r.updates for r in result.history] == [0, 1, 0, 0, 1]


def test_fedbuff_counts_a_client_sent_lighter_work_as_able_to_answer_again():
    """The first orders ask 10 steps (100 s at 1 sample/s), later ones 1 step (10 s),
    against 15 s: each client that misses is sent a single step and meets it. Still counted
    among the clients that cannot meet the deadline, it would have FedBuff stop the run
    when the third first order times out."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(3)]
    result = simulate("mlp", data, ShrinkingSteps(batch_size=10), 2,
                      behaviours=[FedBuff(buffer_size=1, concurrency=3), Deadline(15.0, partial_work=False)], **QUIET)
    assert [(r.updates, r.time) for r in result.history] == [(1, 25.0), (1, 25.0)]


def test_fedbuff_picks_its_clients_and_refuses_strategies_that_sample_fewer():
    """FedBuff sent at most the tasks that configure_round gave: with clients_per_round=1
    one client trained at a time, whatever the concurrency."""
    profiles = [ClientProfile(speed=10.0 * (1 + i)) for i in range(8)]
    fedbuff = FedBuff(buffer_size=2, concurrency=6)
    for strategy in (FedAvg(batch_size=10), FedAvg(batch_size=10, clients_per_round=8)):
        executor = RecordingExecutor()
        simulate("mlp", SUBSETS, strategy, 2, profiles=profiles, executor=executor, behaviours=[fedbuff], **QUIET)
        assert len(executor.calls[0][1]) == 6  # every order is sent at time 0
    for strategy, given in ((FedAvg(clients_per_round=1), 1), (FedAvg(fraction=0.25), 2)):
        executor = RecordingExecutor()
        expected = rf"^strategy \(FedAvg gave tasks to {given} of the 8 idle clients\): allowed"
        with pytest.raises(ValueError, match=expected):
            simulate("mlp", SUBSETS, strategy, 2, profiles=profiles, executor=executor, behaviours=[fedbuff], **QUIET)
        assert executor.calls == []


def test_fedbuff_trains_no_client_after_its_last_step():
    """Orders sent before the last step whose TRAIN arrived after it were still trained
    (5 of 13 trainings here): work for nothing, and a divergence there raised
    TrainingDiverged after the run had finished, losing its results."""
    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(8)]
    nbytes = model_bytes(data)
    profiles = [ClientProfile(speed=100.0, download=nbytes / (0.1 * (1 + i))) for i in range(8)]  # 0.1 s .. 0.8 s
    watch = Watch()

    class Checking(RecordingExecutor):
        late = 0

        def run(self, model, strategy, global_params, tasks):
            server = watch.simulation.server
            self.late += len(tasks) if server.round_index >= server.rounds else 0
            return super().run(model, strategy, global_params, tasks)

    executor = Checking()
    result = simulate("mlp", data, FedAvg(batch_size=10), 3, profiles=profiles, executor=executor,
                      behaviours=[FedBuff(buffer_size=2, concurrency=8), watch], **QUIET)
    assert len(result.history) == 3 and executor.late == 0
    assert sum(len(tasks) for _, tasks, _ in executor.calls) >= 6  # the trainings of the 3 steps took place


class CheckedScaffold(Scaffold):
    """SCAFFOLD checking each client's new control variate against option II with the c
    and c_i sent with the task of the result: c_i+ = c_i - c + (x - y_i) / (K lr), where
    c - c_i is the task's correction (none: zero) and x - y_i the staleness-weighted update."""

    def __init__(self, sent, **options):
        super().__init__(**options)
        self.sent, self.stale = sent, 0

    def aggregate(self, global_params, results):
        assert len({r.client_id for r in results}) == len(results)  # one update per client in a step
        expected = {}
        for r in results:
            task = self.sent[(r.client_id, r.train_loss)]
            if task.round_index < len(self.seen) and task.state:
                self.stale += 1  # an update stale by the time it is aggregated, trained with a correction
            correction = task.state.get("correction", {})
            expected[r.client_id] = {
                name: (global_params[name] - r.params[name]) / (r.steps * self.lr) - correction.get(name, 0.0)
                for name in global_params
            }
        self.seen.append(1)
        new = super().aggregate(global_params, results)
        for client, controls in expected.items():
            for name, value in controls.items():
                torch.testing.assert_close(self.client_controls[client][name], value)
        return new

    def reset(self):
        super().reset()
        self.seen = []


def test_scaffold_under_fedbuff_uses_the_control_variate_sent_with_each_task():
    """FedBuff configured every idle client at each refill, those whose update waited in
    the buffer among them, so SCAFFOLD's c_i+ of most buffered updates used a later c
    than the one the client had trained with (14 of 21 here)."""
    sent = {}

    class Stamping(SerialExecutor):
        def run(self, model, strategy, global_params, tasks):
            results = super().run(model, strategy, global_params, tasks)
            sent.update({(r.client_id, r.train_loss): task for task, r in zip(tasks, results)})
            return results

    data = [TRAIN.subset(np.arange(20 * i, 20 * i + 20)) for i in range(4)]
    profiles = [ClientProfile(speed=s) for s in (100.0, 90.0, 80.0, 25.0)]  # client 3's updates are stale
    strategy = CheckedScaffold(sent, batch_size=10, lr=0.1)
    simulate("mlp", data, strategy, 12, profiles=profiles, executor=Stamping(),
             behaviours=[FedBuff(buffer_size=3, concurrency=4)], **QUIET)
    assert len(strategy.seen) == 12 and strategy.stale > 0


def test_profiles_may_come_from_any_iterable_and_huge_bandwidths_are_instant():
    """simulate took a numpy object array or a generator of profiles before it refused
    what is not a sequence; an integer bandwidth beyond float64 raised OverflowError."""
    profiles = [ClientProfile(speed=10.0 * (1 + i)) for i in range(len(SUBSETS))]
    times = [simulate("mlp", SUBSETS, FedAvg(steps=1), 1, profiles=given, **QUIET).history[-1].time
             for given in (profiles, np.array(profiles, dtype=object), (p for p in profiles))]
    assert times[0] == times[1] == times[2] > 0
    assert ClientProfile(upload=10**400).upload == ClientProfile(download=10**400).download == float("inf")


def test_client_profiles_take_numpy_numbers_as_python_floats():
    """upload=np.float32(5.0) and np.int64(5) were refused while speed=np.float32(2.5)
    was taken, and kept: the clock then ran in float32."""
    profile = ClientProfile(speed=np.float32(2.5), upload=np.float32(5.0), download=np.int64(4))
    assert [(type(v), v) for v in (profile.speed, profile.upload, profile.download)] == [
        (float, 2.5), (float, 5.0), (float, 4.0)]
    assert profile.upload_seconds(3) == 3 / 5.0 and profile.compute_seconds(1) == 1 / 2.5


def test_the_vectorised_executor_plugs_in_with_partial_work_and_client_state():
    from fl.executors.vectorised import VectorisedExecutor

    profiles = [ClientProfile(speed=40.0 * (1 + i % 3)) for i in range(8)]  # the slower ones do partial work
    options = dict(seed=2, test=TEST, profiles=profiles, behaviours=[Deadline(2.5)], **QUIET)
    serial = simulate("mlp", SUBSETS, Scaffold(lr=0.1), 3, **options)
    vectorised = simulate("mlp", SUBSETS, Scaffold(lr=0.1), 3, executor=VectorisedExecutor(), **options)
    for name in serial.params:
        torch.testing.assert_close(serial.params[name], vectorised.params[name], rtol=1e-4, atol=1e-5)
    assert [r.updates for r in serial.history] == [r.updates for r in vectorised.history] == [8, 8, 8]


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda: ClientProfile(speed=0.0), "speed=0.0"),
        (lambda: ClientProfile(upload=-1.0), "upload=-1.0"),
        (lambda: Deadline(0), "seconds=0"),
        (lambda: Dropout(1.5), "probability=1.5"),
        (lambda: ClientProfile(speed=10**400), "speed=1000"),
        (lambda: FedBuff(buffer_size=0), "buffer_size=0"),
        (lambda: FedBuff(staleness_exponent=float("nan")), "staleness_exponent=nan"),
        (lambda: Deadline(3.0, partial_work="False"), "partial_work='False'"),
        (lambda: simulate("mlp", [TRAIN, TEST], FedAvg(), 1, **QUIET), r"train_subsets\[0\] \(of type ArrayDataset\)"),
        (lambda: simulate("mlp", {-1: SUBSETS[0]}, FedAvg(), 1, **QUIET), "train_subsets key -1"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, executor="vectorised", **QUIET), "executor='vectorised'"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, behaviours=FedBuff(), **QUIET), "behaviours=<"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, behaviours=[FedBuff], **QUIET), "behaviours item <class"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, behaviours=[FedBuff(), FedBuff()], **QUIET),
         r"behaviours \(FedBuff more than once\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), -1, **QUIET), "rounds=-1"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, evaluate_every=0, **QUIET), "evaluate_every=0"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, client_tests={0: TEST.subset([])}, **QUIET),
         r"client_tests\[0\] \('digits', 0 samples\)"),
        # an AttributeError of the dataset, or of dict() on its argument; the module's options were ignored
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, test=TEST.x, **QUIET), r"^test \(of type Tensor\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, test=TEST.subset([]), **QUIET), r"^test \('digits', 0 samples"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, client_tests=[TEST], **QUIET),
         r"^client_tests \(of type list\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, model_options=5, **QUIET), r"^model_options=5"),
        # the clock stopped at inf, and the run ended in a RuntimeError blaming a behaviour that drops orders
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, profiles=ClientProfile(download=1e-310), **QUIET),
         r"^profiles\[0\]=ClientProfile\(speed=1.0, upload=inf, download=1e-310\): its TRAIN message of \d+ bytes "
         r"would arrive at inf simulated seconds"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, profiles=ClientProfile(speed=1e-320), **QUIET),
         r"^profiles\[0\]=ClientProfile\(speed=1e-320, .*\): its UPDATE message"),
        (lambda: simulate(build_model("mlp", (1, 8, 8), 10, np.random.SeedSequence(0)), SUBSETS, FedAvg(), 1,
                          model_options={"hidden": (8,)}, **QUIET),
         r"^model_options=\{'hidden': \(8,\)\} with a model module"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, profiles=[ClientProfile()], **QUIET), "profiles"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, profiles=5, **QUIET), "profiles=5"),
        (lambda: simulate("mlp", [*SUBSETS, TRAIN.subset([])], FedAvg(), 1, client_tests={8: TEST}, **QUIET),
         r"client_tests \(keys \[8\], clients without training data\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, behaviours=[FedBuff(buffer_size=9)], **QUIET),
         r"buffer_size=9 \(more than the 8 clients with data\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, client_tests={99: TEST}, **QUIET), "client_tests"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, seed=-1, **QUIET), "seed=-1"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, seed=1.5, **QUIET), "seed=1.5"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, test=OTHER_SHAPE, **QUIET), r"test \(features of shape \(64,\)"),
        (lambda: simulate("mlp", [*SUBSETS, OTHER_SHAPE.subset(np.arange(5))], FedAvg(), 1, **QUIET),
         r"train_subsets\[8\] \(features of shape \(64,\), torch.float32, 10 classes\)"),
        (lambda: simulate("mlp", SUBSETS, FedAvg(), 1, client_tests={0: FEWER_CLASSES}, **QUIET),
         r"client_tests\[0\] \(features of shape \(1, 8, 8\), torch.float32, 5 classes\)"),
    ],
)
def test_bad_settings_are_refused(call, key):
    with pytest.raises(ValueError, match=f"{key}.*allowed"):
        call()


CODES = ArrayDataset("codes", torch.randint(0, 96, (20, 80), generator=torch.Generator().manual_seed(0)),
                     torch.arange(20) % 96, 96)  # Shakespeare-like windows of character codes


class WrongAggregate(FedAvg):
    """FedAvg whose aggregate returns ``change(w)`` of the average w."""

    def __init__(self, change, **options):
        super().__init__(**options)
        self.change = change

    def aggregate(self, global_params, results):
        return self.change(super().aggregate(global_params, results))


class GhostClient(FedAvg):
    """FedAvg that also asks client 99, who holds no data, to train."""

    def configure_round(self, round_index, available, seed):
        tasks = super().configure_round(round_index, available, seed)
        return tasks + [replace(tasks[0], client_id=99)]


@pytest.mark.parametrize("call, message", [
    # torch's RuntimeError from evaluate, an AttributeError, and a missing key only in the last round
    (lambda: simulate("mlp", SUBSETS, WrongAggregate(lambda w: {k: v[:1] for k, v in w.items()}), 1, **QUIET),
     r"^WrongAggregate.aggregate\(...\)\['[\w.]+'\] \(shape \(1, "),
    (lambda: simulate("mlp", SUBSETS, WrongAggregate(lambda w: None), 1, **QUIET),
     r"^WrongAggregate.aggregate\(...\) \(of type NoneType\): allowed is a mapping"),
    (lambda: simulate("mlp", SUBSETS, WrongAggregate(lambda w: dict(list(w.items())[1:])), 1, **QUIET),
     r"^WrongAggregate.aggregate\(...\) \(missing keys \["),
    (lambda: simulate("mlp", SUBSETS, GhostClient(), 1, **QUIET),  # a KeyError: 99
     r"^GhostClient.configure_round gave a task to client 99: allowed is a task for a client with data, one of \[0, "),
    (lambda: simulate(torch.nn.Linear, SUBSETS, FedAvg(), 1, **QUIET),  # torch.device has no attribute '_apply'
     r"^model=<class 'torch.nn.modules.linear.Linear'>: allowed is a model name of fl.models.MODEL_NAMES or a "),
    # a model built by name was not read against the data: an mlp on character codes failed in its first step
    (lambda: simulate("mlp", [CODES.subset(np.arange(10)), CODES.subset(np.arange(10, 20))], FedAvg(), 1, **QUIET),
     r"^model \(MLP\) cannot read the data's inputs of shape \(80,\), torch.int64 \(mat1 and mat2 must have the "),
])
def test_a_strategy_or_model_of_a_users_making_is_named_where_it_goes_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_subset_of_a_test_set_is_evaluated_as_the_set_it_holds():
    """A Subset was taken for client_tests but raised AttributeError as the server's test set."""
    part = TEST.subset(np.arange(50))
    whole = ArrayDataset(TEST.name, *part.tensors(), TEST.num_classes)
    results = [simulate("mlp", SUBSETS, FedAvg(), 1, test=test, **QUIET).history[-1] for test in (part, whole)]
    assert results[0].test_accuracy == results[1].test_accuracy and results[0].test_loss == results[1].test_loss


def test_a_built_models_initial_weights_come_from_the_init_stream_of_the_seed():
    """The model was initialised from the stream of round 0 (ROUND_STREAM, 0), which also
    draws round 0's batch orders, instead of its own INIT_STREAM child of the seed."""
    result = simulate("mlp", SUBSETS, FedAvg(), 0, seed=7, **QUIET)
    assert same(result.initial_params, get_params(build_model("mlp", (1, 8, 8), 10, child_seed(7, INIT_STREAM))))


def test_fedbuff_configures_from_its_dispatch_stream_and_picks_from_its_pick_stream():
    """FedBuff configured the idle clients' tasks (their batch orders) from the stream that
    picks among them (PICK_STREAM) instead of its own DISPATCH_STREAM. The first refill gives
    the 3 idle clients the tasks of configure_round(0, idle, child_seed(seed, DISPATCH_STREAM, 0))
    and sends the 2 that default_rng(child_seed(seed, PICK_STREAM, 0)) picks, in task order."""
    executor, data = RecordingExecutor(), dict(enumerate(SUBSETS[:3]))
    simulate("mlp", data, FedAvg(), 1, seed=5, executor=executor,
             behaviours=[FedBuff(buffer_size=1, concurrency=2)], **QUIET)
    tasks = FedAvg().configure_round(0, data, child_seed(5, DISPATCH_STREAM, 0))
    picked = sorted(np.random.default_rng(child_seed(5, PICK_STREAM, 0)).choice(3, 2, replace=False))
    sent = executor.calls[0][1]
    assert [t.client_id for t in sent] == [tasks[i].client_id for i in picked]
    assert [(t.seed.entropy, t.seed.spawn_key) for t in sent] == [
        (tasks[i].seed.entropy, tasks[i].seed.spawn_key) for i in picked]
