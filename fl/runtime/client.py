"""A simulated client: trains what it is sent, evaluates what it is sent, and reports.

Default handlers:

- TRAIN: hand the order's task to the simulation's executor (clients that start at the
  same simulated time are trained in one executor call), then send the result back as
  an UPDATE that arrives after the local computation, (samples its steps processed) / speed
  (E * n for E epochs over n samples; see :mod:`fl.runtime.profiles`), and the upload,
  bytes / upload bandwidth.
- EVALUATE: evaluate the received model on the client's own test set with the
  strategy's ``evaluate`` and send the metrics back.
- FINISH: note the time training ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult
from fl.runtime.events import Node
from fl.runtime.messages import SERVER, Join, Kind, Message, TrainOrder, Update, params_nbytes
from fl.runtime.profiles import ClientProfile

if TYPE_CHECKING:
    from fl.runtime.simulation import Simulation


class Client(Node):
    """Client ``client_id`` holding ``data`` (announced in its JOIN), computing and
    communicating at ``profile``'s rates, with an optional own ``test`` set."""

    def __init__(
        self, client_id: int, data: Subset, profile: ClientProfile, simulation: "Simulation", test: ArrayDataset | None
    ):
        super().__init__(client_id)
        self.data, self.profile, self.simulation, self.test = data, profile, simulation, test
        self.finished_at: float | None = None
        self.on(Kind.TRAIN, self.train)
        self.on(Kind.EVALUATE, self.evaluate)
        self.on(Kind.FINISH, self.finish)

    def join(self) -> None:
        self.simulation.send(Kind.JOIN, self.id, SERVER, Join(self.data, evaluates=self.test is not None))

    def train(self, message: Message) -> None:
        order: TrainOrder = message.payload
        self.simulation.train(order.task, order.params, lambda result: self.report(order, result))

    def report(self, order: TrainOrder, result: ClientResult) -> None:
        samples = order.task.data.samples_in_steps(result.steps, order.task.batch_size)
        self.simulation.send(
            Kind.UPDATE,
            self.id,
            SERVER,
            Update(order.dispatch, result),
            nbytes=params_nbytes(result.params),
            after=self.profile.compute_seconds(samples),
        )

    def evaluate(self, message: Message) -> None:
        round_index, params = message.payload
        metrics = self.simulation.strategy.evaluate(self.simulation.model, params, self.test)
        self.simulation.send(Kind.METRICS, self.id, SERVER, (round_index, metrics))

    def finish(self, message: Message) -> None:
        self.finished_at = message.timestamp
