"""The simulated clock: an event queue of messages, and nodes that handle them.

Messages are handled in order of (timestamp, kind, sending order): earliest delivery
first; at equal times by :class:`~fl.runtime.messages.Kind`'s order, then in the order
in which they were sent. The order is a function of the simulation alone, so a run is
reproducible.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

from fl.runtime.messages import Kind, Message

Handler = Callable[[Message], None]


class EventQueue:
    """Messages waiting for delivery, ordered as the module docstring says."""

    def __init__(self):
        self._heap: list[tuple[float, int, int, Message]] = []
        self._sent = itertools.count()

    def push(self, message: Message) -> None:
        heapq.heappush(self._heap, (message.timestamp, int(message.kind), next(self._sent), message))

    def pop(self) -> Message:
        return heapq.heappop(self._heap)[-1]

    def next_time(self) -> float:
        """Timestamp of the next message; inf when the queue is empty."""
        return self._heap[0][0] if self._heap else float("inf")

    def __len__(self) -> int:
        return len(self._heap)


class Node:
    """A participant (the server or a client): one handler per message kind. A behaviour
    changes a node by registering a handler, usually one that wraps the previous one."""

    def __init__(self, node_id: int):
        self.id = node_id
        self.handlers: dict[Kind, Handler] = {}

    def on(self, kind: Kind, handler: Handler) -> Handler | None:
        """Handle ``kind`` with ``handler``; returns the handler it replaces (or None)."""
        previous = self.handlers.get(kind)
        self.handlers[kind] = handler
        return previous

    def handle(self, message: Message) -> None:
        if message.kind not in self.handlers:
            raise LookupError(f"node {self.id} has no handler for {message.kind.name} messages")
        self.handlers[message.kind](message)
