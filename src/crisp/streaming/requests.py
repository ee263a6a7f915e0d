"""What an Exec, Attach or PortForward call asked for, kept under a single-use token.

The RPC answers with a URL that carries a random token; the client (the kubelet's proxy, or
crictl) then connects to the streaming server with it. The token is the only authority the
connection has, so it is unguessable, usable once, and short-lived.
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from crisp.errors import Unavailable

TOKEN_BYTES = 16
MAX_PENDING = 1000  # unclaimed tokens at once, as the kubelet's own streaming server allows


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    """Single-use tokens, each expiring ``ttl`` seconds after it was handed out."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 limit: int = MAX_PENDING):
        self.ttl = ttl
        self._clock = clock
        self._limit = limit
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def insert(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._entries) >= self._limit:
            raise Unavailable(
                f"{self._limit} streaming requests are waiting for their client to connect; "
                "try again once some have connected or expired"
            )
        token = base64.urlsafe_b64encode(os.urandom(TOKEN_BYTES)).rstrip(b"=").decode()
        self._entries[token] = (self._clock() + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request of a valid token, which is then spent; None if unknown or expired."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        deadline, request = entry
        return request if self._clock() < deadline else None

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                return
            del self._entries[token]
