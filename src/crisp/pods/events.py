"""Lifecycle events of pods and containers, fanned out to every GetContainerEvents stream."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from crisp.pods.model import Container, Sandbox

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000


class EventKind(enum.IntEnum):
    """Numbered as CRI's ContainerEventType."""

    CREATED = 0
    STARTED = 1
    STOPPED = 2
    DELETED = 3


@dataclass(frozen=True)
class LifecycleEvent:
    """One event: the object it is about (a container or a sandbox id) and a snapshot of its pod."""

    object_id: str
    kind: EventKind
    sandbox: Sandbox | None
    containers: list[Container] = field(default_factory=list)
    created_at: int = field(default_factory=time.time_ns)


class EventBus:
    """Delivers every event to every subscriber; a subscriber that falls far behind is dropped."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[LifecycleEvent | None]] = set()

    def publish(self, event: LifecycleEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("an event subscriber fell %d events behind; closing its stream",
                            QUEUE_LIMIT)
                self._queues.discard(queue)
                _end(queue)

    async def subscribe(self) -> AsyncIterator[LifecycleEvent]:
        """Events from now on, until the subscriber stops reading or falls behind."""
        queue: asyncio.Queue[LifecycleEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        for queue in list(self._queues):
            _end(queue)
        self._queues.clear()


def _end(queue: asyncio.Queue[LifecycleEvent | None]) -> None:
    """Make the subscriber's stream end at once (it must resynchronise by listing)."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)
