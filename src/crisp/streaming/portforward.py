"""Port-forward over SPDY (``portforward.k8s.io``).

For each forwarded connection the client opens two streams with the same ``port`` and
``requestid`` headers: ``streamtype: error`` and ``streamtype: data``. Once both are there
crisp connects to the port in the pod and relays the data stream; a connection that fails is
reported on that pair's error stream and the session goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from crisp.errors import CrispError
from crisp.streaming import spdy

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
TUNNELED = "SPDY/3.1+portforward.k8s.io"  # the same, inside WebSocket binary messages
# asyncio reads a socket 256 KiB at a time; taking all of it makes 8 SPDY frames in one write.
READ_SIZE = 256 * 1024
Connector = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def serve(session: spdy.Session, connect: Connector) -> None:
    """Pair the client's streams and relay each pair until the session ends."""
    pending: dict[str, dict[str, spdy.Stream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await session.accept()) is not None:
            await stream.reply()
            kind = stream.header("streamtype")
            request_id = stream.header("requestid")
            try:
                port = int(stream.header("port"))
            except ValueError:
                await stream.send_reset(spdy.RstStatus.PROTOCOL_ERROR)
                continue
            if kind not in ("data", "error"):
                await stream.send_reset(spdy.RstStatus.PROTOCOL_ERROR)
                continue
            pair = pending.setdefault(request_id, {})
            pair[kind] = stream
            if len(pair) == 2:
                del pending[request_id]
                task = asyncio.create_task(_forward(port, pair["data"], pair["error"],
                                                    connect))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _forward(port: int, data: spdy.Stream, error: spdy.Stream, connect: Connector
                   ) -> None:
    try:
        reader, writer = await connect(port)
    except CrispError as failure:
        with contextlib.suppress(ConnectionError):
            await error.write(str(failure).encode())
            await error.close()
            await data.close()
        return
    async def inbound() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def outbound() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(READ_SIZE):
                await data.write(chunk)
            await data.close()

    sending = asyncio.create_task(inbound())
    try:
        await outbound()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sending), 1)
    finally:
        sending.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await error.close()
