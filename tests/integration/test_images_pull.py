"""Pulling from a real docker-registry: formats, platforms, sharing, auth, failures, hostility.

One registry per module serves images this suite builds from busybox-static; each test gets
its own crisp root and database, so tests do not see each other's pulls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crisp.config import Config, ImageConfig, LiveConfig, RegistryConfig
from crisp.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unimplemented,
)
from crisp.images import Credentials, ImageService
from crisp.state import Database
from crisp.storage import chain_ids
from tests.support import image_builder as ib
from tests.support.registry import (
    FlakyProxy,
    Registry,
    TokenServer,
    free_port,
    running_registry,
    token_registry,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and mounting layers needs root"),
]

USERS = {"alice": "wonderland"}


@dataclass
class Served:
    registry: Registry
    busybox: ib.Image
    multi: ib.Index
    app: ib.Image
    app2: ib.Image
    whiteout: ib.Image
    zstd: ib.Image
    big: ib.Image
    corrupt: ib.Image
    evil: ib.Image
    configured: ib.Image

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}"


def extra_layer(*files: tuple[str, str], compression: ib.Compression = "gzip") -> ib.Layer:
    builder = ib.LayerBuilder()
    for path, content in files:
        builder.file(path, content)
    return ib.make_layer(builder, compression)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    base = ib.make_layer(ib.busybox_rootfs())
    busybox = ib.build_image([base])
    docker_busybox = ib.build_image([ib.make_layer(ib.busybox_rootfs(), fmt="docker")],
                                    fmt="docker")
    other_arch = ib.build_image([extra_layer(("s390x", "only"))],
                                platform_={"os": "linux", "architecture": "s390x"})
    arm = ib.build_image([extra_layer(("arm", "v7"))],
                         platform_={"os": "linux", "architecture": "arm", "variant": "v7"})
    multi = ib.build_index([other_arch, busybox, arm])
    manifest_list = ib.build_index(
        [ib.build_image([ib.make_layer(ib.busybox_rootfs(), fmt="docker")], fmt="docker",
                        platform_={"os": "linux", "architecture": "ppc64le"}), docker_busybox],
        fmt="docker")
    foreign = ib.build_index([other_arch, arm])
    app = ib.build_image([base, extra_layer(("app/one", "1"))])
    app2 = ib.build_image([base, extra_layer(("app/two", "2"))])
    whiteout = ib.build_image([
        base,
        ib.make_layer(ib.LayerBuilder().whiteout("bin/vi").opaque("home")
                      .file("home/only", "new")),
    ])
    zstd = ib.build_image([ib.make_layer(ib.busybox_rootfs(), "zstd"),
                           extra_layer(("z/file", "zstd!"), compression="zstd"),
                           extra_layer(("plain/file", "raw"), compression="none")])
    big = ib.build_image([base, ib.make_layer(ib.LayerBuilder().file("big", os.urandom(3 << 20)),
                                              "none")])
    corrupt = ib.build_image([base, extra_layer(("will/be", "corrupted" * 1000))])
    evil_layer = ib.make_layer(ib.LayerBuilder().symlink("escape", "/").file("escape/pwned", "x"))
    evil = ib.build_image([base, evil_layer])
    climbing = ib.build_image([base, ib.make_layer(
        ib.LayerBuilder().raw(tarfile.TarInfo("../../../../tmp/crisp-escaped"), b"x"))])
    stealing = ib.build_image([base, ib.make_layer(
        ib.LayerBuilder().hardlink("shadow", "../../../../etc/shadow"))])
    truncated_tar = ib.LayerBuilder().file("big", os.urandom(100_000)).tar()[:60_000]
    truncated = ib.build_image([base, ib.make_layer(truncated_tar)])
    configured = ib.busybox_image(ib.ImageConfig(
        entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], user="1000:1000", working_dir="/tmp",
        stop_signal="SIGINT", labels={"org.example": "yes"}, exposed_ports=["80/tcp"],
        volumes=["/data"], env=["A=1"]))
    with running_registry() as registry:
        push = ib.RegistryPusher(registry.url)
        push.push("test/busybox", "latest", busybox)
        push.push("test/busybox", "1.0", busybox)
        push.push("test/busybox", "docker", docker_busybox)
        push.push("test/multi", "latest", multi)
        push.push("test/list", "latest", manifest_list)
        push.push("test/foreign", "latest", foreign)
        push.push("test/app", "latest", app)
        push.push("test/app2", "latest", app2)
        push.push("test/whiteout", "latest", whiteout)
        push.push("test/zstd", "latest", zstd)
        push.push("test/big", "latest", big)
        push.push("test/corrupt", "latest", corrupt)
        push.push("test/evil", "latest", evil)
        push.push("test/evil", "climbing", climbing)
        push.push("test/evil", "stealing", stealing)
        push.push("test/evil", "truncated", truncated)
        push.push("test/configured", "latest", configured)
        # corrupt the stored blob behind the registry's back: it serves the bytes as they are
        digest = corrupt.layers[1].digest.removeprefix("sha256:")
        data = registry.directory / "storage/docker/registry/v2/blobs/sha256" / digest[:2] / \
            digest / "data"
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
        yield Served(registry, busybox, multi, app, app2, whiteout, zstd, big, corrupt, evil,
                     configured)


def make_config(root: Path, **images: object) -> Config:
    return Config(root_dir=str(root), images=ImageConfig(**images))  # type: ignore[arg-type]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ImageService]:
    async with open_service(tmp_path / "root", LiveConfig(make_config(tmp_path / "root"), None)) \
            as svc:
        yield svc


class open_service:
    def __init__(self, root: Path, live: LiveConfig):
        self.root = root
        self.live = live

    async def __aenter__(self) -> ImageService:
        self.db = await Database.open(self.root / "crisp.db")
        self.svc = ImageService(self.live, self.db, self.root)
        await self.svc.start()
        return self.svc

    async def __aexit__(self, *exc: object) -> None:
        for key in await self.svc.snapshots.keys():
            await self.svc.snapshots.remove(key)
        await self.svc.close()
        await self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)


def nothing_half_written(svc: ImageService) -> None:
    assert list(svc.content.ingest_dir.iterdir()) == []
    assert [p for p in svc.layers.root.iterdir() if p.name.startswith("tmp-")] == []


async def run_in(svc: ImageService, key: str, image_ref: str, script: str) -> str:
    image = await svc.resolve(image_ref)
    rootfs = await svc.snapshots.prepare(key, await svc.lower_dirs(image))
    result = await asyncio.to_thread(
        subprocess.run, ["chroot", str(rootfs), "/bin/sh", "-c", script],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_pull_busybox_and_run_it(service: ImageService, served: Served) -> None:
    image = await service.pull(served.ref("test/busybox:latest"))
    assert image.id == served.busybox.id
    assert image.repo_tags == [served.ref("test/busybox:latest")]
    assert image.repo_digests == [served.ref(f"test/busybox@{served.busybox.digest}")]
    assert image.size == len(served.busybox.manifest) + len(served.busybox.config) + sum(
        len(layer.data) for layer in served.busybox.layers)
    assert image.config.cmd == ["sh"]
    script = "id -un nobody; ls /bin/busybox; stat -c %h /bin/ls"
    out = await run_in(service, "c1", image.id, script)
    lines = out.split()
    assert lines[0] == "nobody"
    assert int(lines[2]) > 100  # the applets are hard links of one file
    nothing_half_written(service)


async def test_status_by_every_kind_of_reference(service: ImageService, served: Served) -> None:
    image = await service.pull(served.ref("test/busybox"))
    for reference in (image.id, image.id.removeprefix("sha256:"), image.id[7:19],
                      served.ref("test/busybox:latest"), served.ref("test/busybox"),
                      served.ref(f"test/busybox@{served.busybox.digest}")):
        found = await service.status(reference)
        assert found is not None and found.id == image.id, reference
    assert await service.status(served.ref("test/busybox:nope")) is None
    with pytest.raises(NotFound, match="pull it first"):
        await service.resolve("docker.io/library/absent:1")
    with pytest.raises(InvalidArgument):
        await service.status("Not A Reference")


async def test_tags_of_one_image_share_everything(service: ImageService, served: Served) -> None:
    first = await service.pull(served.ref("test/busybox:latest"))
    second = await service.pull(served.ref("test/busybox:1.0"))
    assert first.id == second.id
    [image] = await service.list()
    assert image.repo_tags == sorted([served.ref("test/busybox:latest"),
                                      served.ref("test/busybox:1.0")])
    assert len(await service.layers.all()) == 1


async def test_pull_by_digest_and_by_tag_and_digest(service: ImageService, served: Served) -> None:
    by_digest = await service.pull(served.ref(f"test/busybox@{served.busybox.digest}"))
    assert by_digest.repo_tags == []
    assert by_digest.id == served.busybox.id
    both = await service.pull(served.ref(f"test/busybox:1.0@{served.busybox.digest}"))
    assert served.ref("test/busybox:1.0") in both.repo_tags
    wrong = "sha256:" + "0" * 64
    with pytest.raises(NotFound):
        await service.pull(served.ref(f"test/busybox@{wrong}"))


async def test_docker_schema2(service: ImageService, served: Served) -> None:
    image = await service.pull(served.ref("test/busybox:docker"))
    assert image.manifest_media_type == ib.DOCKER_MANIFEST
    await run_in(service, "d", image.id, "true")


async def test_multi_arch_index_picks_this_host(service: ImageService, served: Served) -> None:
    image = await service.pull(served.ref("test/multi:latest"))
    assert image.id == served.busybox.id
    assert image.index_digest == served.multi.digest
    assert image.repo_digests == [served.ref(f"test/multi@{served.multi.digest}")]
    listed = await service.pull(served.ref("test/list:latest"))
    assert listed.manifest_media_type == ib.DOCKER_MANIFEST
    # the platform manifest's digest finds the image too
    assert await service.status(served.ref(f"test/multi@{served.busybox.digest}")) is not None


async def test_index_without_this_platform(service: ImageService, served: Served) -> None:
    with pytest.raises(NotFound, match="linux/arm/v7, linux/s390x"):
        await service.pull(served.ref("test/foreign:latest"))


async def test_shared_layers_are_unpacked_once(service: ImageService, served: Served) -> None:
    await asyncio.gather(
        service.pull(served.ref("test/app:latest")),
        service.pull(served.ref("test/app2:latest")),
        service.pull(served.ref("test/busybox:latest")),
    )
    assert len(await service.layers.all()) == 3  # busybox, app's, app2's
    out = await run_in(service, "a", served.ref("test/app:latest"), "cat /app/one; echo; ls /app")
    assert out.split() == ["1", "one"]


async def test_concurrent_pulls_of_one_image(service: ImageService, served: Served) -> None:
    images = await asyncio.gather(*(service.pull(served.ref("test/big:latest")) for _ in range(4)))
    assert {image.id for image in images} == {served.big.id}
    assert len(await service.store.all()) == 1


async def test_whiteouts_hide_lower_files(service: ImageService, served: Served) -> None:
    await service.pull(served.ref("test/whiteout:latest"))
    out = await run_in(service, "w", served.ref("test/whiteout:latest"),
                       "test -e /bin/vi && echo vi; ls -A /home; test -e /bin/ls && echo ls")
    assert out.split() == ["only", "ls"]


async def test_zstd_and_uncompressed_layers(service: ImageService, served: Served) -> None:
    await service.pull(served.ref("test/zstd:latest"))
    out = await run_in(service, "z", served.ref("test/zstd:latest"), "cat /z/file /plain/file")
    assert out == "zstd!raw"


async def test_image_config_fields(service: ImageService, served: Served) -> None:
    image = await service.pull(served.ref("test/configured:latest"))
    config = image.config
    assert config.entrypoint == ["/bin/sh", "-c"]
    assert config.cmd == ["echo hi"]
    assert config.working_dir == "/tmp"
    assert config.stop_signal == "SIGINT"
    assert config.labels == {"org.example": "yes"}
    assert config.exposed_ports == ["80/tcp"]
    assert config.volumes == ["/data"]
    assert image.uid_and_username() == (1000, "")
    document = await service.config_document(image)
    assert document["config"]["User"] == "1000:1000"


async def test_corrupt_blob_fails_and_leaves_nothing(service: ImageService,
                                                     served: Served) -> None:
    with pytest.raises(InvalidArgument, match="wrong content"):
        await service.pull(served.ref("test/corrupt:latest"))
    nothing_half_written(service)
    assert not service.content.has(served.corrupt.layers[1].digest)
    assert await service.list() == []


@pytest.mark.parametrize("streamed", [True, False])
async def test_same_tar_in_other_bytes_is_refused(tmp_path: Path, served: Served,
                                                  streamed: bool) -> None:
    """A layer blob whose bytes are not the manifest's but hold the very same tar (another
    gzip header mtime, so the same size too): the unpack, which reads it as it arrives, gets
    through the whole tar with the right diff id, and still no layer is recorded."""
    tar = ib.LayerBuilder().file("same/tar", f"payload {streamed} " * 20_000).tar()
    image = ib.build_image([served.busybox.layers[0], ib.make_layer(tar)])
    name = f"test/regzipped-{str(streamed).lower()}"
    ib.RegistryPusher(served.registry.url).push(name, "latest", image)
    blob = image.layers[1].digest.removeprefix("sha256:")
    data = (served.registry.directory / "storage/docker/registry/v2/blobs/sha256" / blob[:2] /
            blob / "data")
    other = gzip.compress(tar, compresslevel=6, mtime=12345)
    assert len(other) == len(data.read_bytes()) and other != data.read_bytes()
    data.write_bytes(other)
    root = tmp_path / "r"
    live = LiveConfig(make_config(root, unpack_while_downloading=streamed), None)
    async with open_service(root, live) as svc:
        recorded: list[str] = []
        put = svc.layers.records.put

        async def spy(key: str, *args: Any, **kwargs: Any) -> Any:
            recorded.append(key)  # a layer recorded and collected again is no better
            return await put(key, *args, **kwargs)

        svc.layers.records.put = spy  # type: ignore[method-assign]
        with pytest.raises(InvalidArgument, match="wrong content"):
            await svc.pull(served.ref(f"{name}:latest"))
        nothing_half_written(svc)
        chain = chain_ids([layer.diff_id for layer in image.layers])[1]
        assert chain not in recorded
        assert await svc.layers.get(chain) is None
        assert not svc.layers.directory(chain).parent.exists()
        assert not svc.content.has(image.layers[1].digest)


async def test_layers_unpack_while_they_download(tmp_path: Path, served: Served,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="crisp.images.pull")
    async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
            as svc:
        image = await svc.pull(served.ref("test/whiteout:latest"))
        assert "unpacked while downloading" in caplog.text
        out = await run_in(svc, "w", image.id,
                           "test -e /bin/vi && echo vi; ls -A /home; test -e /bin/ls && echo ls")
        assert out.split() == ["only", "ls"]
        nothing_half_written(svc)


async def test_a_layer_fills_in_while_its_blob_still_arrives(tmp_path: Path,
                                                             served: Served) -> None:
    proxy = FlakyProxy(served.registry.url, drops=0)
    proxy.throttle = 0.02  # about 3 MB/s: the 3 MiB layer takes about a second
    await proxy.start()
    try:
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            layer = served.big.layers[1]
            pulling = asyncio.create_task(svc.pull(f"{proxy.host}/test/big:latest"))
            seen_early = False
            while not pulling.done():
                staged = list(svc.layers.root.glob("tmp-*/diff/big"))
                if (staged and staged[0].stat().st_size > 0
                        and not svc.content.has(layer.digest)):
                    seen_early = True  # unpacked bytes on disk, the blob not complete yet
                await asyncio.sleep(0.02)
            assert (await pulling).id == served.big.id
            assert seen_early
            nothing_half_written(svc)
    finally:
        await proxy.stop()


async def test_malicious_layer_is_refused(service: ImageService, served: Served) -> None:
    with pytest.raises(InvalidArgument, match="through the symlink"):
        await service.pull(served.ref("test/evil:latest"))
    nothing_half_written(service)
    assert not await asyncio.to_thread(os.path.exists, "/pwned")
    assert await service.list() == []


@pytest.mark.parametrize(("tag", "complaint"), [
    ("climbing", "outside the layer with '..'"),
    ("stealing", "outside the layer with '..'"),
    ("truncated", "truncated or corrupt"),
])
async def test_hostile_and_broken_layers_fail_cleanly(service: ImageService, served: Served,
                                                      tag: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        await service.pull(served.ref(f"test/evil:{tag}"))
    nothing_half_written(service)
    assert not await asyncio.to_thread(os.path.exists, "/tmp/crisp-escaped")
    assert await service.list() == []
    assert len(await service.layers.all()) <= 1  # at most the busybox layer


async def test_interrupted_download_resumes_with_range(tmp_path: Path, served: Served) -> None:
    proxy = FlakyProxy(served.registry.url, drops=2, cut_at=500_000)
    await proxy.start()
    try:
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            image = await svc.pull(f"{proxy.host}/test/big:latest")
            assert image.id == served.big.id
            assert proxy.drops == 0
            assert proxy.range_requests >= 2
            out = await run_in(svc, "b", image.id, "wc -c < /big")
            assert int(out) == 3 << 20
    finally:
        await proxy.stop()


async def test_down_mirror_falls_back_to_registry(tmp_path: Path, served: Served) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = Config(root_dir=str(tmp_path / "r"), registries=RegistryConfig(
        mirrors={served.registry.host: [dead]}))
    async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
        image = await svc.pull(served.ref("test/app:latest"))
        assert image.id == served.app.id


async def test_working_mirror_is_used_first(tmp_path: Path, served: Served) -> None:
    proxy = FlakyProxy(served.registry.url, drops=0)
    await proxy.start()
    try:
        config = Config(root_dir=str(tmp_path / "r"), registries=RegistryConfig(
            mirrors={"upstream.invalid:5000": [f"http://{proxy.host}"]}))
        async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
            # the registry itself cannot be reached: only the mirror can serve this
            image = await svc.pull("upstream.invalid:5000/test/busybox:latest")
            assert image.id == served.busybox.id
            assert image.repo_tags == ["upstream.invalid:5000/test/busybox:latest"]
    finally:
        await proxy.stop()


async def test_no_progress_is_cancelled(tmp_path: Path, served: Served) -> None:
    stalled = asyncio.Event()

    async def silent_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if b"/blobs/" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nabc")
            await writer.drain()
            stalled.set()
            await asyncio.sleep(30)
        else:
            # manifests come from the real registry
            path = request.split(b" ")[1].decode()
            import urllib.request
            accept = ", ".join([ib.OCI_MANIFEST, ib.DOCKER_MANIFEST, ib.OCI_INDEX])
            req = urllib.request.Request(served.registry.url + path, headers={"Accept": accept})
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(req).read())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ib.OCI_MANIFEST.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(silent_server, "127.0.0.1", port)
    try:
        config = Config(root_dir=str(tmp_path / "r"),
                        images=ImageConfig(pull_progress_timeout=0.5))
        async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
            with pytest.raises(DeadlineExceeded, match="no progress"):
                await svc.pull(f"127.0.0.1:{port}/test/busybox:latest")
            assert stalled.is_set()
            nothing_half_written(svc)
            assert not svc.content.has(served.busybox.layers[0].digest)
            assert await svc.list() == []
    finally:
        server.close()
        await server.wait_closed()


async def test_basic_auth(tmp_path: Path) -> None:
    image = ib.busybox_image()
    with running_registry(users=USERS) as registry:
        ib.push_image(registry.url, "private/busybox", "latest", image, "alice", "wonderland")
        reference = f"{registry.host}/private/busybox:latest"
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            with pytest.raises(Unauthenticated, match="needs a username and password"):
                await svc.pull(reference)
            with pytest.raises(Unauthenticated, match="refused the given credentials"):
                await svc.pull(reference, Credentials(username="alice", password="wrong"))
            pulled = await svc.pull(reference, Credentials(username="alice",
                                                           password="wonderland"))
            assert pulled.id == image.id
        async with open_service(tmp_path / "s", LiveConfig(make_config(tmp_path / "s"), None)) \
                as svc:
            import base64
            auth = base64.b64encode(b"alice:wonderland").decode()
            assert (await svc.pull(reference, Credentials(auth=auth))).id == image.id


async def test_bearer_token_auth(tmp_path: Path) -> None:
    image = ib.busybox_image()
    with token_registry(USERS) as (registry, tokens):
        ib.push_image(registry.url, "private/busybox", "latest", image, "alice", "wonderland")
        reference = f"{registry.host}/private/busybox:latest"
        before = tokens.requests
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            with pytest.raises(Unauthenticated, match="401"):
                await svc.pull(reference, Credentials(username="alice", password="bad"))
            pulled = await svc.pull(reference, Credentials(username="alice",
                                                           password="wonderland"))
            assert pulled.id == image.id
            assert tokens.requests > before
            # an identity token is exchanged for an access token (OAuth2 refresh grant)
            await svc.remove(pulled.id)
            refreshed = await svc.pull(reference, Credentials(identity_token="refresh-alice"))
            assert refreshed.id == image.id
            assert tokens.refresh_requests == 1
            # a ready registry token is used as the bearer token directly
            token = TokenServer._token(tokens, "repository:private/busybox:pull")
            await svc.remove(pulled.id)
            again = await svc.pull(reference, Credentials(registry_token=token))
            assert again.id == image.id


async def test_schema1_is_refused(tmp_path: Path, served: Served) -> None:
    # docker-registry 2.8 still serves schema 1 pushed to it; build one by hand
    import json
    doc = {"schemaVersion": 1, "name": "test/old", "tag": "latest", "architecture": "amd64",
           "fsLayers": [], "history": []}
    body = json.dumps(doc).encode()
    proxy_port = free_port()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: "
                     b"application/vnd.docker.distribution.manifest.v1+prettyjws\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(server, "127.0.0.1", proxy_port)
    try:
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            with pytest.raises(Unimplemented, match="schema 1"):
                await svc.pull(f"127.0.0.1:{proxy_port}/test/old:latest")
    finally:
        listener.close()
        await listener.wait_closed()


async def test_unknown_image_and_unreachable_registry(service: ImageService,
                                                      served: Served) -> None:
    with pytest.raises(NotFound, match="not found"):
        await service.pull(served.ref("test/nothing:latest"))
    from crisp.errors import Unavailable
    with pytest.raises(Unavailable):
        await service.pull(f"127.0.0.1:{free_port()}/x/y:z")



async def test_short_names_use_the_search_registries(tmp_path: Path, served: Served) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = Config(root_dir=str(tmp_path / "r"),
                    registries=RegistryConfig(search=[dead, served.registry.host]))
    async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
        image = await svc.pull("test/busybox:1.0")
        assert image.repo_tags == [served.ref("test/busybox:1.0")]
        found = await svc.status("test/busybox:1.0")
        assert found is not None and found.id == image.id


async def test_search_rule_with_several_registries(tmp_path: Path, served: Served) -> None:
    """A registry that does not resolve the name (down, refusing us, not having it) passes a
    short name on to the next; the first that resolves it decides, even when the image then
    turns out broken; if none resolves it, the error names every candidate."""
    dead = f"127.0.0.1:{free_port()}"
    good = ib.busybox_image()
    with running_registry(users={"alice": "wonderland"}) as private:
        # a good image of the same name as the served, broken one; it needs credentials
        ib.push_image(private.url, "test/corrupt", "latest", good, "alice", "wonderland")
        search = [dead, private.host, served.registry.host]
        config = Config(root_dir=str(tmp_path / "r"), registries=RegistryConfig(search=search))
        async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
            image = await svc.pull("test/busybox:1.0")  # down, refused, then found
            assert image.repo_tags == [served.ref("test/busybox:1.0")]
            with pytest.raises(NotFound) as raised:
                await svc.pull("test/nothing:latest")
            message = str(raised.value)
            assert message.startswith("test/nothing:latest: no search registry has it")
            for host in search:
                assert f"{host}/test/nothing:latest: " in message
            # the served registry resolves test/corrupt first: its broken layer is final,
            # the good image of that name on the next registry is not pulled instead
            alice = Credentials(username="alice", password="wonderland",
                                server_address=private.host)
            svc.live.current = dataclasses.replace(config, registries=RegistryConfig(
                search=[served.registry.host, private.host]))
            with pytest.raises(InvalidArgument, match="wrong content"):
                await svc.pull("test/corrupt:latest", alice)
            assert await svc.status("test/corrupt:latest") is None
            # and once the other registry comes first, its image is the one pulled
            svc.live.current = dataclasses.replace(config, registries=RegistryConfig(
                search=[private.host, served.registry.host]))
            assert (await svc.pull("test/corrupt:latest", alice)).id == good.id


async def test_registry_that_never_answers_is_cancelled(tmp_path: Path) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    port = free_port()
    server = await asyncio.start_server(mute, "127.0.0.1", port)
    try:
        config = Config(root_dir=str(tmp_path / "r"),
                        images=ImageConfig(pull_progress_timeout=0.5))
        async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
            started = asyncio.get_running_loop().time()
            with pytest.raises(DeadlineExceeded, match="no answer"):
                await svc.pull(f"127.0.0.1:{port}/test/busybox:latest")
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        server.close()
        await server.wait_closed()


async def test_layers_download_in_parallel_up_to_the_limit(tmp_path: Path) -> None:
    layers = [ib.make_layer(ib.LayerBuilder().file(f"l{i}", os.urandom(20_000)))
              for i in range(6)]
    image = ib.build_image(layers, ib.ImageConfig(cmd=["true"]))
    with running_registry() as registry:
        ib.push_image(registry.url, "test/six", "latest", image)
        for limit, expected in ((1, 1), (6, 6)):
            proxy = FlakyProxy(registry.url, drops=0)
            proxy.blob_delay = 0.3
            await proxy.start()
            try:
                root = tmp_path / f"limit{limit}"
                config = Config(root_dir=str(root),
                                images=ImageConfig(max_concurrent_downloads=limit))
                async with open_service(root, LiveConfig(config, None)) as svc:
                    await svc.pull(f"{proxy.host}/test/six:latest")
                assert proxy.blob_requests == 7  # six layers and the config
                assert proxy.max_concurrent_blobs == expected
            finally:
                await proxy.stop()


async def test_mirror_that_refuses_us_falls_back(tmp_path: Path, served: Served) -> None:
    with running_registry(users=USERS) as locked:
        config = Config(root_dir=str(tmp_path / "r"), registries=RegistryConfig(
            mirrors={served.registry.host: [locked.url]}))
        async with open_service(tmp_path / "r", LiveConfig(config, None)) as svc:
            image = await svc.pull(served.ref("test/busybox:latest"))
            assert image.id == served.busybox.id


async def test_server_errors_are_retried_with_backoff(tmp_path: Path, served: Served) -> None:
    proxy = FlakyProxy(served.registry.url, drops=0)
    proxy.unavailable = 2
    await proxy.start()
    try:
        async with open_service(tmp_path / "r", LiveConfig(make_config(tmp_path / "r"), None)) \
                as svc:
            image = await svc.pull(f"{proxy.host}/test/busybox:latest")
            assert image.id == served.busybox.id
            assert proxy.unavailable == 0
            proxy.unavailable = 100
            from crisp.errors import Unavailable
            with pytest.raises(Unavailable, match="HTTP 503"):
                await svc.pull(f"{proxy.host}/test/app:latest")
    finally:
        await proxy.stop()
