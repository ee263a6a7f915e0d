"""exec and attach over SPDY: one SPDY stream per standard stream, named by ``streamtype``.

The client opens the streams (error first, then stdin, stdout, stderr, resize as the request
asked); crisp replies to each and starts the command once all it expects have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from crisp.streaming import spdy
from crisp.streaming.front import STREAM_CREATION_TIMEOUT
from crisp.streaming.session import V1, V2, ClientSession, terminal_sizes

log = logging.getLogger(__name__)

PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
STREAM_TYPE = "streamtype"


class HandshakeError(Exception):
    """The client did not open the streams it said it would."""


class _Output:
    def __init__(self, stream: spdy.Stream):
        self.stream = stream

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close(self) -> None:
        await self.stream.close()


class SpdyClientSession(ClientSession):
    def __init__(self, session: spdy.Session, protocol: str, streams: dict[str, spdy.Stream]):
        super().__init__(protocol)
        self.session = session
        self.streams = streams
        self._error = streams.get("error")
        if "stdin" in streams:
            self.stdin = streams["stdin"]
        if "stdout" in streams:
            self.stdout = _Output(streams["stdout"])
        if "stderr" in streams:
            self.stderr = _Output(streams["stderr"])
        self._tasks = [asyncio.create_task(self._watch())]
        if "resize" in streams:
            self._tasks.append(asyncio.create_task(self._resizes(streams["resize"])))

    async def _watch(self) -> None:
        await self.session.done.wait()
        self.gone.set()

    async def _resizes(self, stream: spdy.Stream) -> None:
        async for size in terminal_sizes(_chunks(stream)):
            await self.resizes.put(size)

    async def send_error(self, data: bytes) -> None:
        if self._error is None:
            return
        with contextlib.suppress(ConnectionError):
            if data:
                await self._error.write(data)
            await self._error.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for name in ("stdout", "stderr"):
            stream = self.streams.get(name)
            if stream is not None:
                await stream.close()
        await self.session.close()


async def _chunks(stream: spdy.Stream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        yield chunk


def expected_streams(protocol: str, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> set[str]:
    wanted = {"error"}
    if stdin:
        wanted.add("stdin")
    if stdout:
        wanted.add("stdout")
    if stderr and not tty:
        wanted.add("stderr")
    if tty and protocol not in (V1, V2):
        wanted.add("resize")
    return wanted


async def collect_streams(session: spdy.Session, wanted: set[str],
                          seconds: float = STREAM_CREATION_TIMEOUT) -> dict[str, spdy.Stream]:
    """Accept and reply to the client's streams until every wanted one is there."""
    streams: dict[str, spdy.Stream] = {}
    try:
        async with asyncio.timeout(seconds):
            while not wanted <= streams.keys():
                stream = await session.accept()
                if stream is None:
                    raise HandshakeError("the client went away before opening its streams")
                kind = stream.header(STREAM_TYPE)
                await stream.reply()
                if kind not in ("error", "stdin", "stdout", "stderr", "resize"):
                    raise HandshakeError(f"unexpected stream type {kind!r}")
                if kind in streams:
                    raise HandshakeError(f"a second {kind} stream")
                streams[kind] = stream
    except TimeoutError:
        missing = ", ".join(sorted(wanted - streams.keys()))
        raise HandshakeError(f"timed out after {seconds:.0f}s waiting for the client's "
                             f"streams ({missing})") from None
    return streams
