"""The simulated server, synchronous by default.

Shared duties, used by every server behaviour: keep the clients that JOINed, send
TRAIN orders (``dispatch``), aggregate and record a round (``close_round``), collect
clients' METRICS, and FINISH.

Synchronous rounds (FedAvg's, McMahan et al. 2017) are three handlers:

- START: round t begins: ``strategy.configure_round(t, joined clients, round seed)``
  gives the tasks, and each client is sent its order;
- UPDATE: a result of the round is kept; the round closes when every order is answered;
- TIMEOUT: an order whose deadline passed counts as answered without a result (set by
  the :class:`~fl.runtime.behaviours.Deadline` behaviour). Once every client has missed
  the deadline because its local work does not fit in it (``count_miss``) and a round
  asks the same work of them again, no round can have an update: the run stops with a
  ValueError naming the deadline, rather than returning the untrained model (a strategy
  whose schedule asks less work of a client in a later round goes on).

Closing aggregates the round's results in task order, whatever order they arrived in,
so with the same seed and executor the global models do not depend on the clients'
speeds or bandwidths. Then START comes again, at the same instant.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult, ClientTask, check_finite_global
from fl.models import Params, check_params
from fl.runtime.events import Node
from fl.runtime.launch import round_seed
from fl.runtime.messages import SERVER, Join, Kind, Message, TrainOrder, params_nbytes

if TYPE_CHECKING:
    from fl.runtime.simulation import Simulation


@dataclass(frozen=True)
class RoundRecord:
    """One round (for FedBuff: one server step).

    clients: orders sent during the round; updates: results aggregated; samples: their
    samples. train_loss: sample-weighted mean of the clients' mean mini-batch loss (nats;
    NaN when no client trained). test_loss, test_accuracy: the new global model on the
    test set (None when not evaluated). bytes_down / bytes_up: model payloads delivered
    for training server -> clients and clients -> server since the previous round closed
    (evaluation traffic is not counted). seconds: wall-clock seconds of the round.
    time: simulated seconds when the round closed. client_accuracy: client id ->
    accuracy of the new global model on that client's own test set (clients given one,
    on evaluated rounds)."""

    round_index: int
    clients: int
    samples: int
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    bytes_down: int
    bytes_up: int
    seconds: float
    updates: int
    time: float
    client_accuracy: dict[int, float] = field(default_factory=dict)


class Server(Node):
    """Runs ``rounds`` rounds from ``params``; evaluates on ``test`` every
    ``evaluate_every`` rounds and after the last. ``deadline``: seconds a client has to
    answer an order (None: no limit). ``dropout``: the probability that a client drops
    out of an order. ``unmeetable``: dispatch number -> task of the
    orders whose client found that its local work cannot fit in the deadline (noted by
    the Deadline behaviour). ``missed``: client -> the work (local steps, batch size) of
    its order of the current model that it could not meet, since a round last had an
    update (``count_miss``); a client sent other work leaves it."""

    def __init__(
        self,
        simulation: "Simulation",
        params: Params,
        rounds: int,
        test: ArrayDataset | None,
        evaluate_every: int,
        progress: bool,
    ):
        super().__init__(SERVER)
        self.simulation, self.params, self.rounds = simulation, params, rounds
        self.test, self.evaluate_every = test, evaluate_every
        self.deadline: float | None = None
        self.dropout = 0.0  # the probability that a client drops out of an order (set by the Dropout behaviour)
        self.unmeetable: dict[int, ClientTask] = {}
        self.missed: dict[int, tuple[int, int]] = {}
        self.available: dict[int, Subset] = {}
        self.evaluators: list[int] = []
        self.round_index = 0
        self.history: list[RoundRecord] = []
        self.client_accuracy: dict[int, dict[int, float]] = {}
        self.done = False
        self._orders = 0  # orders sent so far; an order's dispatch number is its rank
        self._window = (time.perf_counter(), 0, 0, 0)  # wall clock, bytes down, bytes up, orders at the last close
        self._awaiting_metrics = 0
        self._finishing = False
        self._bar = tqdm(total=rounds, desc=simulation.strategy.label, unit="round", disable=not progress, leave=False)
        self._waiting: dict[int, int] = {}  # the open round's unanswered orders: dispatch -> task position
        self._received: dict[int, ClientResult] = {}  # task position -> result
        self.on(Kind.JOIN, self.join)
        self.on(Kind.START, self.start_round)
        self.on(Kind.UPDATE, self.receive)
        self.on(Kind.TIMEOUT, self.time_out)
        self.on(Kind.METRICS, self.collect_metrics)

    # -- shared duties

    def join(self, message: Message) -> None:
        joined: Join = message.payload
        self.available[message.sender] = joined.data
        if joined.evaluates:
            self.evaluators.append(message.sender)

    def dispatch(self, task: ClientTask, params: Params) -> int:
        """Send ``task`` to its client, to train from ``params``; with a deadline, a
        TIMEOUT for the order comes back to the server when it passes, and an order whose
        download alone takes until the deadline or later is noted in ``unmeetable`` (no
        update can follow it in time, whatever the work: a miss that repeats; the client
        would learn of it only after the TIMEOUT had been counted). Returns the order's
        dispatch number."""
        if task.client_id not in self.available:  # a strategy's configure_round named another client: a KeyError
            raise ValueError(f"{type(self.simulation.strategy).__name__}.configure_round gave a task to client "
                             f"{task.client_id!r}: allowed is a task for a client with data, one of "
                             f"{sorted(self.available)[:10]}")
        if self.missed.get(task.client_id, _work(task)) != _work(task):  # other work: the miss need not repeat
            del self.missed[task.client_id]
        number, self._orders = self._orders, self._orders + 1
        nbytes, now = params_nbytes(params), self.simulation.now
        deadline = math.inf if self.deadline is None else now + self.deadline
        order = TrainOrder(number, task, params, deadline)
        self.simulation.send(Kind.TRAIN, SERVER, task.client_id, order, nbytes=nbytes)
        if self.deadline is not None:
            if now + self.simulation.clients[task.client_id].profile.download_seconds(nbytes) >= deadline:
                self.unmeetable[number] = task  # the arrival time as Simulation.send computes it
            self.simulation.send(Kind.TIMEOUT, SERVER, SERVER, number, after=self.deadline)
        return number

    def close_round(self, results: list[ClientResult]) -> None:
        """w <- strategy.aggregate(w, results); evaluate when due (on the server's test
        set, and by EVALUATE on the clients' own); TrainingDiverged where the step made an
        entry of w non-finite, or its test loss NaN; record the round; next round."""
        strategy, model, t = self.simulation.strategy, self.simulation.model, self.round_index
        start, self.params = self.params, strategy.aggregate(self.params, results)
        check_params(f"{type(strategy).__name__}.aggregate(...)", self.params, model)  # a wrong one failed in evaluate
        samples = sum(r.num_samples for r in results)
        metrics = {}
        if (t + 1) % self.evaluate_every == 0 or t == self.rounds - 1:
            if self.test is not None:
                metrics = strategy.evaluate(model, self.params, self.test)
                self._bar.set_postfix(acc=f"{metrics['accuracy']:.3f}")
            for client in self.evaluators:
                self.simulation.send(Kind.EVALUATE, SERVER, client, (t, self.params), nbytes=params_nbytes(self.params))
            self._awaiting_metrics += len(self.evaluators)
        lr, server_lr = getattr(strategy, "lr", None), getattr(strategy, "server_lr", None)
        check_finite_global(start, self.params, t, lr, server_lr, metrics.get("loss"))
        wall, down, up, orders = self._window
        delivered = self.simulation.delivered_bytes
        now = (time.perf_counter(), delivered[Kind.TRAIN], delivered[Kind.UPDATE], self._orders)
        self.history.append(
            RoundRecord(
                round_index=t,
                clients=now[3] - orders,
                updates=len(results),
                samples=samples,
                train_loss=sum(r.num_samples * r.train_loss for r in results) / samples if samples else math.nan,
                test_loss=metrics.get("loss"),
                test_accuracy=metrics.get("accuracy"),
                bytes_down=now[1] - down,
                bytes_up=now[2] - up,
                time=self.simulation.now,
                seconds=now[0] - wall,
            )
        )
        self._window = now
        if results:
            self.missed = {}
        self._bar.update(1)
        self.round_index += 1

    def count_miss(self, dispatch: int) -> None:
        """Order ``dispatch`` went unanswered by its deadline. If its client could not meet
        it (``unmeetable``) and it was an order of the current model, the client joins
        ``missed``: its next orders of the same work miss too (at the same speed, bandwidth
        and deadline; :meth:`dispatch` takes it out when it is sent other work, as a
        strategy's schedule may shrink the local steps). A client that dropped out by
        chance is not counted."""
        task = self.unmeetable.pop(dispatch, None)
        if task is not None and task.round_index == self.round_index:
            self.missed[task.client_id] = _work(task)

    def collect_metrics(self, message: Message) -> None:
        round_index, metrics = message.payload
        self.client_accuracy.setdefault(round_index, {})[message.sender] = metrics["accuracy"]
        self._awaiting_metrics -= 1
        if self._finishing and not self._awaiting_metrics:
            self.finish()

    def finish(self) -> None:
        """FINISH to every client once the last metrics are in."""
        self._finishing = True
        if self._awaiting_metrics:
            return
        for client in self.available:
            self.simulation.send(Kind.FINISH, SERVER, client)
        self.done = True
        self.close_progress()

    def close_progress(self) -> None:
        """Close the progress bar (again: harmless)."""
        self._bar.close()

    def records(self) -> list[RoundRecord]:
        """The history, with the clients' accuracies filled in."""
        return [replace(r, client_accuracy=self.client_accuracy.get(r.round_index, {})) for r in self.history]

    # -- synchronous rounds

    def start_round(self, message: Message) -> None:
        if self.round_index == self.rounds:
            self.finish()
            return
        seed = round_seed(self.simulation.seed, self.round_index)
        tasks = self.simulation.strategy.configure_round(self.round_index, self.available, seed)
        if (tasks and self.missed.keys() >= set(self.available)
                and all(self.missed[task.client_id] == _work(task) for task in tasks)):
            raise ValueError(
                f"Deadline({self.deadline}): every one of the {len(self.available)} clients has missed it with the "
                f"local work that round {self.round_index} asks of it again (too much for the deadline at its speed "
                "and bandwidth), so no update can come; allowed is a deadline that some client meets"
            )
        self._waiting = {self.dispatch(task, self.params): position for position, task in enumerate(tasks)}
        self._received = {}
        if not tasks:
            self._close_synchronous_round()

    def receive(self, message: Message) -> None:
        position = self._waiting.pop(message.payload.dispatch, None)
        if position is not None:
            self._received[position] = message.payload.result
            if not self._waiting:
                self._close_synchronous_round()

    def time_out(self, message: Message) -> None:
        if self._waiting.pop(message.payload, None) is None:
            return
        self.count_miss(message.payload)
        if not self._waiting:
            self._close_synchronous_round()

    def _close_synchronous_round(self) -> None:
        received, self._received = self._received, {}  # a finished run kept the last round's client models
        self.close_round([received[position] for position in sorted(received)])
        self.simulation.send(Kind.START, SERVER, SERVER)


def _work(task: ClientTask) -> tuple[int, int]:
    """What decides whether a client meets a deadline, besides its profile and the
    model's size: the local steps asked for and their batch size."""
    return task.num_steps, task.batch_size
