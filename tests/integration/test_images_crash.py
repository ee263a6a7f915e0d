"""Crash safety of pulls: crisp SIGKILLed mid-download or between unpack and record.

A download cut off by a crash resumes from the bytes on disk (a Range request) and is verified
whole; a layer unpacked but not yet recorded is not taken as ready, and the next pull redoes it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator

import grpc
import pytest

from tests.integration.conftest import DaemonFactory
from tests.support import image_builder as ib
from tests.support.daemon import CrispDaemon
from tests.support.registry import (
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


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Registry, ib.Image, ib.Image]]:
    busybox = ib.busybox_image()
    big = ib.build_image([ib.make_layer(ib.LayerBuilder().file("big", os.urandom(BIG)),
                                        compression="none")])
    with running_registry() as registry:
        ib.push_image(registry.url, "test/busybox", "latest", busybox)
        ib.push_image(registry.url, "test/big", "latest", big)
        yield registry, busybox, big


def layer_dirs(daemon: CrispDaemon) -> list[str]:
    return sorted(p.name for p in (daemon.root / "layers").iterdir() if len(p.name) == 64)


def test_crash_between_unpack_and_record_leaves_no_ready_layer(
        make_daemon: DaemonFactory, served: tuple[Registry, ib.Image, ib.Image]) -> None:
    registry, busybox, _ = served
    reference = f"{registry.host}/test/busybox:latest"
    daemon = make_daemon(start=False)
    os.environ["CRISP_FAILPOINTS"] = "layer.unpacked"
    try:
        daemon.start()
    finally:
        del os.environ["CRISP_FAILPOINTS"]
    with pytest.raises(grpc.RpcError) as error:
        daemon.pull(reference)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert daemon.process is not None
    daemon.process.wait(timeout=10)
    assert layer_dirs(daemon) == [busybox.layers[0].diff_id.removeprefix("sha256:")]
    daemon.kill()
    daemon.start()
    # the unrecorded layer is swept at start-up, not taken as ready
    assert layer_dirs(daemon) == []
    assert daemon.pull(reference) == busybox.id
    assert re.search(r"ready \(\d+ bytes, \d+ unpacked", daemon.log())  # unpacked again
    assert layer_dirs(daemon) == [busybox.layers[0].diff_id.removeprefix("sha256:")]


async def test_download_cut_off_by_a_crash_resumes_after_restart(
        make_daemon: DaemonFactory, served: tuple[Registry, ib.Image, ib.Image]) -> None:
    registry, _, big = served
    layer = big.layers[0]
    proxy = FlakyProxy(registry.url, drops=0)
    proxy.throttle = 0.02  # about 3 MB/s: the crash comes mid-blob
    await proxy.start()
    try:
        reference = f"{proxy.host}/test/big:latest"
        daemon = make_daemon()
        partial = daemon.root / "content" / "ingest" / layer.digest.removeprefix("sha256:")
        pulling = await pull_until_partial(daemon, reference, partial)
        assert daemon.process is not None
        daemon.process.kill()  # before the channel closes: a crash, not a cancelled call
        await asyncio.to_thread(daemon.kill)
        with pytest.raises(grpc.RpcError):
            await pulling
        await asyncio.to_thread(daemon.start)
        await assert_pull_resumes(daemon, proxy, reference, layer.digest, len(layer.data),
                                  partial, big.id)
    finally:
        await proxy.stop()


async def test_partial_that_does_not_match_is_discarded(
        make_daemon: DaemonFactory, served: tuple[Registry, ib.Image, ib.Image]) -> None:
    registry, _, big = served
    layer = big.layers[0]
    proxy = FlakyProxy(registry.url, drops=0)
    await proxy.start()
    try:
        daemon = make_daemon(start=False)
        ingest = daemon.root / "content" / "ingest"
        ingest.mkdir(parents=True)
        # a partial a power loss left with garbage in it: the resumed whole cannot verify
        (ingest / layer.digest.removeprefix("sha256:")).write_bytes(b"\0" * (1 << 20))
        await asyncio.to_thread(daemon.start)
        assert await asyncio.to_thread(daemon.pull, f"{proxy.host}/test/big:latest") == big.id
        assert proxy.range_requests == 1
        assert "downloading it again from the start" in daemon.log()
        assert list(ingest.iterdir()) == []
    finally:
        await proxy.stop()
