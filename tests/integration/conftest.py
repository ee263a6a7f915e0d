"""Fixtures for integration tests: real crisp daemons on temporary roots and sockets."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import CrispDaemon
from tests.support.registry import BusyboxRegistry, busybox_registry

DaemonFactory = Callable[..., CrispDaemon]


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start crisp daemons with extra TOML config; each is stopped when the test ends."""
    started: list[CrispDaemon] = []

    def make(config: str = "", *, start: bool = True, name: str = "crisp") -> CrispDaemon:
        base = tmp_path / name
        base.mkdir()
        daemon = CrispDaemon(base, config)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def crisp_daemon() -> Iterator[CrispDaemon]:
    """One daemon shared by the tests of a module, on default settings."""
    with tempfile.TemporaryDirectory(prefix="crisp-test-") as base:
        daemon = CrispDaemon(Path(base)).start()
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture(scope="session")
def registry_busybox() -> Iterator[BusyboxRegistry]:
    """A docker-registry on 127.0.0.1 serving busybox as ``<host>/test/busybox:latest``.

    ``.reference`` is the full reference, ``.image_id`` the id crisp reports after a pull.
    """
    with busybox_registry() as served:
        yield served
