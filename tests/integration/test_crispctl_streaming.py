"""crispctl exec, attach and port-forward as a subprocess against a real daemon."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import checkout_env
from tests.support.pods import PodsEnv, pods_environment, wait_for

pytestmark = pytest.mark.integration

TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-ctlstream-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def container(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "shell", ["sh", "-c", "sleep 3600"]))
    yield container_id
    env.remove_pod(pod_id)


def argv(env: PodsEnv, *args: str) -> list[str]:
    return [sys.executable, "-c", "from crisp.cli.client import main; raise SystemExit(main())",
            "--runtime-endpoint", f"unix://{env.daemon.socket}", *args]


def crispctl(env: PodsEnv, *args: str, stdin: bytes | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv(env, *args), input=stdin, capture_output=True, timeout=timeout,
                          env=checkout_env(),
                          stdin=None if stdin is not None else subprocess.DEVNULL)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [0, 1, 137])
def test_exec_exit_code_is_crispctls(env: PodsEnv, container: str, transport: str, code: int
                                     ) -> None:
    script = "kill -9 $$" if code == 137 else f"echo out; echo err >&2; exit {code}"
    result = crispctl(env, "exec", "--transport", transport, container, "--", "sh", "-c",
                      script)
    assert result.returncode == code, result.stderr
    if code != 137:
        assert result.stdout == b"out\n"
        assert result.stderr == b"err\n"


def test_exec_sync(env: PodsEnv, container: str) -> None:
    result = crispctl(env, "exec", "--sync", container, "--", "sh", "-c",
                      "echo out; echo err >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"out\n", b"err\n")
    refused = crispctl(env, "exec", "--sync", "-t", container, "--", "true")
    assert refused.returncode == 2 and b"--sync" in refused.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin(env: PodsEnv, container: str, transport: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    result = crispctl(env, "exec", "-i", "--transport", transport, container, "--", "cat",
                      stdin=data, timeout=120)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def in_terminal(command: list[str], steps: list[tuple[bytes, bytes | tuple[int, int]]],
                timeout: float = 30, poke: bytes = b"") -> tuple[bytes, int]:
    """Run ``command`` on a pty; after each expected output send keys or resize (rows, cols).

    ``poke`` goes every second until the first expected output shows (attach sees no output
    from before it connected, so a prompt has to be asked for again).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                               env=checkout_env(), preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    pending = list(steps)
    deadline = time.monotonic() + timeout
    poked = 0.0
    try:
        while time.monotonic() < deadline:
            if poke and len(pending) == len(steps) and time.monotonic() - poked > 1:
                os.write(master, poke)
                poked = time.monotonic()
            while pending and pending[0][0] in seen:
                action = pending.pop(0)[1]
                if isinstance(action, tuple):
                    # The kernel sends crispctl SIGWINCH, as a terminal emulator's resize does.
                    fcntl.ioctl(master, termios.TIOCSWINSZ,
                                struct.pack("HHHH", action[0], action[1], 0, 0))
                    time.sleep(0.5)
                else:
                    os.write(master, action)
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        return seen, process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_it_shell_follows_the_window(env: PodsEnv, container: str, transport: str
                                          ) -> None:
    seen, code = in_terminal(argv(env, "exec", "-it", "--transport", transport, container,
                                  "--", "sh"), [
        (b"# ", b"echo $((6*7))done\r"),
        (b"42done", (31, 97)),
        (b"42done", b"stty size\r"),
        (b"31 97", b"exit 5\r"),
    ])
    assert b"42done" in seen, seen
    assert b"31 97" in seen, seen
    assert code == 5, seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_to_an_interactive_container(env: PodsEnv, transport: str) -> None:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "interactive", ["sh"], stdin=True, tty=True))
    try:
        seen, _ = in_terminal(argv(env, "attach", "-it", "--transport", transport,
                                   container_id), [
            (b"# ", b"echo $((6*7))done\r"),
            (b"42done", b"exit\r"),
        ], poke=b"\r")
        assert b"42done" in seen, seen
        env.wait_exited(container_id)
    finally:
        env.remove_pod(pod_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward(env: PodsEnv, transport: str) -> None:
    pod_id = env.run_pod()
    script = ("mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www && "
              "sleep 3600")
    env.run_container(pod_id, env.container_config("web", ["sh", "-c", script]))
    local, refused = free_port(), free_port()
    channel_sessions = env.daemon.log().count("over the WebSocket channel protocol")
    client = subprocess.Popen(argv(env, "port-forward", "--transport", transport, pod_id,
                                   f"{local}:8080", f"{refused}:9999"),
                              env=checkout_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def get(port: int) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                return bytes(answer.read())

        def ready() -> bool:
            try:
                return get(local) == b"hello\n"
            except OSError:
                return False

        wait_for(ready, 20, "the forwarded httpd")
        with pytest.raises(OSError):
            get(refused)
        assert get(local) == b"hello\n"  # the session goes on
        client.terminate()
        stdout, stderr = client.communicate(timeout=10)
        assert client.returncode == 0, stderr
        assert b"-> 8080" in stdout
        assert b"9999" in stderr and b"refused" in stderr.lower(), stderr
        # spdy: one SPDY session for everything; websocket: the kubelet's channel protocol,
        # a session for each connection (the refused one included).
        sessions = env.daemon.log().count("over the WebSocket channel protocol")
        if transport == "websocket":
            assert sessions - channel_sessions >= 3
        else:
            assert sessions == channel_sessions
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        env.remove_pod(pod_id)


def test_exec_needs_a_command(env: PodsEnv, container: str) -> None:
    result = crispctl(env, "exec", container)
    assert result.returncode == 2
    assert b"CMD" in result.stderr

