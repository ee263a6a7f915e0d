"""Image removal, garbage collection, filesystem usage, snapshots, and the CRI servicer.

A registry per module serves a few images; each test has its own crisp root. The servicer
test runs a real grpc.aio server on a unix socket and talks CRI to it like crictl does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

import crisp.images.service as service_module
import crisp.storage.snapshots as snapshots_module
from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.config import Config, LiveConfig, PodConfig
from crisp.images import ImageService
from crisp.server.errors import ErrorLayer
from crisp.server.images import ImageServicer
from crisp.server.layers import layered
from crisp.state import Database
from crisp.storage.snapshots import USAGE_MAX_AGE_SECONDS
from tests.support import image_builder as ib
from tests.support.registry import Registry, running_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and mounting layers needs root"),
]

DEEP_LAYERS = 90


class Images:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.base = ib.make_layer(ib.busybox_rootfs())
        self.busybox = ib.build_image([self.base])
        self.app = ib.build_image([self.base, ib.make_layer(ib.LayerBuilder().file("app", "1"))])
        self.named_user = ib.busybox_image(ib.ImageConfig(user="nobody"))
        deep = [self.base] + [
            ib.make_layer(ib.LayerBuilder().file(f"layers/{i}", str(i)))
            for i in range(DEEP_LAYERS - 1)
        ]
        self.deep = ib.build_image(deep)

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}"


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    with running_registry() as registry:
        served = Images(registry)
        push = ib.RegistryPusher(registry.url)
        push.push("test/busybox", "latest", served.busybox)
        push.push("test/busybox", "stable", served.busybox)
        push.push("test/app", "latest", served.app)
        push.push("test/user", "latest", served.named_user)
        push.push("test/deep", "latest", served.deep)
        push.push("pause", "3.9", served.busybox)
        yield served


@pytest.fixture
async def service(tmp_path: Path, images: Images) -> AsyncIterator[ImageService]:
    root = tmp_path / "root"
    config = Config(root_dir=str(root), pod=PodConfig(pause_image=images.ref("pause:3.9")))
    db = await Database.open(root / "crisp.db")
    svc = ImageService(LiveConfig(config, None), db, root)
    await svc.start()
    try:
        yield svc
    finally:
        for key in await svc.snapshots.keys():
            await svc.snapshots.remove(key)
        await svc.close()
        await db.close()
        shutil.rmtree(root, ignore_errors=True)


async def sh(rootfs: Path, script: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, ["chroot", str(rootfs), "/bin/sh", "-c", script],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("how", ["id", "tag", "other-tag", "digest", "short-id"])
async def test_remove_takes_the_whole_image(service: ImageService, images: Images,
                                            how: str) -> None:
    await service.pull(images.ref("test/busybox:latest"))
    image = await service.pull(images.ref("test/busybox:stable"))
    reference = {
        "id": image.id,
        "tag": images.ref("test/busybox:latest"),
        "other-tag": images.ref("test/busybox:stable"),
        "digest": images.ref(f"test/busybox@{images.busybox.digest}"),
        "short-id": image.id[7:19],
    }[how]
    await service.remove(reference)
    assert await service.list() == []
    assert await service.status(images.ref("test/busybox:stable")) is None
    assert await service.content.digests() == set()
    assert await service.layers.all() == []
    await service.remove(reference)  # already gone: not an error
    await service.remove(image.id)


async def test_remove_keeps_layers_of_other_images(service: ImageService, images: Images) -> None:
    await service.pull(images.ref("test/busybox:latest"))
    app = await service.pull(images.ref("test/app:latest"))
    await service.remove(images.ref("test/busybox:latest"))
    assert [i.id for i in await service.list()] == [app.id]
    assert len(await service.layers.all()) == 2
    rootfs = await service.snapshots.prepare("c", await service.lower_dirs(app))
    assert await sh(rootfs, "cat /app; ls /bin/sh") == "1/bin/sh\n"


async def test_removing_an_image_in_use_keeps_its_container_working(
    service: ImageService, images: Images
) -> None:
    image = await service.pull(images.ref("test/app:latest"))
    rootfs = await service.snapshots.prepare("in-use", await service.lower_dirs(image))
    await service.remove(image.id)
    assert await service.list() == []
    assert await sh(rootfs, "cat /app; echo more > /tmp/x; cat /tmp/x") == "1more\n"
    # the container can even be mounted afresh after a restart of its rootfs
    await service.snapshots.unmount("in-use")
    rootfs = await service.snapshots.prepare("in-use", await service.lower_dirs(image))
    assert await sh(rootfs, "cat /tmp/x") == "more\n"
    await service.snapshots.remove("in-use")
    result = await service.collect_garbage()
    assert result.layers_removed == 2
    assert await service.layers.all() == []


async def test_gc_during_pulls_takes_nothing_they_need(service: ImageService,
                                                      images: Images) -> None:
    async def collect_repeatedly() -> None:
        for _ in range(20):
            await service.collect_garbage()
            await asyncio.sleep(0)

    pulled, _ = await asyncio.gather(
        asyncio.gather(*(service.pull(images.ref(name)) for name in
                         ("test/busybox:latest", "test/app:latest", "test/deep:latest"))),
        collect_repeatedly(),
    )
    for image in pulled:
        for layer in image.layers:
            assert service.content.has(layer.digest)
        for directory in await service.lower_dirs(image):
            assert directory.is_dir()
    assert (await service.collect_garbage()).blobs_removed == 0


async def test_deep_image_mounts_with_short_names(service: ImageService, images: Images) -> None:
    image = await service.pull(images.ref("test/deep:latest"))
    lowers = await service.lower_dirs(image)
    assert len(lowers) == DEEP_LAYERS
    rootfs = await service.snapshots.prepare("deep", lowers)
    assert await sh(rootfs, "ls /layers | wc -l") == f"{DEEP_LAYERS - 1}\n"


async def test_snapshot_usage_and_idempotent_cleanup(service: ImageService,
                                                     images: Images) -> None:
    image = await service.pull(images.ref("test/busybox:latest"))
    rootfs = await service.snapshots.prepare("u", await service.lower_dirs(image))
    before = await service.snapshots.usage("u")
    await sh(rootfs, "yes | head -c 524288 > /tmp/blob")
    after = await service.snapshots.usage("u")
    assert after[0] - before[0] >= 512 * 1024
    assert after[1] > before[1]
    assert await service.snapshots.prepare("u", await service.lower_dirs(image)) == rootfs
    await service.snapshots.unmount("u")
    await service.snapshots.unmount("u")
    await service.snapshots.remove("u")
    await service.snapshots.remove("u")
    assert not rootfs.exists()


async def test_filesystem_usage(service: ImageService, images: Images) -> None:
    empty = await service.filesystem_usage()
    await service.pull(images.ref("test/busybox:latest"))
    usage = await service.filesystem_usage()
    assert usage.images.used_bytes - empty.images.used_bytes > 1_000_000
    assert usage.images.inodes_used > empty.images.inodes_used
    assert usage.images.timestamp_ns > 0
    assert usage.containers.mountpoint.endswith("containers")


async def test_container_usage_counts_writable_layers_only(service: ImageService,
                                                           images: Images) -> None:
    image = await service.pull(images.ref("test/busybox:latest"))
    layer_bytes = sum(layer.size for layer in await service.layers.all())
    assert layer_bytes > 1_000_000
    for key in ("one", "two"):
        await service.snapshots.prepare(key, await service.lower_dirs(image))
    # The mounted rootfs shows the image's files: they are the image's, not the containers'.
    usage = await service.filesystem_usage()
    assert usage.containers.used_bytes < 100_000
    assert usage.containers.inodes_used >= 2  # the two upper directories

    rootfs = service.snapshots.root / "one" / "rootfs"
    (rootfs / "data").write_bytes(os.urandom(1 << 20))
    walked = await service.snapshots.usages(["one", "two", "never"], max_age=0.0)
    assert set(walked) == {"one", "two"}
    assert walked["one"][0] >= 1 << 20 and walked["one"][1] == walked["two"][1] + 1
    (rootfs / "more").write_bytes(os.urandom(1 << 20))
    # The polled calls take a figure up to max_age old; a fresh walk sees the new file.
    assert await service.snapshots.usages(["one"], max_age=60.0) == {"one": walked["one"]}
    assert (await service.snapshots.usage("one"))[0] >= walked["one"][0] + (1 << 20)
    assert (await service.snapshots.total_usage(max_age=0.0))[0] >= 2 << 20
    await service.snapshots.remove("one")
    assert set(await service.snapshots.usages(["one", "two"], max_age=60.0)) == {"two"}


async def test_filesystem_usage_answers_from_memory(service: ImageService,
                                                    images: Images,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageFsInfo never waits for a walk: stale figures are refreshed in the background."""
    image = await service.pull(images.ref("test/busybox:latest"))
    rootfs = await service.snapshots.prepare("one", await service.lower_dirs(image))
    before = await service.filesystem_usage()
    assert before.containers.inodes_used == 1  # the new upper directory, known at prepare

    walks: list[int] = []
    real = snapshots_module._walk_uppers

    def counting(uppers: dict[str, Path]) -> dict[str, tuple[int, int]]:
        walks.append(len(uppers))
        return real(uppers)

    monkeypatch.setattr(snapshots_module, "_walk_uppers", counting)
    monkeypatch.setattr(service_module, "disk_usage", None)  # no blob walk either
    (rootfs / "data").write_bytes(os.urandom(1 << 20))
    again = await service.filesystem_usage()
    assert (again.containers.used_bytes, again.images.used_bytes) == (
        before.containers.used_bytes, before.images.used_bytes)
    assert walks == []

    # Ten seconds on, the old figure is answered and a walk starts behind it.
    walked, figures = service.snapshots._usage["one"]
    service.snapshots._usage["one"] = (walked - USAGE_MAX_AGE_SECONDS, figures)
    stale = await service.filesystem_usage()
    assert stale.containers.used_bytes == before.containers.used_bytes
    assert service.snapshots._refresh is not None
    await service.snapshots._refresh
    assert walks == [1]
    fresh = await service.filesystem_usage()
    assert fresh.containers.used_bytes >= before.containers.used_bytes + (1 << 20)
    assert fresh.containers.inodes_used == 2


@pytest.fixture
async def cri(
    service: ImageService, tmp_path: Path
) -> AsyncIterator[cri_pb2_grpc.ImageServiceStub]:
    server = grpc.aio.server()
    cri_pb2_grpc.add_ImageServiceServicer_to_server(layered(
        ImageServicer(service), cri_pb2.DESCRIPTOR.services_by_name["ImageService"],
        [ErrorLayer(service.root)]), server)
    socket = tmp_path / "crisp.sock"
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{socket}")
    try:
        yield cri_pb2_grpc.ImageServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_cri_image_service(cri: cri_pb2_grpc.ImageServiceStub, images: Images) -> None:
    reference = images.ref("test/user:latest")
    spec = cri_pb2.ImageSpec(image=reference)
    pulled = await cri.PullImage(cri_pb2.PullImageRequest(image=spec))
    assert pulled.image_ref == images.named_user.id
    status = await cri.ImageStatus(cri_pb2.ImageStatusRequest(
        image=cri_pb2.ImageSpec(image=reference), verbose=True))
    assert status.image.id == images.named_user.id
    assert list(status.image.repo_tags) == [reference]
    assert status.image.username == "nobody"
    assert not status.image.HasField("uid")
    assert status.image.size > 1_000_000
    info = json.loads(status.info["info"])
    assert info["imageSpec"]["config"]["User"] == "nobody"

    pause = images.ref("pause:3.9")
    await cri.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=pause)))
    pause_status = await cri.ImageStatus(cri_pb2.ImageStatusRequest(
        image=cri_pb2.ImageSpec(image=pause)))
    assert pause_status.image.pinned
    assert pause_status.image.uid.value == 0 or not pause_status.image.HasField("uid")

    listed = await cri.ListImages(cri_pb2.ListImagesRequest())
    assert {i.id for i in listed.images} == {images.named_user.id, images.busybox.id}
    filtered = await cri.ListImages(cri_pb2.ListImagesRequest(
        filter=cri_pb2.ImageFilter(image=cri_pb2.ImageSpec(image=reference))))
    assert [i.id for i in filtered.images] == [images.named_user.id]

    fs = await cri.ImageFsInfo(cri_pb2.ImageFsInfoRequest())
    assert fs.image_filesystems[0].used_bytes.value > 1_000_000
    assert fs.image_filesystems[0].inodes_used.value > 0
    assert len(fs.container_filesystems) == 1

    await cri.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=reference)))
    await cri.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=reference)))
    missing = await cri.ImageStatus(cri_pb2.ImageStatusRequest(
        image=cri_pb2.ImageSpec(image=reference)))
    assert not missing.HasField("image")


async def test_cri_errors(cri: cri_pb2_grpc.ImageServiceStub, images: Images) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await cri.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image="Bad:Ref")))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await cri.ImageStatus(cri_pb2.ImageStatusRequest())
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image.image" in (empty.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await cri.PullImage(cri_pb2.PullImageRequest(
            image=cri_pb2.ImageSpec(image=images.ref("test/none:latest"))))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_start_cleans_what_a_crash_left(tmp_path: Path, images: Images) -> None:
    """Leftovers of a crash mid-pull or mid-removal are gone after the next start."""
    root = tmp_path / "root"
    config = LiveConfig(Config(root_dir=str(root)), None)
    db = await Database.open(root / "crisp.db")
    svc = ImageService(config, db, root)
    await svc.start()
    kept = await svc.pull(images.ref("test/busybox:latest"))
    app = await svc.pull(images.ref("test/app:latest"))
    await svc.store.delete(app.id)  # "crashed" after the record went, before collection
    (svc.content.ingest_dir / "half-downloaded").write_bytes(b"partial")
    staging = svc.layers.root / "tmp-crashed"
    (staging / "diff").mkdir(parents=True)
    orphan = svc.layers.root / ("ab" * 32)
    (orphan / "diff").mkdir(parents=True)
    await svc.close()
    await db.close()

    db = await Database.open(root / "crisp.db")
    svc = ImageService(config, db, root)
    await svc.start()
    try:
        assert list(svc.content.ingest_dir.iterdir()) == []
        assert not staging.exists() and not orphan.exists()
        assert await svc.content.digests() == kept.blobs()
        assert [layer.chain_id for layer in await svc.layers.all()] == kept.chain_ids
        [image] = await svc.list()
        assert image.id == kept.id
        rootfs = await svc.snapshots.prepare("after", await svc.lower_dirs(image))
        assert await sh(rootfs, "echo ok") == "ok\n"
    finally:
        for key in await svc.snapshots.keys():
            await svc.snapshots.remove(key)
        await svc.close()
        await db.close()
