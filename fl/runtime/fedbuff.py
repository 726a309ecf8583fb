"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022, "Federated learning
with buffered asynchronous aggregation", AISTATS).

The server keeps ``concurrency`` clients training at all times. A client trains from
the model version it was sent, x^{(tau_i)}; when its result y_i arrives while the server
is at version t, its update enters the buffer scaled by its staleness t - tau_i,

    Delta_i = s(t - tau_i) (y_i - x^{(tau_i)}),   s(tau) = (1 + tau)^(-a)   (a = 1/2 in the paper),

and a new client is sent the current model in its place. Once ``buffer_size`` (K)
updates are buffered, the server takes one step with the strategy's own rule, given the
buffered updates as models rebased on the current one,

    x^{(t+1)} = strategy.aggregate(x^{(t)}, [x^{(t)} + Delta_i for the K buffered i]),

so FedAvg's rule gives x^{(t)} + sum_i (n_i / n) Delta_i, and a server optimiser (FedAvgM,
FedAdam, ...) sees the pseudo-gradient it expects. Each server step is one round of the
history. The paper's Algorithm 1 averages the buffer uniformly and takes a server step,
x^{(t)} + eta_g (1/K) sum_i Delta_i: that is ``FedAvgM(momentum=0, server_lr=eta_g,
weighting="uniform")`` (``FedAvg(weighting="uniform")`` for eta_g = 1); with FedAvg's
default weighting by samples the step is x^{(t)} + eta_g sum_i (n_i / n) Delta_i. Under
SCAFFOLD the control variates are measured on the staleness-weighted update as well (a
stale client's c_i moves by s(tau) of its drift). Clients to send are sampled with
``strategy.configure_round(t, idle clients, seed)``: as many of its tasks as there are
free slots, picked at random. A Deadline frees the slot of a client that does not answer
in time. A client that missed the deadline of an order of
the current version misses every order of it (its work, speed and dropout draw are those
of the version), so once every client has missed one, no step can come: the run stops
with a ValueError naming the deadline rather than sending orders forever. When no client
holds data, no update can come either: as synchronous rounds with no client to train are
empty, the ``rounds`` server steps are taken at once, each of no update, and the model
stays the initial one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fl.algorithms.strategy import child_seed
from fl.checks import check_integer, check_nonnegative
from fl.executors.base import ClientResult
from fl.models import Params
from fl.runtime.messages import Kind, Message, Update
from fl.runtime.launch import DISPATCH_STREAM, PICK_STREAM
from fl.runtime.simulation import Simulation


class FedBuff:
    """Asynchronous server steps every ``buffer_size`` updates, with ``concurrency``
    clients in training and staleness weights (1 + tau)^(-``staleness_exponent``)."""

    def __init__(self, buffer_size: int = 10, concurrency: int = 100, staleness_exponent: float = 0.5):
        check_integer("buffer_size", buffer_size)
        check_integer("concurrency", concurrency)
        self.buffer_size, self.concurrency = int(buffer_size), int(concurrency)
        self.staleness_exponent = check_nonnegative("staleness_exponent", staleness_exponent)

    def install(self, simulation: Simulation) -> None:
        """Replace the server's START, UPDATE and TIMEOUT handlers with buffered ones."""
        buffered = _BufferedAggregation(self, simulation)
        server = simulation.server
        server.on(Kind.START, buffered.start)
        server.on(Kind.UPDATE, buffered.receive)
        server.on(Kind.TIMEOUT, buffered.time_out)


class _BufferedAggregation:
    """The handlers' state: orders in flight and the buffer."""

    def __init__(self, config: FedBuff, simulation: Simulation):
        self.config, self.simulation, self.server = config, simulation, simulation.server
        self.in_flight: dict[int, tuple[int, int, Params]] = {}  # dispatch -> (client, version, model sent)
        self.buffer: list[tuple[ClientResult, Params]] = []  # (result, its staleness-weighted Delta_i)
        self.samplings = 0
        self.missed: set[int] = set()  # clients that missed the deadline of an order of the current version

    @property
    def over(self) -> bool:
        """All rounds are taken: no more steps or orders (the server may still await the
        clients' metrics before it is done)."""
        return self.server.round_index >= self.server.rounds

    def start(self, message: Message) -> None:
        if not self.server.available:  # no client holds data: empty steps, as synchronous rounds are empty
            while not self.over:
                self.server.close_round([])
        if self.over:
            self.server.finish()
        else:
            self.refill()

    def receive(self, message: Message) -> None:
        update: Update = message.payload
        if self.over or update.dispatch not in self.in_flight:
            return
        _, version, sent = self.in_flight.pop(update.dispatch)
        weight = (1 + self.server.round_index - version) ** -self.config.staleness_exponent
        delta = {name: weight * (y - sent[name]) for name, y in update.result.params.items() if y.is_floating_point()}
        self.buffer.append((update.result, delta))
        if len(self.buffer) == self.config.buffer_size:
            self.step()
        if not self.over:
            self.refill()

    def time_out(self, message: Message) -> None:
        if self.over or message.payload not in self.in_flight:
            return
        client, version, _ = self.in_flight.pop(message.payload)
        if version == self.server.round_index:
            self.missed.add(client)
        if self.missed >= set(self.server.available):
            raise ValueError(
                f"Deadline({self.server.deadline}): every one of the {len(self.missed)} clients missed it on the "
                f"model of server step {self.server.round_index} (too little time for its local work at its speed, "
                "or it dropped out), so no update can come; allowed is a deadline that some client meets"
            )
        self.refill()

    def step(self) -> None:
        current = self.server.params
        results = [
            replace(result, params={name: w + delta[name] if name in delta else w for name, w in current.items()})
            for result, delta in self.buffer
        ]
        self.buffer, self.missed = [], set()
        self.server.close_round(results)
        if self.over:
            self.server.finish()

    def refill(self) -> None:
        """Send the current model to idle clients until ``concurrency`` are in training."""
        free = self.config.concurrency - len(self.in_flight)
        busy = {client for client, _, _ in self.in_flight.values()}
        idle = {client: data for client, data in self.server.available.items() if client not in busy}
        if free <= 0 or not idle:
            return
        seed = self.simulation.seed
        tasks = self.simulation.strategy.configure_round(
            self.server.round_index, idle, child_seed(seed, DISPATCH_STREAM, self.samplings)
        )
        if len(tasks) > free:
            rng = np.random.default_rng(child_seed(seed, PICK_STREAM, self.samplings))
            picked = rng.choice(len(tasks), free, replace=False)
            tasks = [tasks[i] for i in sorted(picked)]
        self.samplings += 1
        for task in tasks:
            number = self.server.dispatch(task, self.server.params)
            self.in_flight[number] = (task.client_id, self.server.round_index, self.server.params)
