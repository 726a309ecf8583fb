"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022, "Federated learning
with buffered asynchronous aggregation", AISTATS).

The server keeps ``concurrency`` clients training (fewer only while fewer are idle). A
client trains from the model version it was sent, x^{(tau_i)}; when its result y_i
arrives while the server is at version t, its update enters the buffer scaled by its
staleness t - tau_i,

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
stale client's c_i moves by s(tau) of its drift).

Whom to send: FedBuff picks the clients. Idle are the clients with neither an order in
flight nor an update in the buffer, so that a step holds at most one update per client
and a strategy's per-client state (SCAFFOLD's c and c_i) is the one sent with the task
of the update it aggregates. ``strategy.configure_round(t, idle clients, seed)`` must
give every idle client a task, of which as many as there are free slots are picked at
random: a strategy that samples fewer (``clients_per_round`` below the number of idle
clients, ``fraction`` below 1) is refused with a ValueError, since under FedBuff
``concurrency`` says how many clients train. ``buffer_size`` may not exceed the number
of clients with data.

A Deadline frees the slot of a client that does not answer in time. A client whose local
work does not fit in the deadline at its speed and bandwidth (``Server.unmeetable``)
misses every order of the current model; once fewer than ``buffer_size`` clients are
left that may answer, no step can come, and the run stops with a ValueError naming the
deadline rather than sending orders forever. A client that dropped out may answer its
next order (each order's dropout is drawn anew), so it is sent orders again; with
``Dropout(1.0)`` none ever would, and the run is refused before it starts. Orders left
unanswered for any cause but the work (a dropout, or a behaviour of the user's own that
dropped the order or delayed its update past the deadline) are sent again too, but a
client that leaves ``UNANSWERED_LIMIT`` (1000) of them unanswered since it last answered
counts, like one that cannot meet the deadline, as a client that will not answer: a
behaviour that drops every order would otherwise have the server send orders forever
(Dropout(p) leaves 1000 orders of a client in a row unanswered with probability p^1000,
4e-5 for p = 0.99). Once fewer than ``buffer_size`` clients are left that may answer,
the run stops with a ValueError naming the behaviours. When no
client holds data, no update can come either: as synchronous rounds with no client to
train are empty, the ``rounds`` server steps are taken at once, each of no update, and
the model stays the initial one.
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

UNANSWERED_LIMIT = 1000
"""Orders that a client may leave unanswered since it last answered (not counting those
whose work does not fit the deadline) before FedBuff counts it as a client that will not answer."""


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

        def check_steps_can_come() -> None:
            clients = len(simulation.clients)
            if 0 < clients < self.buffer_size:
                raise ValueError(
                    f"buffer_size={self.buffer_size} (more than the {clients} clients with data): allowed is at most "
                    "the number of clients, as a step holds one update per client"
                )
            if server.dropout == 1:
                raise ValueError(
                    "behaviours (FedBuff with Dropout(1.0)): every order drops out, so no update can ever come; "
                    "allowed is a dropout probability < 1 with FedBuff"
                )

        simulation.checks.append(check_steps_can_come)


class _BufferedAggregation:
    """The handlers' state: orders in flight and the buffer."""

    def __init__(self, config: FedBuff, simulation: Simulation):
        self.config, self.simulation, self.server = config, simulation, simulation.server
        self.in_flight: dict[int, tuple[int, int, Params]] = {}  # dispatch -> (client, version, model sent)
        self.buffer: list[tuple[ClientResult, Params]] = []  # (result, its staleness-weighted Delta_i)
        self.samplings = 0
        self.unanswered: dict[int, int] = {}  # client -> orders it left unanswered since it last answered, work aside

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
        client, version, sent = self.in_flight.pop(update.dispatch)
        self.unanswered.pop(client, None)
        weight = (1 + self.server.round_index - version) ** -self.config.staleness_exponent
        delta = {name: weight * (y - sent[name]) for name, y in update.result.params.items() if y.is_floating_point()}
        self.buffer.append((update.result, delta))
        if len(self.buffer) == self.config.buffer_size:
            self.step()
        if not self.over:
            self.refill()

    def time_out(self, message: Message) -> None:
        number = message.payload
        if self.over or number not in self.in_flight:
            return
        client, _, _ = self.in_flight.pop(number)
        if number not in self.server.unmeetable:  # dropped out, or dropped or delayed by a behaviour
            self.unanswered[client] = self.unanswered.get(client, 0) + 1
        self.server.count_miss(number)
        self.check_answers_can_come()
        self.refill()

    def check_answers_can_come(self) -> None:
        """ValueError once fewer than buffer_size clients may answer: the others cannot
        meet the deadline (``Server.missed``) or have left ``UNANSWERED_LIMIT`` orders
        unanswered since they last answered."""
        missed, clients, k = len(self.server.missed), len(self.server.available), self.config.buffer_size
        if clients - missed < k:
            raise ValueError(
                f"Deadline({self.server.deadline}): {missed} of the {clients} clients cannot meet it on the model "
                f"of server step {self.server.round_index} (their local work does not fit in it at their speed and "
                f"bandwidth), leaving fewer than buffer_size={k} to answer, so no step can come; allowed is a "
                "deadline that at least buffer_size clients meet"
            )
        silent = {c for c, n in self.unanswered.items() if n >= UNANSWERED_LIMIT} - self.server.missed.keys()
        if clients - missed - len(silent) < k:
            also = f" and {missed} cannot meet the deadline" if missed else ""
            raise ValueError(
                f"behaviours ({len(silent)} of the {clients} clients left {UNANSWERED_LIMIT} orders unanswered by "
                f"the deadline since they last answered{also}, leaving fewer than buffer_size={k} to answer, so no step can "
                f"come after server step {self.server.round_index}): a behaviour drops every order, or delays its "
                "update past the deadline; allowed is behaviours that let at least buffer_size clients answer"
            )

    def step(self) -> None:
        current = self.server.params
        results = [
            replace(result, params={name: w + delta[name] if name in delta else w for name, w in current.items()})
            for result, delta in self.buffer
        ]
        self.buffer = []
        self.server.close_round(results)
        if self.over:
            self.server.finish()

    def refill(self) -> None:
        """Send the current model to idle clients until ``concurrency`` are in training."""
        free = self.config.concurrency - len(self.in_flight)
        busy = {client for client, _, _ in self.in_flight.values()} | {result.client_id for result, _ in self.buffer}
        idle = {client: data for client, data in self.server.available.items() if client not in busy}
        if free <= 0 or not idle:
            return
        seed, strategy = self.simulation.seed, self.simulation.strategy
        stream = child_seed(seed, DISPATCH_STREAM, self.samplings)
        tasks = strategy.configure_round(self.server.round_index, idle, stream)
        if len(tasks) < len(idle):
            raise ValueError(
                f"strategy ({strategy.label} gave tasks to {len(tasks)} of the {len(idle)} idle clients): allowed "
                "under FedBuff is a strategy that configures every client it is given, e.g. clients_per_round=None "
                "and fraction=1.0; FedBuff's concurrency says how many clients train"
            )
        if len(tasks) > free:
            rng = np.random.default_rng(child_seed(seed, PICK_STREAM, self.samplings))
            picked = rng.choice(len(tasks), free, replace=False)
            tasks = [tasks[i] for i in sorted(picked)]
        self.samplings += 1
        for task in tasks:
            number = self.server.dispatch(task, self.server.params)
            self.in_flight[number] = (task.client_id, self.server.round_index, self.server.params)
