"""Tokens, the v4 status object, the resize stream and subprotocol negotiation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from crisp.errors import InvalidArgument, Unavailable
from crisp.streaming import ws_portforward
from crisp.streaming.requests import ExecRequest, TokenCache
from crisp.streaming.server import _negotiate
from crisp.streaming.session import Outcome, TerminalSize, status_object, terminal_sizes

REQUEST = ExecRequest("c1", ("true",), tty=False, stdin=False, stdout=True, stderr=False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_spent_by_its_first_use() -> None:
    cache = TokenCache(60)
    token = cache.insert(REQUEST)
    assert len(token) >= 20
    assert cache.consume(token) == REQUEST
    assert cache.consume(token) is None
    assert cache.consume("made-up") is None


def test_tokens_expire_and_are_unique() -> None:
    clock = Clock()
    cache = TokenCache(60, clock=clock)
    first, second = cache.insert(REQUEST), cache.insert(REQUEST)
    assert first != second
    clock.now += 59.9
    assert cache.consume(first) == REQUEST
    clock.now += 0.2
    assert cache.consume(second) is None
    assert len(cache) == 0


def test_too_many_waiting_tokens_are_refused_until_some_expire() -> None:
    clock = Clock()
    cache = TokenCache(1, clock=clock, limit=2)
    cache.insert(REQUEST)
    cache.insert(REQUEST)
    with pytest.raises(Unavailable):
        cache.insert(REQUEST)
    clock.now += 2
    cache.insert(REQUEST)


def test_status_objects_as_a_v4_client_decodes_them() -> None:
    assert status_object(Outcome()) == {"metadata": {}, "status": "Success"}
    failed = status_object(Outcome(exit_code=137))
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]
    broken = status_object(Outcome(error="no such file"))
    assert broken["status"] == "Failure" and broken["message"] == "no such file"
    assert broken["reason"] != "NonZeroExitCode"


async def test_resize_stream_splits_and_joins_json_objects() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"Width":80,"Hei', b'ght":24}{"Width":100,"Height":30}\n',
                      b'{"Width":-1,"Height":3}', b'[1]', b'{"Width":1,"Height":2}'):
            yield chunk

    sizes = [size async for size in terminal_sizes(chunks())]
    assert sizes == [TerminalSize(80, 24), TerminalSize(100, 30), TerminalSize(1, 2)]


def test_negotiation_takes_the_clients_first_supported_choice() -> None:
    supported = ("v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io")
    assert _negotiate(["v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"],
                      supported) == "v3.channel.k8s.io"
    assert _negotiate([], supported) == "channel.k8s.io"
    assert _negotiate(["v9.channel.k8s.io"], supported) is None


def test_channel_port_forward_ports_from_the_query() -> None:
    assert ws_portforward.parse_ports(["8080", "80,443"]) == [8080, 80, 443]
    assert ws_portforward.parse_ports([]) == []
    for bad in ("0", "65536", "http", "", "80,"):
        with pytest.raises(InvalidArgument, match="not a TCP port"):
            ws_portforward.parse_ports([bad])


def test_channel_port_forward_messages_binary_and_base64() -> None:
    assert ws_portforward.encode(3, b"\x50\x1f", text=False) == b"\x03\x50\x1f"
    assert ws_portforward.encode(3, b"\x50\x1f", text=True) == "3UB8="
    for text in (False, True):
        assert ws_portforward.decode(ws_portforward.encode(5, b"hi", text)) == (5, b"hi")
    assert ws_portforward.decode(b"") is None
    assert ws_portforward.decode("") is None
    assert ws_portforward.decode("1not base64!") is None
