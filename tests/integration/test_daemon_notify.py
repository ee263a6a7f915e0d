"""The daemon tells systemd (``$NOTIFY_SOCKET``) when it serves CRI and when it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from tests.integration.conftest import DaemonFactory
from tests.support.daemon import checkout_env


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket as systemd's, at a short path (sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="crisp-notify-") as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(Path(directory) / "notify"))
        sock.settimeout(30)
        try:
            yield sock
        finally:
            sock.close()


def test_ready_once_serving_and_stopping_on_shutdown(
    make_daemon: DaemonFactory, notify_socket: socket.socket
) -> None:
    daemon = make_daemon(start=False)
    daemon.env["NOTIFY_SOCKET"] = notify_socket.getsockname()
    daemon.start(wait=False)
    ready = notify_socket.recv(4096).decode().splitlines()
    assert "READY=1" in ready
    assert any(line.startswith("STATUS=serving CRI on ") for line in ready)
    # READY=1 means CRI is served: the first call after it answers without retrying.
    assert daemon.runtime.Version(cri_pb2.VersionRequest(), timeout=5).runtime_name == "crisp"
    assert daemon.stop() == 0
    assert "STOPPING=1" in notify_socket.recv(4096).decode().splitlines()


def test_an_abstract_notify_socket_works_too(make_daemon: DaemonFactory) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0crisp-notify-test-" + str(id(sock)))
        sock.settimeout(30)
        daemon = make_daemon(start=False)
        daemon.env["NOTIFY_SOCKET"] = "@" + sock.getsockname()[1:].decode()
        daemon.start(wait=False)
        assert "READY=1" in sock.recv(4096).decode().splitlines()


def test_daemonize_returns_once_serving_with_a_pid_file(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(start=False)
    pid_file = daemon.base / "crisp.pid"
    command = [sys.executable, "-m", "crisp", "daemon", "--config", str(daemon.config_path),
               "--daemonize", "--pid-file", str(pid_file), "--log-file", str(daemon.log_path)]
    started = subprocess.run(command, env=checkout_env(), capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, started.stderr + daemon.log()
    assert "started in the background" in started.stdout
    pid = int(pid_file.read_text())
    try:
        # Serving already when the command returned: no retry needed.
        assert daemon.runtime.Version(cri_pb2.VersionRequest(), timeout=5).runtime_name
        # A second one is refused by the lock and leaves the first one's pid file alone.
        again = subprocess.run(command, env=checkout_env(), capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 1 and "exited before it served CRI" in again.stderr
        assert pid_file.read_text().strip() == str(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()
    assert "could not notify" not in daemon.log()


def test_daemonize_reports_a_daemon_that_cannot_start(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('default_runtime = "runc"\n', start=False)
    daemon.socket.parent.mkdir(parents=True, exist_ok=True)
    blocker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a live socket of another
    blocker.bind(str(daemon.socket))
    blocker.listen()
    try:
        started = subprocess.run(
            [sys.executable, "-m", "crisp", "--config", str(daemon.config_path), "--daemonize",
             "--log-file", str(daemon.log_path)],
            env=checkout_env(), capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert started.returncode == 1
    assert "exited before it served CRI" in started.stderr
