"""The typed messages that server and clients exchange on the simulated clock.

A :class:`Message` is delivered to ``receiver`` at simulated time ``timestamp`` (seconds)
and handled there by the handler registered for its ``kind``. ``nbytes`` is its size on
the wire: a model's parameters for TRAIN, UPDATE and EVALUATE, nothing for the rest.

The conversation of one client in synchronous FedAvg::

    client -- JOIN(Join) ----------------------> server      (at time 0)
    server -- TRAIN(TrainOrder) ---------------> client      (a round starts)
    client -- UPDATE(Update) ------------------> server      (after its local computation)
    server -- EVALUATE((round, params)) -------> client      (when it holds a test set)
    client -- METRICS((round, metrics)) -------> server
    server -- FINISH --------------------------> client      (after the last round)

START and TIMEOUT are the server's own timers (sender = receiver = ``SERVER``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fl.data.dataset import Subset
from fl.executors.base import ClientResult, ClientTask
from fl.models import Params

SERVER = -1
"""The server's node id (clients have ids >= 0)."""


class Kind(IntEnum):
    """Message kinds. At equal timestamps messages are handled in this order, so that an
    UPDATE arriving exactly at a deadline beats the deadline's TIMEOUT, and a round's
    START comes after the JOINs of the same instant."""

    JOIN = 0
    TRAIN = 1
    UPDATE = 2
    EVALUATE = 3
    METRICS = 4
    START = 5
    TIMEOUT = 6
    FINISH = 7


@dataclass(frozen=True)
class Message:
    kind: Kind
    sender: int
    receiver: int
    timestamp: float
    payload: Any = None
    nbytes: int = 0


@dataclass(frozen=True)
class Join:
    """JOIN's payload: the client's data, and whether it holds a test set of its own."""

    data: Subset
    evaluates: bool


@dataclass(frozen=True)
class TrainOrder:
    """TRAIN's payload: train ``task`` from ``params`` and report by simulated time
    ``deadline`` (inf: no deadline). ``dispatch`` numbers the server's orders, so that an
    UPDATE or a TIMEOUT names the order it answers."""

    dispatch: int
    task: ClientTask
    params: Params
    deadline: float = float("inf")


@dataclass(frozen=True)
class Update:
    """UPDATE's payload: the client's result for order ``dispatch``."""

    dispatch: int
    result: ClientResult


def params_nbytes(params: Params) -> int:
    """Bytes of a model's state on the wire (its tensors' raw size)."""
    return sum(t.numel() * t.element_size() for t in params.values())
