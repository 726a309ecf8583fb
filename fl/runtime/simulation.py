"""The simulation kernel and ``simulate``, the one round loop (``fl.server.run_federated`` calls it).

A :class:`Simulation` owns the clock, the event queue, the network and the compute:

- ``send`` puts a message on the queue, delivered after ``after`` seconds (e.g. the
  sender's computation) plus its transfer, nbytes / bandwidth of the client's link
  (download for server -> client, upload for client -> server; timers take none);
- ``train`` asks for a client's local training; all requests made at one simulated
  instant are run together, one executor call per starting model, before the clock
  moves on (so a vectorised or Ray executor sees every client that starts at once);
  requests still waiting when the server has closed its last round are dropped, as no
  result could count any more (FedBuff's orders sent before its last step);
- ``run`` delivers messages in order (see :mod:`fl.runtime.events`) to the receiving
  node's handler, until none is left, and counts the bytes delivered of each kind.

Randomness: one ``seed``, model init and round streams as in :mod:`fl.runtime.launch`;
behaviours draw from their own children of it (the ``*_STREAM`` keys).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Callable, Protocol, Sequence

import numpy as np
from torch import nn

from fl.algorithms.strategy import Strategy
from fl.checks import check_bool
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult, ClientTask, Executor, check_finite_losses
from fl.executors.serial import SerialExecutor
from fl.models import Params, get_params
from fl.runtime.client import Client
from fl.runtime.events import EventQueue, Node
from fl.runtime.launch import check_same_data, check_schedule, client_subsets, initial_model
from fl.runtime.messages import SERVER, Kind, Message
from fl.runtime.profiles import ClientProfile
from fl.runtime.server import RoundRecord, Server


class Simulation:
    """Clock, queue, network and compute of one run; ``server`` and ``clients`` are its nodes."""

    def __init__(self, model: nn.Module, strategy: Strategy, executor: Executor, seed: int | np.random.SeedSequence):
        self.model, self.strategy, self.executor, self.seed = model, strategy, executor, seed
        self.now = 0.0
        self.delivered_bytes: Counter[Kind] = Counter()
        self.queue = EventQueue()
        self.server: Server | None = None
        self.clients: dict[int, Client] = {}
        self._requests: list[tuple[ClientTask, Params, Callable[[ClientResult], None]]] = []
        self.checks: list[Callable[[], None]] = []  # run once every behaviour is installed; raise ValueError

    def send(self, kind: Kind, sender: int, receiver: int, payload=None, nbytes: int = 0, after: float = 0.0) -> None:
        """Put a message on the queue, delivered ``after`` seconds from now plus its
        transfer; ValueError naming the client's profile where that time overflows (a
        bandwidth or speed so small that the clock would stop at inf)."""
        if sender == receiver:
            transfer = 0.0
        elif sender == SERVER:
            transfer = self.clients[receiver].profile.download_seconds(nbytes)
        else:
            transfer = self.clients[sender].profile.upload_seconds(nbytes)
        timestamp = self.now + after + transfer
        if not math.isfinite(timestamp):
            client = receiver if sender == SERVER else sender
            raise ValueError(f"profiles[{client}]={self.clients[client].profile!r}: its {kind.name} message of "
                             f"{nbytes} bytes would arrive at {timestamp} simulated seconds; allowed is a profile "
                             "whose computations and transfers take a finite time")
        self.queue.push(Message(kind, sender, receiver, timestamp, payload, nbytes))

    def train(self, task: ClientTask, params: Params, done: Callable[[ClientResult], None]) -> None:
        """Train ``task`` from ``params`` now; ``done(result)`` is called with its result
        (unless the server has closed its last round before the training runs)."""
        self._requests.append((task, params, done))

    def run(self) -> None:
        while True:
            if self._requests and self.queue.next_time() > self.now:
                self._compute()
            elif len(self.queue):
                message = self.queue.pop()
                self.now = message.timestamp
                self.delivered_bytes[message.kind] += message.nbytes
                self._node(message.receiver).handle(message)
            else:
                return

    def _node(self, node_id: int) -> Node:
        return self.server if node_id == SERVER else self.clients[node_id]

    def _compute(self) -> None:
        requests, self._requests = self._requests, []
        if self.server.round_index >= self.server.rounds:
            return
        by_model: dict[int, list] = {}
        for request in requests:
            by_model.setdefault(id(request[1]), []).append(request)
        for group in by_model.values():
            tasks = [task for task, _, _ in group]
            results = self.executor.run(self.model, self.strategy, group[0][1], tasks)
            check_finite_losses(tasks, results, getattr(self.strategy, "server_lr", None))
            for (_, _, done), result in zip(group, results):
                done(result)


class Behaviour(Protocol):
    """A change of the nodes' conduct, made by registering handlers on
    ``simulation.server`` and ``simulation.clients`` before the run starts. A behaviour
    that needs another may append a check to ``simulation.checks``: each is called once
    every behaviour is installed, before the run, and raises ValueError to refuse it."""

    def install(self, simulation: Simulation) -> None: ...


@dataclass(frozen=True)
class SimulationResult:
    """params: the final global model; initial_params: the one training started from;
    model: the architecture holding ``params`` as its own weights whatever the executor
    (the one built from a name, or a copy of the module given to ``simulate``, which
    keeps its own weights); run it, or run it on other params with
    ``torch.func.functional_call`` or ``fl.evaluation``; history:
    one :class:`~fl.runtime.server.RoundRecord` per round (per server step with FedBuff);
    clients: the client nodes, by id."""

    model: nn.Module
    params: Params
    initial_params: Params
    history: list[RoundRecord]
    clients: dict[int, Client]


def simulate(
    model: str | nn.Module,
    train_subsets: Sequence[Subset] | Mapping[int, Subset],
    strategy: Strategy,
    rounds: int,
    *,
    behaviours: Sequence[Behaviour] = (),
    profiles: ClientProfile | Sequence[ClientProfile] | Mapping[int, ClientProfile] | None = None,
    executor: Executor | None = None,
    seed: int | np.random.SeedSequence = 0,
    test: ArrayDataset | None = None,
    client_tests: Mapping[int, ArrayDataset | Subset] | None = None,
    progress: bool = True,
    device: str = "cpu",
    model_options: dict | None = None,
    init_params: Params | None = None,
    evaluate_every: int = 1,
) -> SimulationResult:
    """Train ``rounds`` rounds of ``strategy`` as messages on a simulated clock.

    model: a name of ``fl.models.MODEL_NAMES`` (built with ``model_options``, input shape
        and classes taken from the data, initialised from ``seed``) or a module.
    train_subsets: client data, a sequence (client ids 0..N-1) or a mapping id -> Subset;
        clients with no samples never train.
    init_params: the starting global model (default: the model's own initial weights).
    executor: default :class:`~fl.executors.serial.SerialExecutor`.
    test: evaluated with ``strategy.evaluate`` every ``evaluate_every`` rounds and after the last
        (an ArrayDataset, or a Subset of one).
    behaviours: :class:`Behaviour` objects, installed in order before the run
        (e.g. :class:`~fl.runtime.behaviours.Deadline`, :class:`~fl.runtime.behaviours.Dropout`,
        :class:`~fl.runtime.fedbuff.FedBuff`).
    profiles: each client's speed and bandwidths: one for all, a sequence by client id,
        or a mapping id -> profile covering every client with data (default: speed 1
        sample per second, instant transfers).
    client_tests: client id -> that client's own test set (not empty), on which it evaluates
        the global model whenever the server evaluates (``RoundRecord.client_accuracy``);
        for clients with data (the others take no part in the run).
    """
    check_schedule(rounds, evaluate_every)
    check_bool("progress", progress)
    _check_parts(strategy, executor, behaviours)
    subsets = client_subsets(train_subsets)
    tests = _client_tests(client_tests, subsets)
    test = None if test is None else _evaluation_set("test", test, "None")
    check_same_data(subsets, test, tests)
    given = isinstance(model, nn.Module)
    model, params = initial_model(model, subsets, test, seed, device, model_options, init_params)
    own = get_params(model) if given and init_params is not None else params  # the caller's weights, kept
    strategy.reset()
    simulation = Simulation(model, strategy, executor or SerialExecutor(), seed)
    simulation.server = server = Server(simulation, params, int(rounds), test, int(evaluate_every), progress)
    try:  # the progress bar closes however the simulation ends (a behaviour's check may refuse it)
        members = [client for client, data in subsets.items() if len(data) > 0]
        rates = _profiles(profiles, members)
        simulation.clients = {c: Client(c, subsets[c], rates[c], simulation, tests.get(c)) for c in members}
        for behaviour in behaviours:
            behaviour.install(simulation)
        for check in simulation.checks:
            check()
        for client in simulation.clients.values():
            client.join()
        simulation.send(Kind.START, SERVER, SERVER)
        simulation.run()
    finally:
        server.close_progress()
        if given:  # executors may leave a client's weights in it: the result gets a copy, the caller its weights
            template, model = model, copy.deepcopy(model)
            template.load_state_dict(own)
    if not server.done:
        raise RuntimeError(
            f"the simulation ran out of events in round {server.round_index}: the server waits for clients "
            "that will never answer (a behaviour drops orders, and no Deadline closes them)"
        )
    model.load_state_dict(server.params)
    return SimulationResult(model, server.params, params, server.records(), simulation.clients)


def _check_parts(strategy, executor, behaviours) -> None:
    """ValueError unless ``strategy`` is a Strategy, ``executor`` None or an Executor and
    ``behaviours`` a sequence of installed-able objects (instances, not classes), each
    kind at most once (a second FedBuff or Deadline would replace the first's handlers)."""
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy={strategy!r}: allowed is a fl.algorithms Strategy, e.g. FedAvg()")
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor={executor!r}: allowed is None or an Executor, e.g. VectorisedExecutor()")
    if not isinstance(behaviours, Sequence) or isinstance(behaviours, str):
        raise ValueError(f"behaviours={behaviours!r}: allowed is a list of behaviours, e.g. [Deadline(60.0)]")
    for behaviour in behaviours:
        if isinstance(behaviour, type) or not callable(getattr(behaviour, "install", None)):
            raise ValueError(f"behaviours item {behaviour!r}: allowed is a behaviour instance, e.g. FedBuff()")
    twice = [kind for kind, count in Counter(type(b).__name__ for b in behaviours).items() if count > 1]
    if twice:
        raise ValueError(f"behaviours ({twice[0]} more than once): allowed is each kind of behaviour once")


def _profiles(profiles, members: list[int]) -> dict[int, ClientProfile]:
    if profiles is None or isinstance(profiles, ClientProfile):
        return {client: profiles or ClientProfile() for client in members}
    if not isinstance(profiles, Iterable) or isinstance(profiles, (str, bytes)):
        raise ValueError(
            f"profiles={profiles!r}: allowed is None, a ClientProfile, a sequence (any iterable) of them by client "
            "id or a mapping id -> ClientProfile"
        )
    given = dict(profiles) if isinstance(profiles, Mapping) else dict(enumerate(profiles))
    missing = [client for client in members if not isinstance(given.get(client), ClientProfile)]
    if missing:
        raise ValueError(
            f"profiles (no ClientProfile for clients {missing[:5]}): allowed is one for every client with data"
        )
    return {client: given[client] for client in members}


def _client_tests(client_tests, subsets: Mapping[int, Subset]) -> dict[int, ArrayDataset]:
    if client_tests is not None and not isinstance(client_tests, Mapping):
        raise ValueError(f"client_tests (of type {type(client_tests).__name__}): allowed is None or a mapping "
                         "client id -> that client's test set")
    tests = dict(client_tests or {})
    unknown = sorted(set(tests) - set(subsets))
    if unknown:
        raise ValueError(f"client_tests (keys {unknown[:5]}): allowed is keys that are client ids")
    without_data = sorted(client for client in tests if len(subsets[client]) == 0)
    if without_data:
        raise ValueError(
            f"client_tests (keys {without_data[:5]}, clients without training data): allowed is keys of clients with "
            "data, as only they take part in the run"
        )
    return {client: _evaluation_set(f"client_tests[{client}]", t, "no entry for the client")
            for client, t in tests.items()}


def _evaluation_set(key: str, data, without: str) -> ArrayDataset:
    """``data``, a set to evaluate on: an ArrayDataset, or a Subset gathered into one;
    ValueError naming ``key`` for anything else or a set without samples (``without``:
    how to leave the set out)."""
    if not isinstance(data, (ArrayDataset, Subset)):
        raise ValueError(f"{key} (of type {type(data).__name__}): allowed is an ArrayDataset or a Subset")
    whole = data.dataset if isinstance(data, Subset) else data
    if len(data) == 0:
        raise ValueError(f"{key} ({whole.name!r}, 0 samples): allowed is a set with samples to evaluate on, "
                         f"or {without}")
    return ArrayDataset(whole.name, *data.tensors(), whole.num_classes) if isinstance(data, Subset) else data
