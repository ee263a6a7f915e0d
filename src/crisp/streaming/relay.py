"""Relay a client session to a process (an exec'd command or a container's own stdio).

The relay copies stdin to the process, its output to the client and resizes to its terminal,
until the process ends; then the output still buffered is flushed and the outcome reported.
A client that goes away first gets the process killed (exec) or detached from (attach), so
nothing runs on with nobody reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from crisp.streaming.session import ClientSession, Output, TerminalSize

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
# After the process ended, how long its output may still drain (a child that inherited the
# pipes could hold them open forever).
DRAIN_SECONDS = 5.0


class Attachable(Protocol):
    """A process seen through its stdio: what exec and attach both give the relay."""

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def read_output(self, fd: int) -> bytes:
        """The next output bytes of fd 1 or 2 (b"" at its end)."""
        ...

    async def resize(self, size: TerminalSize) -> None: ...

    async def wait(self) -> int:
        """The exit code, once the process has ended."""
        ...

    async def abandon(self) -> None:
        """The client is gone: exec kills its process, attach just lets go."""
        ...

    async def close(self) -> None:
        """The relay is over: release what the process view holds."""
        ...


async def relay(process: Attachable, client: ClientSession) -> int | None:
    """Run the session to its end; the exit code, or None if the client left first."""
    outputs = [asyncio.create_task(_pump_out(process, fd, out))
               for fd, out in ((STDOUT, client.stdout), (STDERR, client.stderr))
               if out is not None]
    helpers: list[asyncio.Task[None]] = [asyncio.create_task(_pump_resizes(process, client))]
    if client.stdin is not None:
        helpers.append(asyncio.create_task(_pump_in(process, client)))
    ended = asyncio.create_task(process.wait())
    gone = asyncio.create_task(client.gone.wait())
    try:
        await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            log.info("streaming client left; abandoning its process")
            await process.abandon()
            return None
        if outputs:
            _, pending = await asyncio.wait(outputs, timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
        return ended.result()
    finally:
        everything: list[asyncio.Task[object]] = [*outputs, *helpers, ended, gone]
        for each in everything:
            each.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        await process.close()


async def _pump_out(process: Attachable, fd: int, out: Output) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await process.read_output(fd):
            await out.write(data)


async def _pump_in(process: Attachable, client: ClientSession) -> None:
    assert client.stdin is not None
    try:
        while data := await client.stdin.read():
            await process.write_stdin(data)
    except (ConnectionError, BrokenPipeError):
        return
    with contextlib.suppress(ConnectionError, BrokenPipeError):
        await process.close_stdin()


async def _pump_resizes(process: Attachable, client: ClientSession) -> None:
    while True:
        size = await client.resizes.get()
        with contextlib.suppress(OSError):
            await process.resize(size)
