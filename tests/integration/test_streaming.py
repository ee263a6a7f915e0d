"""Exec over the streaming server, driven by crictl (SPDY and WebSocket) on a real daemon."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pty
import select
import socket
import struct
import subprocess
import tempfile
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, pods_environment, sleepers, wait_for

pytestmark = pytest.mark.integration

CRICTL = "/usr/local/bin/crictl"


def _crictl() -> str:
    """crictl is built in a developer's session from cri-tools and never installed by CI:
    without it the tests it drives skip (the unit tests still cover the protocols)."""
    if not os.access(CRICTL, os.X_OK):
        pytest.skip(f"{CRICTL} is not installed: build crictl from cri-tools to run this")
    return CRICTL
TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-stream-") as base, \
            pods_environment(Path(base), '[streaming]\ntoken_ttl = 2.0\n') as environment:
        yield environment


@pytest.fixture(scope="module")
def container(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "shell", ["sh", "-c", "sleep 3600"],
        envs=[cri_pb2.KeyValue(key="GREETING", value=b"hello")], working_dir="/tmp"))
    yield container_id
    env.remove_pod(pod_id)


def crictl(env: PodsEnv, *args: str, stdin: bytes | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "--timeout", "10s",
         *args], input=stdin, capture_output=True, timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_keeps_stdout_and_stderr_apart_with_the_containers_env(
        env: PodsEnv, container: str, transport: str) -> None:
    result = crictl(env, "exec", "--transport", transport, container, "sh", "-c",
                    'echo "$GREETING from $(pwd)"; echo oops >&2')
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from /tmp\n"
    assert b"oops\n" in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [0, 1, 137])
def test_exec_exit_codes_become_crictls(env: PodsEnv, container: str, transport: str,
                                        code: int) -> None:
    script = "kill -9 $$" if code == 137 else f"exit {code}"
    result = crictl(env, "exec", "--transport", transport, container, "sh", "-c", script)
    # crictl reports a streamed exit code in its message and exits 1 itself.
    if code == 0:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert f"command terminated with exit code {code}".encode() in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_50_mib_round_trip(env: PodsEnv, container: str, transport: str) -> None:
    data = os.urandom(50 * 1024 * 1024)
    result = crictl(env, "exec", "-i", "--transport", transport, container, "cat",
                    stdin=data, timeout=120)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_exec_url_rejects_bad_requests(env: PodsEnv, container: str) -> None:
    for request, code in [
        (cri_pb2.ExecRequest(container_id=container, cmd=["true"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id=container, cmd=["true"], tty=True, stdout=True,
                             stderr=True), grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id=container, cmd=[], stdout=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id="nonexistent", cmd=["true"], stdout=True),
         grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            env.runtime.Exec(request)
        assert error.value.code() == code


def exec_url(env: PodsEnv, container: str, cmd: list[str]) -> str:
    return str(env.runtime.Exec(cri_pb2.ExecRequest(container_id=container, cmd=cmd,
                                                    stdout=True)).url)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""),
                                    timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_tokens_are_single_use_and_expire(env: PodsEnv, container: str) -> None:
    url = exec_url(env, container, ["touch", "/tmp/ran"])
    assert url.startswith("http://127.0.0.1:")
    assert http_status(url) == 400  # spent, though no upgrade was asked for
    assert http_status(url) == 404
    assert http_status(url.rsplit("/", 1)[0] + "/guessed") == 404
    expired = exec_url(env, container, ["touch", "/tmp/ran"])
    time.sleep(2.2)  # the module's daemon gives tokens 2 seconds
    result = crictl(env, "exec", container, "ls", "/tmp")
    assert b"ran" not in result.stdout
    assert http_status(expired) == 404


def run_in_terminal(argv: list[str], keys: list[tuple[bytes, bytes]], rows: int, cols: int,
                    timeout: float = 20, poke: bytes = b"") -> tuple[bytes, int]:
    """Run ``argv`` on a new pty of the given size; send each key after its expected output.

    ``poke`` is sent every second until the first expected output shows (attach sees no
    output from before it connected, so a prompt has to be asked for again).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                               preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    pending = list(keys)
    poked = 0.0
    try:
        while time.monotonic() < deadline:
            if poke and len(pending) == len(keys) and time.monotonic() - poked > 1:
                os.write(master, poke)
                poked = time.monotonic()
            if pending and pending[0][0] in seen:
                os.write(master, pending.pop(0)[1])
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None and not pending:
                break
        return seen, process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_interactive_shell_with_a_terminal(env: PodsEnv, container: str, transport: str
                                           ) -> None:
    argv = [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "exec", "-it",
            "--transport", transport, container, "sh"]
    seen, code = run_in_terminal(argv, [
        (b"# ", b"stty size; echo $((6*7))done\r"),
        (b"42done", b"exit 3\r"),
    ], rows=33, cols=77)
    assert b"33 77" in seen, seen
    assert b"42done" in seen, seen
    assert b"exit code 3" in seen, seen
    assert code != 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_leaves_leaves_no_process(env: PodsEnv, container: str, transport: str
                                                ) -> None:
    marker = f"{1000 + TRANSPORTS.index(transport)}.{os.getpid()}"
    client = subprocess.Popen(
        [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "exec", "-i",
         "--transport", transport, container, "sleep", marker],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: sleepers(marker), 10, "the exec'd sleep to start")
    client.kill()
    client.wait()
    wait_for(lambda: not sleepers(marker), 10, "the exec'd sleep to be killed")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_shows_the_containers_output_apart(env: PodsEnv, transport: str) -> None:
    pod_id = env.run_pod()
    script = "i=0; while true; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.2; done"
    container_id = env.run_container(pod_id,
                                     env.container_config("talker", ["sh", "-c", script]))
    try:
        client = subprocess.Popen(
            [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "attach",
             "--transport", transport, container_id],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id,
                                                               timeout=0))
        stdout, stderr = client.communicate(timeout=20)
        assert client.returncode == 0, stderr
        assert b"out" in stdout and b"err" not in stdout
        assert b"err" in stderr
    finally:
        env.remove_pod(pod_id)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_to_an_interactive_container_with_a_terminal(env: PodsEnv, transport: str
                                                            ) -> None:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "interactive", ["sh"], stdin=True, tty=True))
    try:
        argv = [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "attach", "-it",
                "--transport", transport, container_id]
        seen, _ = run_in_terminal(argv, [
            (b"# ", b"stty size; echo $((6*7))done\r"),
            (b"42done", b"exit\r"),
        ], rows=21, cols=63, poke=b"\r")
        assert b"42done" in seen, seen
        assert b"21 63" in seen, seen
        env.wait_exited(container_id)
    finally:
        env.remove_pod(pod_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_two_ports_and_a_refused_one(env: PodsEnv, transport: str) -> None:
    pod_id = env.run_pod()
    script = ("mkdir -p /www /www2 && echo first > /www/index.html && "
              "echo second > /www2/index.html && httpd -p 8080 -h /www && "
              "httpd -p 8081 -h /www2 && sleep 3600")
    env.run_container(pod_id, env.container_config("web", ["sh", "-c", script]))
    local = [free_port(), free_port(), free_port()]
    client = subprocess.Popen(
        [_crictl(), "--runtime-endpoint", f"unix://{env.daemon.socket}", "port-forward",
         "--transport", transport, pod_id,
         f"{local[0]}:8080", f"{local[1]}:8081", f"{local[2]}:9999"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def get(port: int) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                return bytes(answer.read())

        def ready() -> bool:
            try:
                return get(local[0]) == b"first\n"
            except OSError:
                return False

        wait_for(ready, 20, "the forwarded httpd")
        for _ in range(3):
            assert get(local[1]) == b"second\n"
            assert get(local[0]) == b"first\n"
        # Refused inside the pod: reported on that connection's error stream (crictl then
        # gives up the whole session, as kubectl port-forward does).
        with pytest.raises(OSError):
            get(local[2])
        _, stderr = client.communicate(timeout=20)
        assert b"9999" in stderr and b"refused" in stderr.lower(), stderr
    finally:
        client.kill()
        client.wait()
        env.remove_pod(pod_id)


def test_exec_into_a_container_started_before_a_restart(env: PodsEnv) -> None:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config("survivor",
                                                                  ["sleep", "3600"]))
    try:
        env.daemon.restart()
        for transport in TRANSPORTS:
            result = crictl(env, "exec", "--transport", transport, container_id,
                            "echo", "still here")
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"still here\n"
    finally:
        env.remove_pod(pod_id)


async def _exec_over_websocket(url: str, stdin: bytes | None) -> dict[int, bytes]:
    """A v5.channel.k8s.io client of our own (aiohttp): what each channel carried."""
    received: dict[int, bytes] = {}
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, protocols=["v5.channel.k8s.io"]) as ws:
        assert ws.protocol == "v5.channel.k8s.io"
        if stdin is not None:
            await ws.send_bytes(b"\x00" + stdin)
            await ws.send_bytes(b"\xff\x00")  # v5: close stdin
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY and message.data:
                channel, data = message.data[0], message.data[1:]
                received[channel] = received.get(channel, b"") + data
    return received


def test_exec_over_websocket_without_crictl(env: PodsEnv, container: str) -> None:
    """What CI can run without crictl: exec over v5.channel.k8s.io, output apart, stdin
    closed by the v5 signal, and the exit code in the status on the error channel."""
    url = env.runtime.Exec(cri_pb2.ExecRequest(
        container_id=container, stdin=True, stdout=True, stderr=True,
        cmd=["sh", "-c", "read line; echo \"out $line\"; echo err >&2; exit 3"])).url
    received = asyncio.run(_exec_over_websocket(url, b"hello\n"))
    assert received.get(1) == b"out hello\n"
    assert received.get(2) == b"err\n"
    status = json.loads(received[3])
    assert status["reason"] == "NonZeroExitCode", status
    assert status["details"]["causes"][0] == {"reason": "ExitCode", "message": "3"}
