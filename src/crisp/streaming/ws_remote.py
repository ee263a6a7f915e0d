"""exec and attach over WebSocket: the kubelet's channel protocol.

Every message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. The
``base64`` protocols send text messages, the channel as an ASCII digit and the data in
base64; the others send binary. v5 adds a close signal, channel 255 followed by the channel
the client will send no more on, which is how its stdin ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from crisp.streaming.session import (
    BASE64,
    V1,
    V4,
    V4_BASE64,
    V5,
    ClientSession,
    parse_size,
)

log = logging.getLogger(__name__)

PROTOCOLS = (V5, V4, V4_BASE64, V1, BASE64)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
_STDIN_QUEUE = 64


class _Stdin:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(_STDIN_QUEUE)
        self.ended = False

    async def read(self) -> bytes:
        if self.ended and self.queue.empty():
            return b""
        chunk = await self.queue.get()
        if not chunk:
            self.ended = True
        return chunk

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(b"")


class _Channel:
    def __init__(self, session: WebSocketClientSession, number: int):
        self.session = session
        self.number = number

    async def write(self, data: bytes) -> None:
        await self.session.send(self.number, data)

    async def close(self) -> None:
        if self.session.protocol == V5:
            with contextlib.suppress(ConnectionError):
                await self.session.send(CLOSE, bytes([self.number]))


class WebSocketClientSession(ClientSession):
    def __init__(self, ws: web.WebSocketResponse, protocol: str, *, stdin: bool, stdout: bool,
                 stderr: bool, tty: bool):
        super().__init__(protocol)
        self.ws = ws
        self.base64 = protocol in (BASE64, V4_BASE64)
        self._stdin = _Stdin() if stdin else None
        self.stdin = self._stdin
        if stdout:
            self.stdout = _Channel(self, STDOUT)
        if stderr and not tty:
            self.stderr = _Channel(self, STDERR)
        self._lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read())

    async def start(self) -> None:
        """Tell the client the connection is up: an empty message on the first channel."""
        first = STDOUT if self.stdout is not None else STDERR if self.stderr else ERROR
        await self.send(first, b"")

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        async with self._lock:
            if self.base64:
                await self.ws.send_str(str(channel) + base64.b64encode(data).decode())
            else:
                await self.ws.send_bytes(bytes([channel]) + data)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY and not self.base64:
                    raw: bytes = message.data
                elif message.type == WSMsgType.TEXT and self.base64:
                    text: str = message.data
                    if not text or not text[0].isdigit():
                        continue
                    try:
                        raw = bytes([int(text[0])]) + base64.b64decode(text[1:])
                    except (ValueError, binascii.Error):
                        continue
                else:
                    continue
                if raw:
                    await self._dispatch(raw[0], raw[1:])
        finally:
            if self._stdin is not None:
                self._stdin.end()
            self.gone.set()

    async def _dispatch(self, channel: int, data: bytes) -> None:
        if channel == STDIN and self._stdin is not None and not self._stdin.ended:
            if data:
                await self._stdin.queue.put(data)
        elif channel == RESIZE:
            with contextlib.suppress(ValueError):
                size = parse_size(json.loads(data))
                if size is not None:
                    await self.resizes.put(size)
        elif (channel == CLOSE and self.protocol == V5 and data[:1] == bytes([STDIN])
              and self._stdin is not None):
            self._stdin.end()

    async def send_error(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            if data:
                await self.send(ERROR, data)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close()
