"""Port-forward over WebSocket: the kubelet's port-forward channel protocol.

Older clients (the kubelet's own WebSocket path, client libraries) do not tunnel SPDY: the
ports are fixed when the connection opens (``?port=N``, repeatable or comma-separated, or the
PortForward request's ports) and each port ``i`` has two channels, data ``2i`` and error
``2i+1``. Every message starts with its channel byte. The server's first message on each
channel is the port as two bytes, little-endian, so the client can check the mapping; then
data flows both ways on the data channel, and a connection that fails is reported as text on
the error channel. There is one TCP connection per port and no per-channel close: the
session ends, and the WebSocket closes, once every port's connection has ended.
``v4.base64.channel.k8s.io`` sends text messages instead, the channel as an ASCII digit and
the rest in base64; no subprotocol at all means binary, as ``v4.channel.k8s.io``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import WSMsgType, web

from crisp.errors import CrispError, InvalidArgument

log = logging.getLogger(__name__)

V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
PROTOCOLS = (V4, V4_BASE64)
Connector = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
_QUEUE = 64
_CHUNK = 32 * 1024


def parse_ports(values: Sequence[str]) -> list[int]:
    """The ``port`` query parameters as port numbers; InvalidArgument names a bad one."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            if not part.strip().isdigit() or not 0 < int(part) < 65536:
                raise InvalidArgument(f"port {part!r} in the query is not a TCP port number "
                                      "(1-65535)")
            ports.append(int(part))
    return ports


def encode(channel: int, data: bytes, text: bool) -> bytes | str:
    """One message on ``channel``: binary, or the base64 protocol's text form."""
    if text:
        return chr(ord("0") + channel) + base64.b64encode(data).decode()
    return bytes([channel]) + data


def decode(message: bytes | str) -> tuple[int, bytes] | None:
    """The channel and payload of a message; None for one that has neither."""
    if isinstance(message, str):
        if not message:
            return None
        try:
            return ord(message[0]) - ord("0"), base64.b64decode(message[1:])
        except (ValueError, binascii.Error):
            return None
    if not message:
        return None
    return message[0], message[1:]


class _Session:
    def __init__(self, ws: web.WebSocketResponse, text: bool, ports: Sequence[int]):
        self.ws = ws
        self.text = text
        self.ports = list(ports)
        self.inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue(_QUEUE) for _ in ports]
        self.done = [False] * len(ports)
        self._lock = asyncio.Lock()

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        message = encode(channel, data, self.text)
        async with self._lock:
            if isinstance(message, str):
                await self.ws.send_str(message)
            else:
                await self.ws.send_bytes(message)

    async def read(self) -> None:
        """Hand the client's data messages to their ports until the WebSocket closes."""
        try:
            async for message in self.ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                decoded = decode(message.data)
                if decoded is None:
                    continue
                channel, data = decoded
                index, kind = divmod(channel, 2)
                # Error channels are the server's to write; data for a finished port is
                # dropped so that it cannot hold up the others.
                if 0 <= index < len(self.ports) and kind == 0 and data and not self.done[index]:
                    await self.inbound[index].put(data)
        finally:
            for index, queue in enumerate(self.inbound):
                self.done[index] = True
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(b"")

    async def forward(self, index: int, connect: Connector) -> None:
        port = self.ports[index]
        data, error = 2 * index, 2 * index + 1
        try:
            reader, writer = await connect(port)
        except CrispError as failure:
            self._finish(index)
            with contextlib.suppress(ConnectionError):
                await self.send(error, f"error forwarding port {port}: {failure}".encode())
            return

        async def inbound() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await self.inbound[index].get():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

        sending = asyncio.create_task(inbound())
        try:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(_CHUNK):
                    await self.send(data, chunk)
        finally:
            self._finish(index)
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            writer.close()

    def _finish(self, index: int) -> None:
        self.done[index] = True
        queue = self.inbound[index]
        while not queue.empty():  # wake a reader blocked on this port's full queue
            queue.get_nowait()


async def serve(ws: web.WebSocketResponse, ports: Sequence[int], connect: Connector) -> None:
    """Forward ``ports`` over a prepared WebSocket until every connection ends, then close it."""
    session = _Session(ws, ws.ws_protocol == V4_BASE64, ports)
    reading = asyncio.create_task(session.read())
    forwards: list[asyncio.Task[None]] = []
    try:
        with contextlib.suppress(ConnectionError):
            for index, port in enumerate(ports):
                prefix = port.to_bytes(2, "little")
                await session.send(2 * index, prefix)
                await session.send(2 * index + 1, prefix)
        forwards = [asyncio.create_task(session.forward(index, connect))
                    for index in range(len(ports))]
        # A client that leaves ends the session even if a pod port never answers.
        pending: set[asyncio.Task[None]] = set(forwards)
        while pending and not reading.done():
            _, pending = await asyncio.wait(pending | {reading},
                                            return_when=asyncio.FIRST_COMPLETED)
            pending.discard(reading)
    finally:
        for task in forwards:
            task.cancel()
        await asyncio.gather(*forwards, return_exceptions=True)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()
