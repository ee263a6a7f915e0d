"""The streaming server as the daemon holds it: started on the first Exec, Attach or PortForward.

The server runs on aiohttp, which costs about 10 MiB of the daemon's RSS; most nodes stream
rarely, so a daemon loads it only when a client asks for a URL. The URL the RPC answers with
names the bound port, so a server started at that moment is as good as one started at boot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crisp.errors import Unavailable
from crisp.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest

if TYPE_CHECKING:
    from crisp.streaming.server import Backend, StreamingServer

log = logging.getLogger(__name__)

# How long a SPDY client may take to open the streams it announced.
STREAM_CREATION_TIMEOUT = 30.0


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1"
    port: int = 0
    token_ttl: float = 60.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    stream_creation_timeout: float = STREAM_CREATION_TIMEOUT


class LazyStreamingServer:
    """Hands out streaming URLs, starting the aiohttp server behind them on first use."""

    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend
        self._server: StreamingServer | None = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._server is not None

    async def server(self) -> StreamingServer:
        """The running server; started now if this is the first stream asked for."""
        if self._server is not None:
            return self._server
        async with self._lock:
            if self._server is None:
                from crisp.streaming.server import StreamingServer

                server = StreamingServer(self.settings, self.backend)
                try:
                    await server.start()
                except OSError as error:
                    await server.stop()
                    raise Unavailable(
                        f"cannot start the streaming server on {self.settings.address}:"
                        f"{self.settings.port}: {error}; free the port or set "
                        "streaming.address/streaming.port") from error
                self._server = server
        return self._server

    async def start_if_configured(self) -> None:
        """Start now when the operator fixed a port or TLS files.

        Such a server is part of the node's setup (a firewall rule, a certificate): its errors
        belong at start-up, and its port is held from boot rather than at the first exec.
        """
        if self.settings.port or self.settings.tls_cert_file:
            await self.server()

    async def exec_url(self, request: ExecRequest) -> str:
        return (await self.server()).exec_url(request)

    async def attach_url(self, request: AttachRequest) -> str:
        return (await self.server()).attach_url(request)

    async def port_forward_url(self, request: PortForwardRequest) -> str:
        return (await self.server()).port_forward_url(request)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
