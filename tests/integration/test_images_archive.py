"""Import and export through crispctl and the crisp.images.v1 service on a real socket.

Archives made by crisp are checked with skopeo (an independent reader of both formats),
and archives in docker-save and OCI layout form built by the tests are imported back.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2, cri_pb2_grpc, crisp_images_pb2, crisp_images_pb2_grpc
from crisp.cli.client import main as crispctl
from crisp.cli.images_commands import add_image_commands
from crisp.config import Config, LiveConfig
from crisp.images import ImageService
from crisp.server.errors import ErrorLayer
from crisp.server.images import CrispImagesServicer, ImageServicer
from crisp.server.layers import layered
from crisp.state import Database
from tests.support import image_builder as ib
from tests.support.daemon import CrispDaemon
from tests.support.registry import BusyboxRegistry, Registry, running_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and mounting layers needs root"),
]


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[Registry, ib.Image, ib.Image]]:
    base = ib.make_layer(ib.busybox_rootfs())
    busybox = ib.build_image([base])
    app = ib.build_image([base, ib.make_layer(ib.LayerBuilder().file("app", "hello"))],
                         ib.ImageConfig(cmd=["cat", "/app"]))
    with running_registry() as running:
        ib.push_image(running.url, "test/busybox", "latest", busybox)
        ib.push_image(running.url, "test/app", "v1", app)
        yield running, busybox, app


class Daemon:
    """An image service behind a real gRPC server on a unix socket."""

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "crisp.sock"

    async def start(self) -> None:
        self.db = await Database.open(self.root / "crisp.db")
        self.images = ImageService(LiveConfig(Config(root_dir=str(self.root)), None), self.db,
                                   self.root)
        await self.images.start()
        self.server = grpc.aio.server()
        layers = [ErrorLayer(self.root)]
        cri_pb2_grpc.add_ImageServiceServicer_to_server(layered(
            ImageServicer(self.images), cri_pb2.DESCRIPTOR.services_by_name["ImageService"],
            layers), self.server)
        crisp_images_pb2_grpc.add_ImagesServicer_to_server(layered(
            CrispImagesServicer(self.images),
            crisp_images_pb2.DESCRIPTOR.services_by_name["Images"], layers), self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(None)
        for key in await self.images.snapshots.keys():
            await self.images.snapshots.remove(key)
        await self.images.close()
        await self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    async def crispctl(self, *argv: str) -> tuple[int, str]:
        """Run a crispctl image command against this daemon (in a thread: it blocks)."""
        parser = argparse.ArgumentParser(prog="crispctl")
        parser.add_argument("-t", "--timeout", type=float, default=30.0)
        add_image_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))

        def run() -> tuple[int, str]:
            import contextlib
            out = io.StringIO()
            with grpc.insecure_channel(f"unix://{self.socket}") as channel, \
                    contextlib.redirect_stdout(out):
                code = args.run(channel, args)
            return code, out.getvalue()

        return await asyncio.to_thread(run)

    async def run_in(self, key: str, reference: str, script: str) -> str:
        image = await self.images.resolve(reference)
        rootfs = await self.images.snapshots.prepare(key, await self.images.lower_dirs(image))
        result = await asyncio.to_thread(
            subprocess.run, ["chroot", str(rootfs), "/bin/sh", "-c", script],
            capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Daemon]]:
    first, second = Daemon(tmp_path / "one"), Daemon(tmp_path / "two")
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()


async def test_export_then_import_elsewhere(daemons: tuple[Daemon, Daemon], tmp_path: Path,
                                           registry: tuple[Registry, ib.Image, ib.Image]) -> None:
    running, busybox, app = registry
    one, two = daemons
    busybox_ref = f"{running.host}/test/busybox:latest"
    app_ref = f"{running.host}/test/app:v1"
    assert (await one.crispctl("pull", busybox_ref))[0] == 0
    assert (await one.crispctl("pull", app_ref))[0] == 0
    archive = tmp_path / "images.tar"
    code, _ = await one.crispctl("images", "export", busybox_ref, app_ref, "-o", str(archive))
    assert code == 0

    code, out = await two.crispctl("images", "import", str(archive))
    assert code == 0, out
    imported = {image.id: image for image in await two.images.list()}
    assert set(imported) == {busybox.id, app.id}
    assert imported[app.id].repo_tags == [app_ref]
    assert imported[busybox.id].repo_tags == [busybox_ref]
    assert await two.run_in("app", app_ref, "cat /app") == "hello"
    code, listing = await two.crispctl("images")
    assert f"{running.host}/test/app" in listing and "v1" in listing

    if shutil.which("skopeo"):
        for transport in ("oci-archive", "docker-archive"):
            checked = await asyncio.to_thread(
                subprocess.run, ["skopeo", "inspect", "--config",
                                 f"{transport}:{archive}:{app_ref}"]
                if transport == "docker-archive" else
                ["skopeo", "inspect", "--config", f"{transport}:{archive}:v1"],
                capture_output=True, text=True, check=False)
            assert checked.returncode == 0, checked.stderr
            assert json.loads(checked.stdout)["rootfs"]["diff_ids"]


async def test_import_docker_save(daemons: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    one, _ = daemons
    image = ib.build_image([ib.make_layer(ib.busybox_rootfs()),
                            ib.make_layer(ib.LayerBuilder().file("saved", "yes"))])
    archive = tmp_path / "saved.tar"
    archive.write_bytes(ib.docker_save_archive(image, ["busybox:saved", "example.com/x/y:1"],
                                                uncompress=True))
    code, out = await one.crispctl("images", "import", str(archive))
    assert code == 0, out
    [imported] = await one.images.list()
    assert imported.id == image.id
    assert imported.repo_tags == ["docker.io/library/busybox:saved", "example.com/x/y:1"]
    assert await one.run_in("saved", "busybox:saved", "cat /saved") == "yes"


def oci_layout_archive(index: ib.Index, tag: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": index.media_type, "digest": index.digest,
            "size": len(index.manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode())
        blobs = {index.digest: index.manifest, **index.blobs()}
        for image in index.images:
            blobs[image.digest] = image.manifest
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return out.getvalue()


async def test_import_oci_layout_with_index(daemons: tuple[Daemon, Daemon],
                                            tmp_path: Path) -> None:
    one, _ = daemons
    host = ib.busybox_image()
    other = ib.build_image([ib.make_layer(ib.LayerBuilder().file("x", "x"))],
                           platform_={"os": "linux", "architecture": "s390x"})
    index = ib.build_index([other, host])
    archive = tmp_path / "oci.tar.gz"
    archive.write_bytes(oci_layout_archive(index, "2.0"))
    code, out = await one.crispctl("images", "import", "--base-name", "example.com/base",
                                   str(archive))
    assert code == 0, out
    [imported] = await one.images.list()
    assert imported.id == host.id
    assert imported.repo_tags == ["example.com/base:2.0"]
    assert imported.index_digest == index.digest


async def test_import_rootfs_directory(daemons: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    one, _ = daemons
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    (rootfs / "data").mkdir()
    (rootfs / "data" / "hello").write_text("from a directory")
    os.chown(rootfs / "data" / "hello", 1234, 5678)
    code, out = await one.crispctl("images", "import", "--rootfs", str(rootfs),
                                   "example.com/tools:1.0")
    assert code == 0, out
    [image] = await one.images.list()
    assert image.repo_tags == ["example.com/tools:1.0"]
    assert len(image.layers) == 1
    script = "/bin/busybox cat /data/hello; /bin/busybox stat -c ' %u:%g' /data/hello"
    assert await one.run_in("tools", "example.com/tools:1.0", script) \
        == "from a directory 1234:5678\n"


async def test_bad_archives_are_refused(daemons: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    one, _ = daemons
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(grpc.RpcError) as not_tar:
        await one.crispctl("images", "import", str(garbage))
    assert not_tar.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(grpc.RpcError, match="neither an OCI image layout"):
        await one.crispctl("images", "import", str(empty))
    with pytest.raises(grpc.RpcError, match="not present"):
        await one.crispctl("images", "export", "nothing:here", "-o", str(tmp_path / "x.tar"))
    assert not (tmp_path / "x.tar").exists()
    assert list(one.images.content.ingest_dir.iterdir()) == []


async def stalling_registry(image: ib.Image, release: asyncio.Event
                            ) -> tuple[asyncio.Server, int]:
    """A registry serving ``image`` whose layer stops after 1000 bytes until ``release``."""
    layer = image.layers[0]

    async def slow_registry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = request.split(" ")[1]
        if "/manifests/" in path:
            body, kind = image.manifest, ib.OCI_MANIFEST
        elif image.id.removeprefix("sha256:") in path:
            body, kind = image.config, "application/octet-stream"
        else:
            body, kind = layer.data, "application/octet-stream"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        if body is layer.data:
            writer.write(body[:1000])
            await writer.drain()
            await release.wait()
            writer.write(body[1000:])
        else:
            writer.write(body)
        await writer.drain()
        writer.close()

    from tests.support.registry import free_port
    port = free_port()
    return await asyncio.start_server(slow_registry, "127.0.0.1", port), port


async def test_pull_progress_is_visible(daemons: tuple[Daemon, Daemon]) -> None:
    one, _ = daemons
    release = asyncio.Event()
    image = ib.busybox_image()
    layer = image.layers[0]
    server, port = await stalling_registry(image, release)
    try:
        pull = asyncio.create_task(one.images.pull(f"127.0.0.1:{port}/slow/busybox:1"))
        from crisp.api import crisp_images_pb2
        async with grpc.aio.insecure_channel(f"unix://{one.socket}") as channel:
            stub = crisp_images_pb2_grpc.ImagesStub(channel)
            for _ in range(100):
                progress = await stub.PullProgress(crisp_images_pb2.PullProgressRequest())
                layers = [p for pull_ in progress.pulls for p in pull_.layers]
                if layers and layers[0].done_bytes >= 1000:
                    break
                await asyncio.sleep(0.05)
            [current] = progress.pulls
            assert current.reference == f"127.0.0.1:{port}/slow/busybox:1"
            [entry] = current.layers
            assert entry.digest == layer.digest
            assert entry.total_bytes == len(layer.data)
            assert entry.state == "downloading"
            assert 1000 <= entry.done_bytes < len(layer.data)
            release.set()
            assert (await pull).id == image.id
            done = await stub.PullProgress(crisp_images_pb2.PullProgressRequest())
            assert list(done.pulls) == []
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_watch_pull_streams_one_pull_until_it_ends(daemons: tuple[Daemon, Daemon]) -> None:
    one, _ = daemons
    release = asyncio.Event()
    image = ib.busybox_image(ib.ImageConfig(env=["WATCHED=1"]))  # a config no other pull has
    layer = image.layers[0]
    server, port = await stalling_registry(image, release)
    reference = f"127.0.0.1:{port}/watched/busybox:1"
    from crisp.api import crisp_images_pb2
    try:
        async with grpc.aio.insecure_channel(f"unix://{one.socket}") as channel:
            stub = crisp_images_pb2_grpc.ImagesStub(channel)
            with pytest.raises(grpc.RpcError, match="needs reference"):
                async for _ in stub.WatchPull(crisp_images_pb2.WatchPullRequest()):
                    pass
            # the watch starts first and waits for its pull; another pull's stream stays quiet
            watch = stub.WatchPull(crisp_images_pb2.WatchPullRequest(reference=reference))
            other = stub.WatchPull(crisp_images_pb2.WatchPullRequest(
                reference=f"127.0.0.1:{port}/other/busybox:1"))
            await asyncio.sleep(0.3)
            pull = asyncio.create_task(one.images.pull(reference))
            messages = []
            async with asyncio.timeout(30):  # the stream ends by itself after the pull
                async for message in watch:
                    messages.append(message)
                    if message.layers and message.layers[0].done_bytes >= 1000:
                        release.set()
            assert (await pull).id == image.id
            assert {m.reference for m in messages} == {reference}
            stalled = [m.layers[0] for m in messages if m.layers
                       and m.layers[0].state == "downloading"]
            assert stalled and stalled[0].digest == layer.digest
            assert stalled[0].total_bytes == len(layer.data)
            assert 1000 <= stalled[0].done_bytes < len(layer.data)
            done = [m.layers[0].done_bytes for m in messages if m.layers]
            assert done == sorted(done)  # it only moves forward
            other.cancel()
            with pytest.raises(asyncio.CancelledError):
                async for _ in other:
                    raise AssertionError("a watch of another image saw this pull")
    finally:
        release.set()
        server.close()
        await server.wait_closed()



def test_crispctl_against_the_real_daemon(
    make_daemon: Callable[..., CrispDaemon], registry_busybox: BusyboxRegistry, tmp_path: Path
) -> None:
    """Pull, export, remove, import and restart through a real crisp daemon and crispctl."""
    daemon = make_daemon()
    endpoint = ["-r", f"unix://{daemon.socket}"]
    reference = registry_busybox.reference
    assert crispctl([*endpoint, "pull", reference]) == 0
    archive = tmp_path / "busybox.tar"
    assert crispctl([*endpoint, "images", "export", reference, "-o", str(archive)]) == 0
    assert crispctl([*endpoint, "rmi", reference]) == 0
    assert daemon.images.ListImages(cri_pb2.ListImagesRequest()).images == []
    assert crispctl([*endpoint, "images", "import", str(archive)]) == 0
    daemon.restart()
    listed = daemon.images.ListImages(cri_pb2.ListImagesRequest())
    assert [(i.id, list(i.repo_tags)) for i in listed.images] == [
        (registry_busybox.image_id, [reference])]
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"no tar")
    assert crispctl([*endpoint, "images", "import", str(garbage)]) == 1
