"""The daemon tells systemd (``$NOTIFY_SOCKET``) when it serves CRI and when it stops."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from tests.integration.conftest import DaemonFactory


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
