"""The one interface exec and attach see, whichever framing the client spoke.

A client session has up to three byte streams (stdin from the client, stdout and stderr to
it), terminal resizes from it, and one final status. SPDY gives each its own SPDY stream;
WebSocket multiplexes them as numbered channels. :mod:`crisp.streaming.spdy_remote` and
:mod:`crisp.streaming.ws_remote` implement this interface over the two.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

# The remotecommand subprotocols, newest first.
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
BASE64 = "base64.channel.k8s.io"

STATUS_PROTOCOLS = frozenset({V5, V4, V4_BASE64})


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


@dataclass(frozen=True)
class Outcome:
    """How the command ended: an exit code, or an error that kept it from running."""

    exit_code: int = 0
    error: str = ""


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class Input(Protocol):
    async def read(self) -> bytes:
        """Bytes from the client; b"" when it closed its stdin."""
        ...


class ClientSession(abc.ABC):
    """One client connection of exec or attach, after the handshake."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.stdin: Input | None = None
        self.stdout: Output | None = None
        self.stderr: Output | None = None
        self.resizes: asyncio.Queue[TerminalSize] = asyncio.Queue()
        self.gone = asyncio.Event()  # the client went away before the end

    @abc.abstractmethod
    async def send_error(self, data: bytes) -> None:
        """Write the error stream's content and close it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the connection."""

    async def finish(self, outcome: Outcome) -> None:
        """Report how the command ended, in this protocol's way, then end the connection."""
        if self.protocol in STATUS_PROTOCOLS:
            await self.send_error(json.dumps(status_object(outcome)).encode())
        elif outcome.error or outcome.exit_code:
            await self.send_error(failure_message(outcome).encode())
        else:
            await self.send_error(b"")
        await self.close()


def failure_message(outcome: Outcome) -> str:
    if outcome.error:
        return outcome.error
    return f"command terminated with non-zero exit code: exit status {outcome.exit_code}"


def status_object(outcome: Outcome) -> dict[str, Any]:
    """The metav1.Status a v4 client decodes: Success, or NonZeroExitCode with ExitCode."""
    if not outcome.error and outcome.exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    if outcome.error:
        return {"metadata": {}, "status": "Failure", "message": outcome.error,
                "reason": "InternalError", "code": 500,
                "details": {"causes": [{"message": outcome.error}]}}
    return {
        "metadata": {}, "status": "Failure", "message": failure_message(outcome),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(outcome.exit_code)}]},
    }


async def terminal_sizes(chunks: AsyncIterator[bytes]) -> AsyncIterator[TerminalSize]:
    """The resize stream: JSON objects {"Width": w, "Height": h}, one after another."""
    decoder = json.JSONDecoder()
    buffer = ""
    async for chunk in chunks:
        buffer += chunk.decode(errors="replace")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                value, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # incomplete: wait for more
            buffer = buffer[end:]
            size = parse_size(value)
            if size is not None:
                yield size


def parse_size(value: Any) -> TerminalSize | None:
    if not isinstance(value, dict):
        return None
    width, height = value.get("Width", value.get("width")), value.get("Height",
                                                                      value.get("height"))
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        return None
    return TerminalSize(width, height)
