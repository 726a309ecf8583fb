"""Client behaviours, each a handler wrapped around a client's TRAIN handler.

- :class:`Deadline`: every order must be answered within a time limit; a straggler
  (a client too slow for its work, given its speed and bandwidth) does partial work,
  the local steps that fit, and sends that, as in FedProx (Li et al., 2020, "Federated
  optimization in heterogeneous networks", where stragglers' updates are gamma-inexact
  solutions); or, with ``partial_work=False``, it gives up, as the FedAvg baseline of
  that paper drops stragglers.
- :class:`Dropout`: a client that is sent an order may drop out and never answer
  (device unavailability, Bonawitz et al., 2019, "Towards federated learning at scale").

Slow clients themselves need no behaviour: they are clients whose
:class:`~fl.runtime.profiles.ClientProfile` has a low speed or bandwidth.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fl.algorithms.strategy import child_seed
from fl.checks import check_bool, check_positive, check_unit
from fl.executors.base import ClientTask
from fl.runtime.events import Handler
from fl.runtime.messages import Kind, Message, TrainOrder, params_nbytes
from fl.runtime.profiles import ClientProfile
from fl.runtime.launch import DROPOUT_STREAM
from fl.runtime.server import Server
from fl.runtime.simulation import Simulation


class Deadline:
    """Orders must be answered within ``seconds`` of being sent: the server counts an
    order unanswered by then as answered without a result (its TIMEOUT), and a client
    that receives an order at time s with deadline d runs the most local steps k, up to
    the task's, with

        s + samples(k) / speed + (model bytes) / upload  <=  d,

    samples(k) the samples its first k mini-batches process (``Subset.samples_in_steps``).

    k smaller than the task's: with ``partial_work`` the client trains k >= 1 steps and
    reports; otherwise (or when k = 0) it does not train and sends nothing, and the order
    is noted in ``Server.unmeetable``: a miss that repeats on the client's next orders,
    unlike a dropout (an order whose download alone ends at the deadline or later is
    noted as it is sent, ``Server.dispatch``)."""

    def __init__(self, seconds: float, partial_work: bool = True):
        check_bool("partial_work", partial_work)
        self.seconds, self.partial_work = check_positive("seconds", seconds), partial_work

    def install(self, simulation: Simulation) -> None:
        simulation.server.deadline = self.seconds
        for client in simulation.clients.values():
            train = client.handlers[Kind.TRAIN]
            client.on(Kind.TRAIN, self._train_by_deadline(simulation.server, client.profile, train))

    def _train_by_deadline(self, server: Server, profile: ClientProfile, train: Handler) -> Handler:
        def train_by_deadline(message: Message) -> None:
            order: TrainOrder = message.payload
            planned = order.task.num_steps
            steps = steps_by(order.deadline, message.timestamp, profile, order.task, params_nbytes(order.params))
            if steps == planned:
                train(message)
            elif self.partial_work and steps > 0:
                train(replace(message, payload=replace(order, task=replace(order.task, steps=steps))))
            elif message.timestamp < order.deadline:  # one that arrives later was noted as it was sent
                server.unmeetable[order.dispatch] = order.task

        return train_by_deadline


class Dropout:
    """A client sent an order drops out of it with probability ``probability``,
    independently for each order (a stream of the run's seed keyed by the order's
    dispatch number, so a client sent the model again may answer): it neither trains nor
    answers. The server learns of it only when the order's deadline passes, so a
    :class:`Deadline` is needed too (with a probability > 0 the run is refused without
    one, before it starts)."""

    def __init__(self, probability: float):
        check_unit("probability", probability)
        self.probability = float(probability)

    def install(self, simulation: Simulation) -> None:
        simulation.server.dropout = self.probability
        for client in simulation.clients.values():
            client.on(Kind.TRAIN, self._train_unless_dropped(simulation.seed, client.handlers[Kind.TRAIN]))

        def check_deadline() -> None:
            if self.probability > 0 and simulation.server.deadline is None:
                raise ValueError(
                    f"behaviours (Dropout({self.probability}) without a Deadline): allowed is Dropout together "
                    "with a Deadline, which closes the orders of clients that dropped out"
                )

        simulation.checks.append(check_deadline)

    def _train_unless_dropped(self, seed, train: Handler) -> Handler:
        def train_unless_dropped(message: Message) -> None:
            order: TrainOrder = message.payload
            stream = child_seed(seed, DROPOUT_STREAM, order.dispatch)
            if np.random.default_rng(stream).random() >= self.probability:
                train(message)

        return train_unless_dropped


def steps_by(deadline: float, start: float, profile: ClientProfile, task: ClientTask, nbytes: int) -> int:
    """The most steps k <= ``task.num_steps`` after which a client starting at ``start``
    has its update of ``nbytes`` delivered by ``deadline``, timed with the very float
    operations that time the delivery (so an update planned to arrive on time does);
    found by bisection, the arrival time growing with k."""

    def on_time(k: int) -> bool:
        seconds = profile.compute_seconds(task.data.samples_in_steps(k, task.batch_size))
        return start + seconds + profile.upload_seconds(nbytes) <= deadline

    low, high = 0, task.num_steps  # the answer is in [low, high]; every k > high is late
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if on_time(middle) else (low, middle - 1)
    return low
