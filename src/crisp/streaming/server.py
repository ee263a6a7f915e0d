"""crisp's streaming server: the URLs Exec, Attach and PortForward answer with.

The kubelet proxies its clients' connections to these URLs unchanged, so the server speaks
what the kubelet's own streaming server speaks: ``/exec/<token>``, ``/attach/<token>`` and
``/portforward/<token>``, upgraded to SPDY/3.1 (``Upgrade: SPDY/3.1`` with the subprotocol in
``X-Stream-Protocol-Version``) or to WebSocket (the subprotocol in
``Sec-WebSocket-Protocol``). A token is spent by the first connection that presents it;
unknown, spent and expired tokens get 404 and run nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol

from aiohttp import WSMsgType, hdrs, web

from crisp.errors import CrispError, InvalidArgument, Unavailable
from crisp.streaming import portforward, spdy, spdy_remote, ws_portforward, ws_remote
from crisp.streaming.front import Settings
from crisp.streaming.relay import Attachable, relay
from crisp.streaming.requests import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)
from crisp.streaming.session import V1, ClientSession, Outcome

log = logging.getLogger(__name__)

PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"
SPDY_UPGRADE = "SPDY/3.1"


class Backend(Protocol):
    """What the server needs of the pods: processes to relay."""

    async def exec(self, request: ExecRequest) -> Attachable: ...

    async def attach(self, request: AttachRequest) -> Attachable: ...

    async def port_connect(self, sandbox_id: str, port: int
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class StreamingServer:
    """The aiohttp server and its token cache."""

    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend
        self.tokens = TokenCache(settings.token_ttl)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/exec/{token}", self._exec)
        app.router.add_route("*", "/attach/{token}", self._attach)
        app.router.add_route("*", "/portforward/{token}", self._port_forward)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        context = self._tls()
        site = web.TCPSite(self._runner, self.settings.address, self.settings.port,
                           ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        sockets: Sequence[object] = getattr(server, "sockets", ())
        host, port = sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"{scheme}://{shown}:{port}"
        log.info("streaming server on %s", self.base_url)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file or None)
        return context

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # The URLs the RPCs answer with ----------------------------------------------------------

    def exec_url(self, request: ExecRequest) -> str:
        if not request.cmd:
            raise InvalidArgument("Exec needs a command (cmd is empty)")
        _check_streams(request.stdin, request.stdout, request.stderr, request.tty, "Exec")
        return self._url("exec", request)

    def attach_url(self, request: AttachRequest) -> str:
        _check_streams(request.stdin, request.stdout, request.stderr, request.tty, "Attach")
        return self._url("attach", request)

    def port_forward_url(self, request: PortForwardRequest) -> str:
        for port in request.ports:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a TCP port number (1-65535)")
        return self._url("portforward", request)

    def _url(self, kind: str, request: StreamRequest) -> str:
        if not self.base_url:
            raise Unavailable("the streaming server is not running")
        return f"{self.base_url}/{kind}/{self.tokens.insert(request)}"

    # Handlers -------------------------------------------------------------------------------

    def _claim(self, request: web.Request, kind: type) -> StreamRequest:
        found = self.tokens.consume(request.match_info["token"])
        if found is None or not isinstance(found, kind):
            raise web.HTTPNotFound(text="unknown, used or expired streaming token\n")
        return found

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        claimed = self._claim(request, ExecRequest)
        assert isinstance(claimed, ExecRequest)
        return await self._remote_command(request, claimed, claimed.stdin, claimed.stdout,
                                          claimed.stderr, claimed.tty)

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        claimed = self._claim(request, AttachRequest)
        assert isinstance(claimed, AttachRequest)
        return await self._remote_command(request, claimed, claimed.stdin, claimed.stdout,
                                          claimed.stderr, claimed.tty)

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        claimed = self._claim(request, PortForwardRequest)
        assert isinstance(claimed, PortForwardRequest)
        response: web.StreamResponse
        if _is_websocket(request):
            # Newer clients tunnel the same SPDY session through WebSocket messages; the
            # others speak the kubelet's channel protocol, one connection per port.
            offered = _websocket_protocols(request)
            if portforward.TUNNELED not in offered:
                return await self._port_forward_channels(request, claimed, offered)
            ws = web.WebSocketResponse(protocols=(portforward.TUNNELED,), max_msg_size=0)
            await ws.prepare(request)
            response, session = ws, _spdy_over_websocket(ws)
        else:
            offered = _spdy_protocols(request)
            supported = (portforward.PROTOCOL,)
            protocol = _negotiate(offered, supported) if offered else portforward.PROTOCOL
            if protocol is None:
                return _no_protocol(offered, supported)
            response, session = await _upgrade_spdy(request, protocol)
        log.debug("port-forward to pod %s over SPDY%s", claimed.sandbox_id,
                  " in WebSocket" if isinstance(response, web.WebSocketResponse) else "")
        runner = asyncio.create_task(session.run())

        async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await self.backend.port_connect(claimed.sandbox_id, port)

        try:
            await portforward.serve(session, connect)
        finally:
            await session.close()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        return response

    async def _port_forward_channels(self, request: web.Request, claimed: PortForwardRequest,
                                     offered: list[str]) -> web.StreamResponse:
        supported = (portforward.TUNNELED, *ws_portforward.PROTOCOLS)
        if offered and not set(offered) & set(ws_portforward.PROTOCOLS):
            return _no_protocol(offered, supported)
        try:
            ports = list(claimed.ports) or ws_portforward.parse_ports(
                request.query.getall("port", []))
        except InvalidArgument as error:
            raise web.HTTPBadRequest(text=f"{error}\n") from None
        if not ports:
            raise web.HTTPBadRequest(
                text="port-forward over the WebSocket channel protocol needs its ports: "
                     "give them in the PortForward request or as ?port=N query parameters\n")
        chosen = next(protocol for protocol in offered if protocol in ws_portforward.PROTOCOLS
                      ) if offered else None
        log.debug("port-forward to pod %s over the WebSocket channel protocol (%s), ports %s",
                  claimed.sandbox_id, chosen or "no subprotocol", ports)
        ws = web.WebSocketResponse(protocols=(chosen,) if chosen else (), max_msg_size=0)
        await ws.prepare(request)

        async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await self.backend.port_connect(claimed.sandbox_id, port)

        await ws_portforward.serve(ws, ports, connect)
        return ws

    async def _remote_command(self, request: web.Request, claimed: ExecRequest | AttachRequest,
                              stdin: bool, stdout: bool, stderr: bool, tty: bool
                              ) -> web.StreamResponse:
        if _is_websocket(request):
            ws = web.WebSocketResponse(protocols=ws_remote.PROTOCOLS, max_msg_size=0,
                                       autoping=True, heartbeat=None)
            offered = _websocket_protocols(request)
            if offered and not set(offered) & set(ws_remote.PROTOCOLS):
                return _no_protocol(offered, ws_remote.PROTOCOLS)
            await ws.prepare(request)
            ws_session = ws_remote.WebSocketClientSession(
                ws, ws.ws_protocol or V1, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
            await ws_session.start()
            await self._run(claimed, ws_session)
            return ws
        offered = _spdy_protocols(request)
        protocol = _negotiate(offered, spdy_remote.PROTOCOLS)
        if protocol is None:
            return _no_protocol(offered, spdy_remote.PROTOCOLS)
        response, session = await _upgrade_spdy(request, protocol)
        runner = asyncio.create_task(session.run())
        try:
            wanted = spdy_remote.expected_streams(protocol, stdin=stdin, stdout=stdout,
                                                  stderr=stderr, tty=tty)
            try:
                streams = await spdy_remote.collect_streams(
                    session, wanted, self.settings.stream_creation_timeout)
            except spdy_remote.HandshakeError as error:
                log.info("streaming handshake failed: %s", error)
                await session.close()
                return response
            await self._run(claimed, spdy_remote.SpdyClientSession(session, protocol, streams))
        finally:
            await session.close()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        return response

    async def _run(self, claimed: ExecRequest | AttachRequest, client: ClientSession) -> None:
        try:
            if isinstance(claimed, ExecRequest):
                process = await self.backend.exec(claimed)
            else:
                process = await self.backend.attach(claimed)
        except CrispError as error:
            await client.finish(Outcome(error=str(error)))
            return
        except Exception as error:  # a bug: say so without a traceback on the wire
            log.exception("streaming %s failed", type(claimed).__name__)
            await client.finish(Outcome(error=f"internal error: {type(error).__name__}"))
            return
        try:
            code = await relay(process, client)
        except CrispError as error:
            await client.finish(Outcome(error=str(error)))
            return
        if code is None:
            await client.close()
        else:
            await client.finish(Outcome(exit_code=code))


def _check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool, what: str) -> None:
    if not (stdin or stdout or stderr):
        raise InvalidArgument(f"{what} needs at least one of stdin, stdout and stderr")
    if tty and stderr:
        raise InvalidArgument(f"{what} with a tty cannot have a separate stderr: a terminal "
                              "has one output stream; set stderr to false")


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _header_values(request: web.Request, name: str) -> list[str]:
    values: list[str] = []
    for raw in request.headers.getall(name, []):
        values += [value.strip() for value in raw.split(",") if value.strip()]
    return values


def _websocket_protocols(request: web.Request) -> list[str]:
    return _header_values(request, hdrs.SEC_WEBSOCKET_PROTOCOL)


def _spdy_protocols(request: web.Request) -> list[str]:
    return _header_values(request, PROTOCOL_HEADER)


def _negotiate(offered: list[str], supported: Sequence[str]) -> str | None:
    """The client's first choice that crisp speaks; a client that names none gets v1."""
    if not offered:
        return V1
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def _no_protocol(offered: list[str], supported: Sequence[str]) -> web.Response:
    response = web.Response(
        status=403,
        text=(f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
              f"server accepts {list(supported)}\n"),
    )
    for protocol in supported:
        response.headers.add(ACCEPTED_HEADER, protocol)
    return response


class _Feeder:
    """aiohttp's parser slot for an upgraded connection: raw bytes into a StreamReader."""

    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


class _TransportWriter:
    """The little of asyncio.StreamWriter a SPDY session uses, over aiohttp's transport."""

    def __init__(self, transport: asyncio.Transport, protocol: object):
        self.transport = transport
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        await self.protocol._drain_helper()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.transport.close()


async def _upgrade_spdy(request: web.Request, protocol: str
                        ) -> tuple[web.StreamResponse, spdy.Session]:
    connection = request.headers.get(hdrs.CONNECTION, "").lower()
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
    if "upgrade" not in connection or SPDY_UPGRADE.lower() not in upgrade:
        raise web.HTTPBadRequest(
            text="unable to upgrade: missing upgrade headers in request: send "
                 "'Connection: Upgrade' with 'Upgrade: SPDY/3.1', or a WebSocket upgrade\n")
    response = web.StreamResponse(status=101, headers={
        hdrs.CONNECTION: "Upgrade", hdrs.UPGRADE: SPDY_UPGRADE, PROTOCOL_HEADER: protocol,
    })
    await response.prepare(request)
    transport = request.transport
    handler = request.protocol
    if transport is None:
        raise ConnectionResetError("the client left during the upgrade")
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.set_transport(transport)
    handler.set_parser(_Feeder(reader))  # type: ignore[arg-type]
    writer = _TransportWriter(transport, handler)
    return response, spdy.Session(reader, writer, server=True)  # type: ignore[arg-type]


class _WebSocketWriter:
    """SPDY frames out as binary WebSocket messages (one per drain)."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self._buffer = bytearray()
        self.tasks: set[asyncio.Future[object]] = set()

    def write(self, data: bytes) -> None:
        self._buffer += data

    async def drain(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            if self.ws.closed:
                raise ConnectionResetError("the WebSocket is closed")
            await self.ws.send_bytes(data)

    def close(self) -> None:
        closing: asyncio.Future[object] = asyncio.ensure_future(self.ws.close())
        self.tasks.add(closing)
        closing.add_done_callback(self.tasks.discard)


def _spdy_over_websocket(ws: web.WebSocketResponse) -> spdy.Session:
    reader = asyncio.StreamReader(limit=1 << 20)

    async def pump() -> None:
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    reader.feed_data(message.data)
        finally:
            reader.feed_eof()

    writer = _WebSocketWriter(ws)
    reading: asyncio.Future[object] = asyncio.ensure_future(pump())
    writer.tasks.add(reading)  # ends when the WebSocket closes
    reading.add_done_callback(writer.tasks.discard)
    return spdy.Session(reader, writer, server=True)  # type: ignore[arg-type]
