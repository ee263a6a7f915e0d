"""Exec, attach and port-forward through crisp's own streaming client, on a real daemon.

CI has no crictl: these drive both transports with :mod:`crisp.streaming.client`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crisp.api import cri_pb2
from crisp.streaming.client import (
    ChannelPortForward,
    PortForward,
    RemoteCommand,
    StreamClientError,
    StreamOptions,
    TokenRejected,
    open_command,
    pump,
)
from tests.support.pods import PodsEnv, pods_environment, processes, sleepers, wait_for

pytestmark = pytest.mark.integration

TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-sclient-") as base, \
            pods_environment(Path(base), '[streaming]\ntoken_ttl = 2.0\n') as environment:
        yield environment


@pytest.fixture(autouse=True)
def no_unclosed_client_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every aiohttp session the client opens is closed by the time its call returns
    (aiohttp warns about the others when they are collected, at the end of the suite)."""
    opened: list[aiohttp.ClientSession] = []
    original = aiohttp.ClientSession.__init__

    def recording(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", recording)
    yield
    assert [session for session in opened if not session.closed] == []


@pytest.fixture(scope="module")
def container(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "shell", ["sh", "-c", "sleep 3600"]))
    yield container_id
    env.remove_pod(pod_id)


def exec_url(env: PodsEnv, container: str, cmd: list[str], options: StreamOptions) -> str:
    return str(env.runtime.Exec(cri_pb2.ExecRequest(
        container_id=container, cmd=cmd, stdin=options.stdin, stdout=options.stdout,
        stderr=options.stderr, tty=options.tty)).url)


async def run(url: str, transport: str, options: StreamOptions, stdin: bytes | None = None
              ) -> tuple[bytes, bytes, int]:
    out, err = bytearray(), bytearray()
    pending = [stdin[i:i + (1 << 20)] for i in range(0, len(stdin), 1 << 20)] if stdin else []

    async def source() -> bytes:
        return pending.pop(0) if pending else b""

    async def to_out(data: bytes) -> None:
        out.extend(data)

    async def to_err(data: bytes) -> None:
        err.extend(data)

    async with await open_command(url, options, transport) as command:
        code = await pump(command, stdin=source if options.stdin else None, stdout=to_out,
                          stderr=to_err)
    return bytes(out), bytes(err), code


def execute(env: PodsEnv, container: str, transport: str, cmd: list[str],
            stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    options = StreamOptions(stdin=stdin is not None)
    return asyncio.run(run(exec_url(env, container, cmd, options), transport, options, stdin))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stdout_and_stderr_stay_apart(env: PodsEnv, container: str, transport: str) -> None:
    out, err, code = execute(env, container, transport,
                             ["sh", "-c", "echo out; echo err >&2; echo more"])
    assert (out, err, code) == (b"out\nmore\n", b"err\n", 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_has_the_umask_exec_sync_has(env: PodsEnv, container: str, transport: str
                                          ) -> None:
    # The daemon's own umask is 077; commands get the usual 022, streamed or not, with a
    # tty or without.
    synced = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container, cmd=["sh", "-c", "umask"], timeout=30))
    assert synced.stdout == b"0022\n"
    assert execute(env, container, transport, ["sh", "-c", "umask"]) == (b"0022\n", b"", 0)
    options = StreamOptions(stderr=False, tty=True)
    out, _, code = asyncio.run(run(exec_url(env, container, ["sh", "-c", "umask"], options),
                                   transport, options))
    # Line endings on a terminal depend on whose ONLCR runs first (runc copies the output
    # before it makes crisp's side raw), so only the text counts here.
    assert (out.replace(b"\r", b""), code) == (b"0022\n", 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [0, 1, 137])
def test_exit_codes(env: PodsEnv, container: str, transport: str, code: int) -> None:
    script = "kill -9 $$" if code == 137 else f"exit {code}"
    assert execute(env, container, transport, ["sh", "-c", script])[2] == code


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_50_mib_through_stdin_and_back(env: PodsEnv, container: str, transport: str) -> None:
    data = os.urandom(50 * 1024 * 1024)
    out, err, code = execute(env, container, transport, ["cat"], stdin=data)
    assert code == 0, err
    assert len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


async def read_until(command: RemoteCommand, marker: bytes, seen: bytearray,
                     seconds: float = 15) -> None:
    async with asyncio.timeout(seconds):
        while marker not in seen:
            chunk = await command.read_stdout()
            if not chunk:
                raise AssertionError(f"output ended before {marker!r}: {bytes(seen)!r}")
            seen.extend(chunk)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_interactive_shell_with_a_terminal_and_a_resize(env: PodsEnv, container: str,
                                                        transport: str) -> None:
    options = StreamOptions(stdin=True, stdout=True, stderr=False, tty=True)
    url = exec_url(env, container, ["sh"], options)

    async def session() -> tuple[bytes, int]:
        seen = bytearray()
        async with await open_command(url, options, transport) as command:
            await command.resize(77, 33)
            await read_until(command, b"# ", seen)
            await command.write_stdin(b"echo $((6*7))done\r")
            await read_until(command, b"42done", seen)
            await command.resize(101, 44)
            await asyncio.sleep(0.3)
            await command.write_stdin(b"stty size\r")
            await read_until(command, b"44 101", seen)
            await command.write_stdin(b"exit 3\r")
            return bytes(seen), await command.wait()

    seen, code = asyncio.run(session())
    assert b"42done" in seen
    assert code == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_input_sent_at_once_is_echoed_once(env: PodsEnv, container: str, transport: str
                                           ) -> None:
    # Typed before runc has made crisp's own terminal raw, input was echoed by that terminal
    # as well as by the container's (crictl under script(1) showed a NUL it sent as ^@^@).
    options = StreamOptions(stdin=True, stdout=True, stderr=False, tty=True)
    url = exec_url(env, container, ["sh", "-c", "sleep 1"], options)

    async def session() -> tuple[bytes, int]:
        seen = bytearray()
        async with await open_command(url, options, transport) as command:
            await command.write_stdin(b"early")
            while data := await command.read_stdout():
                seen.extend(data)
            return bytes(seen), await command.wait()

    seen, code = asyncio.run(session())
    assert (seen, code) == (b"early", 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_are_single_use_and_expire(env: PodsEnv, container: str, transport: str
                                          ) -> None:
    options = StreamOptions()
    url = exec_url(env, container, ["true"], options)
    assert asyncio.run(run(url, transport, options))[2] == 0
    with pytest.raises(TokenRejected):
        asyncio.run(run(url, transport, options))
    marker = f"/tmp/expired-{transport}"
    expired = exec_url(env, container, ["touch", marker], options)
    time.sleep(2.3)  # the module's daemon gives tokens 2 seconds
    with pytest.raises(TokenRejected):
        asyncio.run(run(expired, transport, options))
    assert execute(env, container, transport, ["test", "-e", marker])[2] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_disconnects_leaves_no_process(env: PodsEnv, container: str,
                                                     transport: str) -> None:
    marker = f"{2000 + TRANSPORTS.index(transport)}.{os.getpid()}"
    options = StreamOptions(stdin=True)
    url = exec_url(env, container, ["sleep", marker], options)

    async def session() -> None:
        command = await open_command(url, options, transport)
        try:
            await command.write_stdin(b"x")
            await asyncio.to_thread(wait_for, lambda: sleepers(marker), 10,
                                    "the exec'd sleep to start")
        finally:
            await command.close()

    asyncio.run(session())
    wait_for(lambda: not sleepers(marker), 10, "the exec'd sleep to be killed")


def runc_execs(container: str) -> list[int]:
    """``runc exec`` processes running in ``container``."""
    return processes(lambda cmdline: cmdline[0].endswith(b"runc") and b"exec" in cmdline
                     and container.encode() in cmdline)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_leaves_at_once_leaves_no_process(env: PodsEnv, container: str,
                                                        transport: str) -> None:
    # It leaves while runc is still starting the command, before runc wrote its pid: the
    # server must wait for that pid rather than leave the command running.
    marker = f"{3000 + TRANSPORTS.index(transport)}.{os.getpid()}"
    options = StreamOptions(stdin=True)
    url = exec_url(env, container, ["sleep", marker], options)

    async def session() -> None:
        command = await open_command(url, options, transport)
        await command.close()

    asyncio.run(session())
    wait_for(lambda: not runc_execs(container), 20, "the server to be done with runc")
    time.sleep(0.2)
    assert not sleepers(marker), "the exec'd command outlived a client that left"


@pytest.fixture(scope="module")
def web(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    script = ("mkdir -p /www /www2 && echo first > /www/index.html && "
              "echo second > /www2/index.html && httpd -p 8080 -h /www && "
              "httpd -p 8081 -h /www2 && sleep 3600")
    env.run_container(pod_id, env.container_config("web", ["sh", "-c", script]))
    yield pod_id
    env.remove_pod(pod_id)


async def http_get(forward: PortForward, port: int) -> tuple[bytes, str]:
    connection = await forward.connect(port)
    await connection.write(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
    answer = bytearray()
    while chunk := await connection.read():
        answer.extend(chunk)
    return bytes(answer), await connection.error()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_two_ports_and_a_refused_one(env: PodsEnv, web: str, transport: str
                                                  ) -> None:
    def url() -> str:
        return str(env.runtime.PortForward(cri_pb2.PortForwardRequest(
            pod_sandbox_id=web, port=[8080, 8081, 9999])).url)

    async def session() -> None:
        async with await PortForward.open(url(), transport) as forward:
            for _ in range(50):  # httpd starts with the container
                answer, error = await http_get(forward, 8080)
                if answer:
                    break
                await asyncio.sleep(0.2)
            first, second = await asyncio.gather(http_get(forward, 8080),
                                                 http_get(forward, 8081))
            assert first[0].endswith(b"first\n") and first[1] == "", first
            assert second[0].endswith(b"second\n") and second[1] == "", second
            answer, error = await http_get(forward, 9999)
            assert answer == b"" and "9999" in error and "refused" in error.lower(), error
            # The session goes on after a refused connection.
            assert (await http_get(forward, 8081))[0].endswith(b"second\n")

    asyncio.run(session())

    async def through_a_local_port() -> bytes:
        async with await PortForward.open(url(), transport) as forward:
            server = await forward.serve_local(("127.0.0.1", 0), 8080)
            local = server.sockets[0].getsockname()[1]
            async with server:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                return answer

    assert asyncio.run(through_a_local_port()).endswith(b"first\n")


async def channel_get(forward: ChannelPortForward, port: int) -> bytes:
    connection = forward.connection(port)
    await connection.write(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
    answer = bytearray()
    while chunk := await connection.read():
        answer.extend(chunk)
    return bytes(answer)


@pytest.mark.parametrize(("base64_text", "in_request"), [(False, False), (True, True)],
                         ids=["binary-query-ports", "base64-request-ports"])
def test_port_forward_over_the_websocket_channel_protocol(env: PodsEnv, web: str,
                                                          base64_text: bool, in_request: bool
                                                          ) -> None:
    def url(ports: list[int]) -> str:
        # Without ports in the request the channel protocol takes them from ?port=N.
        return str(env.runtime.PortForward(cri_pb2.PortForwardRequest(
            pod_sandbox_id=web, port=ports if in_request else [])).url)

    async def session() -> None:
        for _ in range(50):  # httpd starts with the container
            async with await ChannelPortForward.open(url([8080]), [8080],
                                                     base64_text) as forward:
                if await asyncio.wait_for(channel_get(forward, 8080), 10):
                    break
            await asyncio.sleep(0.2)
        ports = [8080, 8081, 9999]
        async with await ChannelPortForward.open(url(ports), ports, base64_text) as forward:
            first, second, refused = await asyncio.wait_for(asyncio.gather(
                channel_get(forward, 8080), channel_get(forward, 8081),
                forward.connection(9999).read()), 20)
            assert first.endswith(b"first\n"), first
            assert second.endswith(b"second\n"), second
            assert refused == b""
            error = await forward.connection(9999).error()
            assert "9999" in error and "refused" in error.lower(), error
            assert await forward.connection(8080).error() == ""
            assert await forward.connection(8081).error() == ""

    asyncio.run(session())


def test_port_forward_channel_protocol_refusals(env: PodsEnv, web: str) -> None:
    def url() -> str:
        return str(env.runtime.PortForward(cri_pb2.PortForwardRequest(pod_sandbox_id=web)).url)

    async def refused() -> None:
        with pytest.raises(StreamClientError, match="400"):
            await ChannelPortForward.open(url(), [])
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(url() + "?port=8080", protocols=("portforward.k8s.io",))
            assert caught.value.status == 403

    asyncio.run(refused())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_token_is_single_use(env: PodsEnv, web: str, transport: str) -> None:
    url = str(env.runtime.PortForward(cri_pb2.PortForwardRequest(pod_sandbox_id=web)).url)

    async def twice() -> None:
        async with await PortForward.open(url, transport):
            pass
        with pytest.raises(TokenRejected):
            await PortForward.open(url, transport)

    asyncio.run(twice())


def test_exec_into_a_container_started_before_a_restart(env: PodsEnv) -> None:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config("survivor",
                                                                  ["sleep", "3600"]))
    try:
        env.daemon.restart()
        for transport in TRANSPORTS:
            out, err, code = execute(env, container_id, transport, ["echo", "still here"])
            assert (out, code) == (b"still here\n", 0), err
    finally:
        env.remove_pod(pod_id)
