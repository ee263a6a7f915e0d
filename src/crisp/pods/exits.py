"""Noticing that a container ended, without a Python process or thread per container.

conmon exits right after it has written the container's exit file, so crisp holds a pidfd of
each conmon and lets the event loop tell it when that fd becomes readable. After a restart the
recorded conmon pid is checked against its start time (pids are reused) and watched again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from crisp.pods.host import process_start_time

log = logging.getLogger(__name__)

ExitHandler = Callable[[str], Coroutine[Any, Any, None]]


class ExitWatcher:
    def __init__(self, on_exit: ExitHandler):
        self._on_exit = on_exit
        self._fds: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, object_id: str, monitor_pid: int, start_time: int) -> None:
        """Call the handler once the monitor ``monitor_pid`` (started at ``start_time``) ends."""
        self.forget(object_id)
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(monitor_pid)
        except (ProcessLookupError, OSError, ValueError):
            self._report(object_id)
            return
        # The pidfd pins the process: if the start time matches now, it is the same conmon.
        if start_time and process_start_time(monitor_pid) != start_time:
            os.close(fd)
            self._report(object_id)
            return
        self._fds[object_id] = fd
        loop.add_reader(fd, self._exited, object_id)

    def _exited(self, object_id: str) -> None:
        self.forget(object_id)
        self._report(object_id)

    def _report(self, object_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._on_exit(object_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording a container exit failed", exc_info=task.exception())

    def forget(self, object_id: str) -> None:
        fd = self._fds.pop(object_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def watching(self, object_id: str) -> bool:
        return object_id in self._fds

    async def close(self) -> None:
        for object_id in list(self._fds):
            self.forget(object_id)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
