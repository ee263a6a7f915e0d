"""The registry helper: pulls speak HTTP in a short-lived process, never in the daemon.

Real daemons pull from a real docker-registry (behind a throttling proxy where a download must
be caught mid-blob); the helper is found among the daemon's children by its command line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.integration.conftest import DaemonFactory
from tests.support import image_builder as ib
from tests.support.daemon import CrispDaemon
from tests.support.pods import children, wait_for
from tests.support.registry import (
    BusyboxRegistry,
    FlakyProxy,
    Registry,
    assert_pull_resumes,
    pull_until_partial,
    running_registry,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root"),
]

BIG = 8 << 20
# shared objects of the HTTP client: mapped into a process once aiohttp is imported
HTTP_CLIENT_FILES = ("/aiohttp/", "/multidict/", "/yarl/")


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[Registry, ib.Image]]:
    image = ib.build_image([ib.make_layer(ib.LayerBuilder().file("big", os.urandom(BIG)),
                                          compression="none")])
    with running_registry() as registry:
        ib.push_image(registry.url, "test/big", "latest", image)
        yield registry, image


def remove(daemon: CrispDaemon, reference: str) -> None:
    daemon.images.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=reference)),
                              timeout=30)


def helpers(daemon_pid: int) -> list[int]:
    """The registry helpers the daemon runs now."""
    return children(daemon_pid, lambda cmdline: b"registry-helper" in cmdline)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_pull_leaves_no_http_client_in_the_daemon(
        make_daemon: DaemonFactory, registry_busybox: BusyboxRegistry) -> None:
    daemon = make_daemon()
    assert daemon.process is not None
    assert daemon.pull(registry_busybox.reference) == registry_busybox.image_id
    [helper] = helpers(daemon.process.pid)  # the pull went through it ...
    daemon_maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert [f for f in HTTP_CLIENT_FILES if f in daemon_maps] == []  # ... and not the daemon
    helper_maps = Path(f"/proc/{helper}/maps").read_text()
    assert "/aiohttp/" in helper_maps  # the check can see a loaded aiohttp
    daemon.stop()
    wait_for(lambda: gone(helper), 5, "the helper ended with the daemon")


def test_an_idle_helper_exits_and_the_next_pull_starts_one(
        make_daemon: DaemonFactory, registry_busybox: BusyboxRegistry) -> None:
    daemon = make_daemon("[images]\nregistry_helper_idle = 3.0\n")
    assert daemon.process is not None
    daemon.pull(registry_busybox.reference)
    [first] = helpers(daemon.process.pid)
    wait_for(lambda: gone(first), 15, "the idle helper exited")
    assert helpers(daemon.process.pid) == []
    remove(daemon, registry_busybox.reference)
    assert daemon.pull(registry_busybox.reference) == registry_busybox.image_id
    [second] = helpers(daemon.process.pid)
    assert second != first
    daemon.kill()  # a daemon killed outright: the helper's stdin ends, and so does it
    wait_for(lambda: gone(second), 5, "the helper ended with the killed daemon")


async def test_a_helper_killed_mid_blob_fails_the_pull_and_the_next_resumes(
        make_daemon: DaemonFactory, big: tuple[Registry, ib.Image]) -> None:
    registry, image = big
    layer = image.layers[0]
    proxy = FlakyProxy(registry.url, drops=0)
    proxy.throttle = 0.02  # about 3 MB/s: the kill comes mid-blob
    await proxy.start()
    try:
        reference = f"{proxy.host}/test/big:latest"
        daemon = make_daemon()
        assert daemon.process is not None
        partial = daemon.root / "content" / "ingest" / layer.digest.removeprefix("sha256:")
        pulling = await pull_until_partial(daemon, reference, partial)
        [helper] = helpers(daemon.process.pid)
        os.kill(helper, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as error:
            await pulling
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        details: str = error.value.details()  # type: ignore[attr-defined]
        assert f"registry helper process (pid {helper}) was killed by SIGKILL" in details
        # the partial is kept, as after a crash of crisp, and the next pull resumes it
        await assert_pull_resumes(daemon, proxy, reference, layer.digest, len(layer.data),
                                  partial, image.id)
    finally:
        await proxy.stop()
