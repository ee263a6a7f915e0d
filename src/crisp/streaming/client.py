"""A client of the streaming server (and of any kubelet-style one): exec, attach, port-forward.

crispctl and the tests use it; it speaks both transports the server does. SPDY/3.1 reuses
:mod:`crisp.streaming.spdy` as the client side of a session over an HTTP upgrade (one SPDY
stream per standard stream, ``v4.channel.k8s.io`` first). WebSocket uses aiohttp and the
channel protocol (``v5.channel.k8s.io`` first, for its stdin-close signal). Port-forward over
WebSocket tunnels the same SPDY session inside binary messages, as newer kubectl and crictl
do; :class:`ChannelPortForward` speaks the kubelet's older port-forward channel protocol.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from crisp.streaming import portforward, spdy, spdy_remote, ws_portforward
from crisp.streaming.session import (
    BASE64,
    STATUS_PROTOCOLS,
    V1,
    V4_BASE64,
    V5,
    TerminalSize,
)

log = logging.getLogger(__name__)

TRANSPORTS = ("spdy", "websocket")
WEBSOCKET_PROTOCOLS = (V5, "v4.channel.k8s.io")
_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE, _CLOSE = 0, 1, 2, 3, 4, 255
_CHUNK = 32 * 1024
_HANDSHAKE_TIMEOUT = 30.0


class StreamClientError(Exception):
    """The server refused the connection or broke off; the message says what it answered."""


class TokenRejected(StreamClientError):
    """404: the URL's token is unknown, spent or expired (nothing ran)."""


class RemoteError(StreamClientError):
    """The command could not run (the status on the error stream was not an exit code)."""


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


def exit_code_of(protocol: str, error: bytes) -> int:
    """The exit code the error stream reports; RemoteError when it reports a failure."""
    if protocol in STATUS_PROTOCOLS:
        if not error.strip():
            return 0
        try:
            status: dict[str, Any] = json.loads(error)
        except ValueError:
            raise RemoteError(error.decode(errors="replace").strip()) from None
        if status.get("status") == "Success":
            return 0
        if status.get("reason") == "NonZeroExitCode":
            for cause in status.get("details", {}).get("causes", []):
                if cause.get("reason") == "ExitCode":
                    with contextlib.suppress(ValueError, TypeError):
                        return int(cause.get("message"))
        raise RemoteError(str(status.get("message") or status))
    text = error.decode(errors="replace").strip()
    if not text:
        return 0
    prefix = "command terminated with non-zero exit code: exit status "
    if text.startswith(prefix):
        with contextlib.suppress(ValueError):
            return int(text[len(prefix):])
    raise RemoteError(text)


# The remote command -------------------------------------------------------------------------

class RemoteCommand(abc.ABC):
    """One exec or attach session: stdin in, stdout and stderr out, resizes, an exit code."""

    protocol: str

    @abc.abstractmethod
    async def read_stdout(self) -> bytes:
        """The next bytes of stdout; b"" at its end."""

    @abc.abstractmethod
    async def read_stderr(self) -> bytes:
        """The next bytes of stderr; b"" at its end (at once when there is none)."""

    @abc.abstractmethod
    async def write_stdin(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """No more stdin (SPDY: FIN; v5: the close signal; older WebSocket: nothing)."""

    @abc.abstractmethod
    async def resize(self, width: int, height: int) -> None: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """The remote exit code, once the error stream has ended."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drop the connection (the server kills an exec that is still running)."""

    async def __aenter__(self) -> RemoteCommand:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _resize_message(width: int, height: int) -> bytes:
    return json.dumps({"Width": width, "Height": height}).encode()


class SpdyCommand(RemoteCommand):
    def __init__(self, session: spdy.Session, runner: asyncio.Task[None], protocol: str,
                 streams: dict[str, spdy.Stream]):
        self.session = session
        self._runner = runner
        self.protocol = protocol
        self.streams = streams

    @classmethod
    async def open(cls, url: str, options: StreamOptions,
                   ssl_context: ssl.SSLContext | None = None) -> SpdyCommand:
        session, runner, protocol = await spdy_upgrade(url, spdy_remote.PROTOCOLS, ssl_context)
        try:
            wanted = spdy_remote.expected_streams(protocol, stdin=options.stdin,
                                                  stdout=options.stdout,
                                                  stderr=options.stderr, tty=options.tty)
            streams: dict[str, spdy.Stream] = {}
            for kind in ("error", "stdin", "stdout", "stderr", "resize"):
                if kind in wanted:
                    streams[kind] = await session.open_stream(
                        {spdy_remote.STREAM_TYPE: [kind]})
            await _replied(session, streams.values())
        except BaseException:
            await session.close()
            runner.cancel()
            raise
        return cls(session, runner, protocol, streams)

    async def _read(self, name: str) -> bytes:
        stream = self.streams.get(name)
        return await stream.read() if stream is not None else b""

    async def read_stdout(self) -> bytes:
        return await self._read("stdout")

    async def read_stderr(self) -> bytes:
        return await self._read("stderr")

    async def write_stdin(self, data: bytes) -> None:
        await self.streams["stdin"].write(data)

    async def close_stdin(self) -> None:
        stream = self.streams.get("stdin")
        if stream is not None:
            await stream.close()

    async def resize(self, width: int, height: int) -> None:
        stream = self.streams.get("resize")
        if stream is not None:
            with contextlib.suppress(ConnectionError):
                await stream.write(_resize_message(width, height))

    async def wait(self) -> int:
        error = await self.streams["error"].read_all()
        if self.streams["error"].reset and not error:
            raise StreamClientError("the server ended the session without a status")
        return exit_code_of(self.protocol, error)

    async def close(self) -> None:
        await self.session.close()
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner


class WebSocketCommand(RemoteCommand):
    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._http = http
        self.ws = ws
        self.protocol = ws.protocol or V1
        self.base64 = self.protocol in (BASE64, V4_BASE64)
        self._out: dict[int, asyncio.Queue[bytes]] = {_STDOUT: asyncio.Queue(64),
                                                     _STDERR: asyncio.Queue(64)}
        self._error = bytearray()
        self._lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, options: StreamOptions,
                   ssl_context: ssl.SSLContext | None = None) -> WebSocketCommand:
        del options  # the URL's request already says which streams there are
        http, ws = await _ws_connect(url, WEBSOCKET_PROTOCOLS, ssl_context)
        return cls(http, ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    raw: bytes = message.data
                elif message.type == aiohttp.WSMsgType.TEXT and self.base64:
                    text: str = message.data
                    raw = bytes([int(text[0])]) + base64.b64decode(text[1:])
                else:
                    continue
                if len(raw) < 2:
                    continue  # the empty first message says the connection is up
                channel, data = raw[0], raw[1:]
                if channel in self._out:
                    await self._out[channel].put(data)
                elif channel == _ERROR:
                    self._error += data
        finally:
            for queue in self._out.values():
                _end(queue)

    async def _read_channel(self, channel: int) -> bytes:
        queue = self._out[channel]
        chunk = await queue.get()
        if not chunk:
            _end(queue)
        return chunk

    async def read_stdout(self) -> bytes:
        return await self._read_channel(_STDOUT)

    async def read_stderr(self) -> bytes:
        return await self._read_channel(_STDERR)

    async def send(self, channel: int, data: bytes) -> None:
        async with self._lock:
            if self.base64:
                await self.ws.send_str(str(channel) + base64.b64encode(data).decode())
            else:
                await self.ws.send_bytes(bytes([channel]) + data)

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), 1 << 20):
            await self.send(_STDIN, bytes(view[start:start + (1 << 20)]))

    async def close_stdin(self) -> None:
        if self.protocol == V5:
            await self.send(_CLOSE, bytes([_STDIN]))

    async def resize(self, width: int, height: int) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(_RESIZE, _resize_message(width, height))

    async def wait(self) -> int:
        await asyncio.shield(self._reader)
        return exit_code_of(self.protocol, bytes(self._error))

    async def close(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close()
        finally:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            await self._http.close()


def _end(queue: asyncio.Queue[bytes]) -> None:
    """Mark a channel's end for its reader, dropping what nobody will read if it is full."""
    while True:
        try:
            queue.put_nowait(b"")
            return
        except asyncio.QueueFull:
            queue.get_nowait()


async def open_command(url: str, options: StreamOptions, transport: str = "spdy",
                       ssl_context: ssl.SSLContext | None = None) -> RemoteCommand:
    """Connect to an Exec or Attach URL with ``transport`` ("spdy" or "websocket")."""
    if transport == "spdy":
        return await SpdyCommand.open(url, options, ssl_context)
    if transport == "websocket":
        return await WebSocketCommand.open(url, options, ssl_context)
    raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")


async def pump(command: RemoteCommand, *, stdin: Callable[[], Awaitable[bytes]] | None,
               stdout: Callable[[bytes], Awaitable[None]],
               stderr: Callable[[bytes], Awaitable[None]], close_stdin: bool = True) -> int:
    """Relay local streams to a remote command until it ends; its exit code.

    ``stdin`` returns b"" at its end, which closes the remote stdin unless ``close_stdin`` is
    false (a terminal keeps its stdin open until the command ends).
    """
    async def send() -> None:
        assert stdin is not None
        with contextlib.suppress(ConnectionError):
            while data := await stdin():
                await command.write_stdin(data)
            if close_stdin:
                await command.close_stdin()

    async def copy(read: Callable[[], Awaitable[bytes]],
                   write: Callable[[bytes], Awaitable[None]]) -> None:
        while data := await read():
            await write(data)

    sender = asyncio.create_task(send()) if stdin is not None else None
    try:
        await asyncio.gather(copy(command.read_stdout, stdout),
                             copy(command.read_stderr, stderr))
        return await command.wait()
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender


# SPDY over an HTTP upgrade -----------------------------------------------------------------

async def spdy_upgrade(url: str, protocols: tuple[str, ...],
                       ssl_context: ssl.SSLContext | None = None,
                       ) -> tuple[spdy.Session, asyncio.Task[None], str]:
    """POST with ``Upgrade: SPDY/3.1``; the client session, its reader task, the protocol."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    port = parts.port or (443 if secure else 80)
    context = (ssl_context or ssl.create_default_context()) if secure else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, port, ssl=context, limit=1 << 20),
        _HANDSHAKE_TIMEOUT)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade",
                 "Upgrade: SPDY/3.1", "Content-Length: 0", "User-Agent: crispctl"]
        lines += [f"X-Stream-Protocol-Version: {protocol}" for protocol in protocols]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HANDSHAKE_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 101:
            body = b""
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError,
                                     ConnectionError, ValueError):
                length = int(headers.get("content-length", "0"))
                body = await asyncio.wait_for(reader.readexactly(min(length, 65536)), 5)
            text = body.decode(errors="replace").strip()
            if status == 404:
                raise TokenRejected(f"{url}: 404: {text}")
            raise StreamClientError(f"{url}: {status_line}: {text}")
        protocol = headers.get("x-stream-protocol-version", "")
        if protocol not in protocols:
            raise StreamClientError(f"{url}: the server chose protocol {protocol!r}, "
                                    f"not one of {list(protocols)}")
    except BaseException:
        writer.close()
        raise
    session = spdy.Session(reader, writer, server=False)
    return session, asyncio.create_task(session.run()), protocol


async def _replied(session: spdy.Session, streams: Any) -> None:
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            for stream in streams:
                await stream.replied.wait()
                if stream.reset:
                    raise StreamClientError(f"the server reset the {stream.header('streamtype')}"
                                            " stream")
    except TimeoutError:
        raise StreamClientError("the server did not answer the streams in time") from None


async def _ws_connect(url: str, protocols: tuple[str, ...],
                      ssl_context: ssl.SSLContext | None, *, shown: str = ""
                      ) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A WebSocket to a streaming URL; a refused handshake as TokenRejected (404) or
    StreamClientError, naming ``shown`` (the URL without its query) or ``url``."""
    shown = shown or url
    http = aiohttp.ClientSession()
    try:
        ws = await http.ws_connect(url, protocols=protocols, max_msg_size=0,
                                   ssl=ssl_context if ssl_context is not None else True)
    except aiohttp.WSServerHandshakeError as error:
        await http.close()
        if error.status == 404:
            raise TokenRejected(f"{shown}: 404: {error.message}") from None
        raise StreamClientError(f"{shown}: {error.status}: {error.message}") from None
    except BaseException:
        await http.close()
        raise
    return http, ws


# Port-forward -------------------------------------------------------------------------------

class _WebSocketPipe:
    """A StreamReader/StreamWriter pair over binary WebSocket messages (the tunnelled SPDY)."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.http = http
        self.ws = ws
        self.reader = asyncio.StreamReader(limit=1 << 20)
        self._buffer = bytearray()
        self._pump = asyncio.create_task(self._read())
        self._closing: asyncio.Future[None] | None = None

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    self.reader.feed_data(message.data)
        finally:
            self.reader.feed_eof()

    def write(self, data: bytes) -> None:
        self._buffer += data

    async def drain(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            if self.ws.closed:
                raise ConnectionResetError("the WebSocket is closed")
            await self.ws.send_bytes(data)

    def close(self) -> None:
        """What the SPDY session calls at its end; :meth:`aclose` waits for it."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._finish())

    async def aclose(self) -> None:
        self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _finish(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close()
        finally:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            await self.http.close()


class PortForward:
    """A port-forward session: each :meth:`connect` is one TCP connection to a pod port."""

    def __init__(self, session: spdy.Session, runner: asyncio.Task[None],
                 pipe: _WebSocketPipe | None = None):
        self.session = session
        self._runner = runner
        self._pipe = pipe  # the WebSocket the session is tunnelled in, if any
        self._ids = itertools.count()

    @classmethod
    async def open(cls, url: str, transport: str = "spdy",
                   ssl_context: ssl.SSLContext | None = None) -> PortForward:
        if transport == "spdy":
            session, runner, _ = await spdy_upgrade(url, (portforward.PROTOCOL,), ssl_context)
            return cls(session, runner)
        if transport != "websocket":
            raise ValueError(f"unknown transport {transport!r}")
        http, ws = await _ws_connect(url, (portforward.TUNNELED,), ssl_context)
        pipe = _WebSocketPipe(http, ws)
        session = spdy.Session(pipe.reader, pipe, server=False)  # type: ignore[arg-type]
        return cls(session, asyncio.create_task(session.run()), pipe)

    async def connect(self, port: int) -> ForwardedConnection:
        """Open the error and data streams of one connection to ``port`` in the pod."""
        request_id = str(next(self._ids))
        headers = {"port": [str(port)], "requestid": [request_id]}
        error = await self.session.open_stream({"streamtype": ["error"], **headers})
        data = await self.session.open_stream({"streamtype": ["data"], **headers})
        await _replied(self.session, (error, data))
        return ForwardedConnection(port, data, error)

    async def serve_local(self, local: tuple[str, int], remote: int,
                          report: Callable[[str], None] = log.warning) -> asyncio.Server:
        """Listen on ``local``; relay each accepted connection to ``remote`` in the pod."""
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                connection = await self.connect(remote)
                failure = await connection.relay(reader, writer)
                if failure:
                    report(f"error forwarding port {remote}: {failure}")
            except (ConnectionError, StreamClientError) as problem:
                report(f"error forwarding port {remote}: {problem}")
            finally:
                writer.close()

        return await asyncio.start_server(handle, local[0], local[1])

    async def close(self) -> None:
        try:
            await self.session.close()
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        finally:
            if self._pipe is not None:
                await self._pipe.aclose()

    async def __aenter__(self) -> PortForward:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class ForwardedConnection:
    """One forwarded TCP connection: the data stream, and the error stream beside it."""

    def __init__(self, port: int, data: spdy.Stream, error: spdy.Stream):
        self.port = port
        self.data = data
        self.error_stream = error

    async def read(self) -> bytes:
        return await self.data.read()

    async def write(self, data: bytes) -> None:
        await self.data.write(data)

    async def close_write(self) -> None:
        await self.data.close()

    async def error(self) -> str:
        """What the server reported for this connection ("" when it went well)."""
        return (await self.error_stream.read_all()).decode(errors="replace")

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Copy between a local connection and this one until both ends finish; the error."""
        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    await self.write(chunk)
                await self.close_write()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await self.read():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

        sending = asyncio.create_task(upstream())
        try:
            await downstream()
            return await self.error()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            if not (self.data.local_closed and self.data.remote_closed):
                await self.data.send_reset(spdy.RstStatus.CANCEL)


class ChannelPortForward:
    """Port-forward over the WebSocket channel protocol: one connection per port, fixed at open.

    The ports go in the URL as ``?port=N``; port ``i`` has data channel ``2i`` and error
    channel ``2i+1``, each opened by the server with the port number. Nothing closes one
    channel alone: every connection's data and error end together, when the server closes
    the WebSocket after the last connection ended.
    """

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 ports: list[int]):
        self.http = http
        self.ws = ws
        self.ports = ports
        self.text = ws.protocol == ws_portforward.V4_BASE64
        self.connections = [ChannelConnection(self, index, port)
                            for index, port in enumerate(ports)]
        self._prefixes: dict[int, bytes] = {}
        self._ready = asyncio.Event()
        self.ended = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, ports: list[int], base64_text: bool = False,
                   ssl_context: ssl.SSLContext | None = None) -> ChannelPortForward:
        query = urllib.parse.urlencode([("port", str(port)) for port in ports])
        full = url + ("&" if "?" in url else "?") + query
        protocol = ws_portforward.V4_BASE64 if base64_text else ws_portforward.V4
        http, ws = await _ws_connect(full, (protocol,), ssl_context, shown=url)
        forward = cls(http, ws, list(ports))
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                await forward._ready.wait()
        except TimeoutError:
            await forward.close()
            raise StreamClientError("the server did not name the ports in time") from None
        for index, port in enumerate(ports):
            for channel in (2 * index, 2 * index + 1):
                if forward._prefixes.get(channel) != port.to_bytes(2, "little"):
                    await forward.close()
                    raise StreamClientError(f"channel {channel} is not for port {port}")
        return forward

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    continue
                decoded = ws_portforward.decode(message.data)
                if decoded is None:
                    continue
                channel, data = decoded
                index, kind = divmod(channel, 2)
                if not 0 <= index < len(self.connections):
                    continue
                if channel not in self._prefixes:  # the port number, first on each channel
                    self._prefixes[channel] = data
                    if len(self._prefixes) == 2 * len(self.connections):
                        self._ready.set()
                    continue
                connection = self.connections[index]
                if kind == 0:
                    connection.data.put_nowait(data)
                else:
                    connection.error_text.extend(data)
        finally:
            self._ready.set()
            for connection in self.connections:
                connection.data.put_nowait(b"")
            self.ended.set()

    def connection(self, port: int) -> ChannelConnection:
        """The (first) connection to ``port``."""
        for connection in self.connections:
            if connection.port == port:
                return connection
        raise KeyError(port)

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        message = ws_portforward.encode(channel, data, self.text)
        if isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_bytes(message)

    async def close(self) -> None:
        try:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close()
        finally:
            await self.http.close()

    async def __aenter__(self) -> ChannelPortForward:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class ChannelConnection:
    """One port's connection in a :class:`ChannelPortForward`."""

    def __init__(self, forward: ChannelPortForward, index: int, port: int):
        self.forward = forward
        self.index = index
        self.port = port
        # Unbounded: the channels share one WebSocket, and a port nobody reads yet must not
        # hold up the others.
        self.data: asyncio.Queue[bytes] = asyncio.Queue()
        self.error_text = bytearray()
        self._ended = False

    async def read(self) -> bytes:
        """The next bytes from the pod; b"" once the session has ended."""
        if self._ended:
            return b""
        chunk = await self.data.get()
        self._ended = not chunk
        return chunk

    async def write(self, data: bytes) -> None:
        await self.forward.send(2 * self.index, data)

    async def error(self) -> str:
        """What the server reported for this port, once the session has ended."""
        await self.forward.ended.wait()
        return self.error_text.decode(errors="replace")

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Copy between a local connection and this one until the session ends; the error.

        The protocol cannot pass on the local side's EOF (there is no per-channel close), so
        after it the pod's answer is still awaited until the server ends the session.
        """
        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    await self.write(chunk)

        sending = asyncio.create_task(upstream())
        try:
            with contextlib.suppress(ConnectionError):
                while chunk := await self.read():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            return await self.error()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending


async def serve_local_channels(local: tuple[str, int], remote: int,
                               new_url: Callable[[], Awaitable[str]],
                               report: Callable[[str], None] = log.warning,
                               ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    """Listen on ``local``; relay each accepted connection to ``remote`` in the pod over the
    WebSocket channel protocol.

    A channel session's ports are fixed when it opens and carry one connection each, and its
    URL is spent by the first use, so every accepted connection gets a session of its own,
    on a fresh URL from ``new_url`` (a PortForward call).
    """
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            url = await new_url()
            async with await ChannelPortForward.open(url, [remote],
                                                     ssl_context=ssl_context) as forward:
                failure = await forward.connections[0].relay(reader, writer)
            if failure:
                prefix = f"error forwarding port {remote}"
                report(failure if failure.startswith(prefix) else f"{prefix}: {failure}")
        except (ConnectionError, StreamClientError) as problem:
            report(f"error forwarding port {remote}: {problem}")
        finally:
            writer.close()

    return await asyncio.start_server(handle, local[0], local[1])


__all__ = ["TRANSPORTS", "ChannelConnection", "ChannelPortForward", "ForwardedConnection",
           "PortForward", "RemoteCommand",
           "RemoteError", "StreamClientError", "StreamOptions", "TerminalSize", "TokenRejected",
           "exit_code_of", "open_command", "pump", "serve_local_channels"]
