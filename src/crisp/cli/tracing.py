"""crispctl's channels: each call's endpoint remembered, and with ``-D`` traced to stderr.

``-D/--debug`` prints, as crictl's debug output does, every CRI request before it is sent and
its status, duration and response when it ends, so a failing command shows which call failed
and what was asked. Secrets a request carries (registry credentials) are never printed.
A call's end is logged from its done callback, never by waiting on it: a pull runs as a future
while its progress is watched.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

SECRET_FIELDS = frozenset({"password", "auth", "identityToken", "registryToken"})
"""AuthConfig's fields that are secrets (``auth`` is base64 user:password)."""
REDACTED = "<redacted>"
MAX_LOGGED = 4000
"""Characters of one request or response printed; longer ones (exec output) are cut."""


@dataclass
class Calls:
    """What crispctl's channels share: whether to trace, and where the last failure went."""

    debug: bool = False
    out: TextIO | None = None  # None: sys.stderr at the time of writing (tests swap it)
    failed_target: str | None = None

    def log(self, text: str) -> None:
        print(f"crispctl: DEBUG {text}", file=self.out or sys.stderr, flush=True)


def describe(message: Any) -> str:
    """A message as one line of JSON, its secrets replaced and its length capped."""
    if not isinstance(message, Message):
        return repr(message)[:MAX_LOGGED]
    text = json.dumps(_redact(json_format.MessageToDict(message)), separators=(",", ":"))
    if len(text) > MAX_LOGGED:
        return f"{text[:MAX_LOGGED]}... ({len(text)} characters)"
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_FIELDS and isinstance(v, str) and v else _redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


if TYPE_CHECKING:  # the stubs' interceptors are generic, grpc's own are not
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor


class _Tracer(_UnaryUnary, _UnaryStream, _StreamUnary):
    """Logs each call on one channel (when debugging) and notes the target of a failure."""

    def __init__(self, target: str, calls: Calls):
        self.target = target
        self.calls = calls

    def _start(self, method: str, request: str) -> float:
        if self.calls.debug:
            self.calls.log(f"{method} on {self.target} request: {request}")
        return time.monotonic()

    def _on_done(self, method: str, started: float, unary: bool) -> Callable[[Any], None]:
        def done(call: Any) -> None:
            code: grpc.StatusCode = call.code()
            if code != grpc.StatusCode.OK:
                self.calls.failed_target = self.target
            if not self.calls.debug:
                return
            took = (time.monotonic() - started) * 1000
            status = f"{method} {code.name} in {took:.1f} ms"
            if code != grpc.StatusCode.OK:
                self.calls.log(f"{status}: {call.details()}")
            elif unary:
                self.calls.log(f"{status} response: {describe(call.result())}")
            else:
                self.calls.log(status)
        return done

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        started = self._start(details.method, describe(request))
        outcome = continuation(details, request)
        outcome.add_done_callback(self._on_done(details.method, started, unary=True))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        started = self._start(details.method, describe(request))
        call = continuation(details, request)
        call.add_done_callback(self._on_done(details.method, started, unary=False))
        return call

    def intercept_stream_unary(self, continuation: Any, details: Any,
                               request_iterator: Any) -> Any:
        started = self._start(details.method, "(a stream of requests)")
        outcome = continuation(details, request_iterator)
        outcome.add_done_callback(self._on_done(details.method, started, unary=True))
        return outcome


@contextmanager
def open_channel(target: str, calls: Calls) -> Iterator[grpc.Channel]:
    """An insecure channel to ``target`` whose calls ``calls`` traces."""
    with grpc.insecure_channel(target) as channel:
        yield grpc.intercept_channel(channel, _Tracer(target, calls))
