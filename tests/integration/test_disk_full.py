"""A full disk under root_dir: pulls, imports, creates and commits fail cleanly, crisp recovers.

The daemon's root_dir is a 64 MiB ext4 filesystem on a loop device made by the test (ext4, not
tmpfs: its directories take blocks, as on a real disk). Images bigger than what is free are
served by a real registry or imported through crisp's extension service; a filler file takes
the last free block while containers are created and the database commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2, crisp_images_pb2, crisp_images_pb2_grpc
from crisp.diskspace import DiskFull
from crisp.state import Database, Records
from tests.support import image_builder as ib
from tests.support.pods import PodsEnv, mounts_under, pods_environment

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop filesystem needs root"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4"),
]

DISK_MIB = 64
MIB = 1 << 20


@contextlib.contextmanager
def small_filesystem(image: Path, mount_point: Path, mib: int) -> Iterator[Path]:
    """A fresh ext4 of ``mib`` MiB (no blocks reserved for root) mounted at ``mount_point``."""
    with open(image, "wb") as file:
        file.truncate(mib * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True,
                   capture_output=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True,
                   capture_output=True)
    try:
        yield mount_point
    finally:
        for point in sorted(mounts_under(mount_point), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)  # still busy
        image.unlink()


@contextlib.contextmanager
def filled(directory: Path, room: int = 0) -> Iterator[Path]:
    """Take every free block of ``directory``'s filesystem but ``room`` bytes with one file;
    give them back after."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (MIB, 64 << 10, 4 << 10, 1 << 10):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        if room:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - room))
            os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
    try:
        yield filler
    finally:
        filler.unlink()
        os.sync()  # ext4 hands freed blocks out again once the journal committed


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("diskfull")
    with small_filesystem(base / "disk.img", base / "disk", DISK_MIB) as mounted:
        yield mounted


@pytest.fixture(scope="module")
def env(disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodsEnv]:
    base = tmp_path_factory.mktemp("diskfull-env")
    with pods_environment(base, root=disk / "root") as environment:
        yield environment
    assert not mounts_under(disk), "crisp left mounts on the small filesystem"


def registry_url(env: PodsEnv) -> str:
    return "http://" + env.busybox.split("/", 1)[0]


def store_state(root: Path) -> dict[str, set[str]]:
    """What the content and layer stores hold on disk, by directory."""
    return {
        "ingest": set(os.listdir(root / "content" / "ingest")),
        "blobs": set(os.listdir(root / "content" / "blobs" / "sha256")),
        "layers": set(os.listdir(root / "layers")),
        "links": set(os.listdir(root / "layers" / "l")),
    }


def image_names(env: PodsEnv) -> list[str]:
    images = env.daemon.images.ListImages(cri_pb2.ListImagesRequest()).images
    return sorted(tag for image in images for tag in image.repo_tags)


def assert_refused_for_space(error: grpc.RpcError, disk: Path, what: str) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    details = error.details()
    assert what in details
    assert f"no space left on the filesystem at {disk} (" in details
    assert "free space and retry" in details


def assert_still_serving(env: PodsEnv) -> None:
    assert env.daemon.runtime.Version(cri_pb2.VersionRequest()).runtime_name == "crisp"
    env.daemon.images.ListImages(cri_pb2.ListImagesRequest())
    env.daemon.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest())


def random_layer(size: int) -> ib.Layer:
    """A layer whose blob is ``size`` bytes and more, uncompressed and incompressible."""
    return ib.make_layer(ib.LayerBuilder().file("noise", os.urandom(size)), "none")


def zeros_layer(size: int) -> ib.Layer:
    """A layer of a few hundred KiB that unpacks into a ``size``-byte file."""
    return ib.make_layer(ib.LayerBuilder().file("zeros", b"\0" * size), "gzip")


def check_pull_refused(env: PodsEnv, disk: Path, image: ib.Image, tag: str) -> None:
    root = disk / "root"
    ib.push_image(registry_url(env), "test/big", tag, image)
    before, names, free = store_state(root), image_names(env), free_bytes(disk)
    reference = f"{env.busybox.split('/', 1)[0]}/test/big:{tag}"
    with pytest.raises(grpc.RpcError) as caught:
        env.daemon.images.PullImage(cri_pb2.PullImageRequest(
            image=cri_pb2.ImageSpec(image=reference)), timeout=120)
    assert_refused_for_space(caught.value, disk, f"pulling {reference}")
    assert store_state(root) == before  # no partial blob, no layer, nothing half unpacked
    assert image_names(env) == names
    assert env.daemon.images.ImageStatus(cri_pb2.ImageStatusRequest(
        image=cri_pb2.ImageSpec(image=reference))).image.id == ""
    assert free_bytes(disk) >= free - MIB  # the space the attempt took is back
    assert_still_serving(env)


def test_pull_of_a_blob_bigger_than_the_free_space(env: PodsEnv, disk: Path) -> None:
    image = ib.build_image([ib.make_layer(ib.busybox_rootfs()),
                            random_layer(free_bytes(disk) + 8 * MIB)])
    check_pull_refused(env, disk, image, "noise")


def test_pull_of_a_layer_that_unpacks_bigger_than_the_free_space(
    env: PodsEnv, disk: Path
) -> None:
    layer = zeros_layer(free_bytes(disk) + 8 * MIB)
    assert len(layer.data) < MIB
    check_pull_refused(env, disk, ib.build_image([layer]), "zeros")


def import_archive(env: PodsEnv, archive: bytes) -> None:
    def requests() -> Iterator[crisp_images_pb2.ImportRequest]:
        yield crisp_images_pb2.ImportRequest(header=crisp_images_pb2.ImportHeader(
            kind=crisp_images_pb2.ImportHeader.ARCHIVE))
        for offset in range(0, len(archive), MIB):
            yield crisp_images_pb2.ImportRequest(data=archive[offset:offset + MIB])

    crisp_images_pb2_grpc.ImagesStub(env.daemon.channel).Import(requests(), timeout=120)


def check_import_refused(env: PodsEnv, disk: Path, archive: bytes) -> None:
    root = disk / "root"
    before, names, free = store_state(root), image_names(env), free_bytes(disk)
    with pytest.raises(grpc.RpcError) as caught:
        import_archive(env, archive)
    assert_refused_for_space(caught.value, disk, "importing an image archive")
    assert store_state(root) == before
    assert image_names(env) == names
    assert free_bytes(disk) >= free - MIB
    assert_still_serving(env)


def test_import_of_an_archive_bigger_than_the_free_space(env: PodsEnv, disk: Path) -> None:
    image = ib.build_image([random_layer(free_bytes(disk) + 8 * MIB)])
    check_import_refused(env, disk, ib.docker_save_archive(image, ["example.com/big:noise"]))


def test_import_of_a_layer_that_unpacks_bigger_than_the_free_space(
    env: PodsEnv, disk: Path
) -> None:
    image = ib.build_image([zeros_layer(free_bytes(disk) + 8 * MIB)])
    check_import_refused(env, disk, ib.docker_save_archive(image, ["example.com/big:zeros"]))


def runc_containers(env: PodsEnv) -> set[str]:
    runtime_root = env.daemon.run_dir / "runtimes" / "runc"
    if not runtime_root.exists():
        return set()
    listed = subprocess.run(["runc", "--root", str(runtime_root), "list", "-q"],
                            capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def test_create_container_on_a_full_disk_then_recover(env: PodsEnv, disk: Path) -> None:
    root = disk / "root"
    pod = env.run_pod()
    first = env.run_container(pod, env.container_config("before", ["sleep", "600"],
                                                        image=env.busybox))
    runtime = env.daemon.runtime
    containers = {c.id for c in runtime.ListContainers(cri_pb2.ListContainersRequest()).containers}
    snapshot_dirs = set(os.listdir(root / "containers"))
    in_runc = runc_containers(env)
    request = cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod, config=env.container_config("after", ["sleep", "600"]),
        sandbox_config=cri_pb2.PodSandboxConfig())
    with filled(disk):
        for _ in range(3):  # and again: a failed attempt leaves nothing that blocks the next
            with pytest.raises(grpc.RpcError) as caught:
                runtime.CreateContainer(request)
            assert_refused_for_space(caught.value, disk, "creating container after in pod test/")
            listed = runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
            assert {c.id for c in listed} == containers
            assert set(os.listdir(root / "containers")) == snapshot_dirs
            assert runc_containers(env) == in_runc
        assert_still_serving(env)
    second = runtime.CreateContainer(request).container_id
    runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=second))
    assert env.status(second).status.state == cri_pb2.CONTAINER_RUNNING

    images = image_names(env)
    env.daemon.restart()
    runtime = env.daemon.runtime
    assert image_names(env) == images
    assert pod in {p.id for p in runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items}
    listed = {c.id: c for c in runtime.ListContainers(cri_pb2.ListContainersRequest()).containers}
    assert set(listed) == containers | {second}
    assert listed[first].state == listed[second].state == cri_pb2.CONTAINER_RUNNING
    env.remove_pod(pod)


@pytest.mark.parametrize("room", [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20])
def test_create_container_as_the_disk_runs_out(env: PodsEnv, disk: Path, room: int) -> None:
    """With a little room left, a create either works or fails leaving nothing behind."""
    root = disk / "root"
    pod = env.run_pod()
    runtime = env.daemon.runtime
    containers = {c.id for c in runtime.ListContainers(cri_pb2.ListContainersRequest()).containers}
    snapshot_dirs = set(os.listdir(root / "containers"))
    in_runc = runc_containers(env)
    outcomes = []
    try:
        with filled(disk, room):
            for attempt in range(3):
                request = cri_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod,
                    config=env.container_config(f"c{attempt}", ["sleep", "600"]),
                    sandbox_config=cri_pb2.PodSandboxConfig())
                try:
                    created = runtime.CreateContainer(request).container_id
                except grpc.RpcError as error:
                    assert_refused_for_space(error, disk,
                                             f"creating container c{attempt} in pod test/")
                    outcomes.append(error.details())
                    listed = runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
                    assert {c.id for c in listed} == containers
                    assert set(os.listdir(root / "containers")) == snapshot_dirs
                    assert runc_containers(env) == in_runc
                else:
                    outcomes.append("created")
                    containers.add(created)
                    snapshot_dirs = set(os.listdir(root / "containers"))
                    in_runc = runc_containers(env)
            pods = {p.id for p in runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items}
            pod_dirs = set(os.listdir(root / "pods"))
            namespaces = mounts_under(env.daemon.run_dir)
            try:
                more = env.run_pod()
            except grpc.RpcError as error:
                assert_refused_for_space(error, disk, "running pod sandbox test/pod-")
                outcomes.append(error.details())
                listed = runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items
                assert {p.id for p in listed} == pods
                assert set(os.listdir(root / "pods")) == pod_dirs
                assert mounts_under(env.daemon.run_dir) == namespaces
            else:
                outcomes.append("pod ran")
                env.remove_pod(more)
            assert_still_serving(env)
    finally:
        env.remove_pod(pod)


def make_room_in_database(root: Path) -> None:
    """Leave the daemon's database with free pages and a long WAL to reuse, so that its
    commits need no new blocks and a full disk first hits the files of a create."""
    connection = sqlite3.connect(root / "crisp.db")
    try:
        with connection:
            connection.execute("CREATE TABLE padding (data BLOB)")
            connection.executemany("INSERT INTO padding VALUES (?)",
                                   [(os.urandom(4096),) for _ in range(1024)])
        with connection:
            connection.execute("DROP TABLE padding")
        connection.execute("PRAGMA wal_checkpoint(RESTART)")
    finally:
        connection.close()


def snapshot_records(root: Path) -> set[str]:
    connection = sqlite3.connect(root / "crisp.db")
    try:
        return {row[0] for row in connection.execute("SELECT key FROM snapshots")}
    finally:
        connection.close()


def test_create_container_when_only_the_database_has_room(env: PodsEnv, disk: Path) -> None:
    root = disk / "root"
    pod = env.run_pod()
    runtime = env.daemon.runtime
    try:
        make_room_in_database(root)
        containers = {c.id for c in
                      runtime.ListContainers(cri_pb2.ListContainersRequest()).containers}
        snapshots, snapshot_dirs = snapshot_records(root), set(os.listdir(root / "containers"))
        in_runc = runc_containers(env)
        request = cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, config=env.container_config("roomy", ["sleep", "600"]),
            sandbox_config=cri_pb2.PodSandboxConfig())
        with filled(disk):
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as caught:
                    runtime.CreateContainer(request)
                assert_refused_for_space(caught.value, disk, "creating container roomy in pod")
                listed = runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
                assert {c.id for c in listed} == containers
                assert set(os.listdir(root / "containers")) == snapshot_dirs
                assert snapshot_records(root) == snapshots
                assert runc_containers(env) == in_runc
            pods = runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items
            pod_dirs, namespaces = set(os.listdir(root / "pods")), mounts_under(env.daemon.run_dir)
            with pytest.raises(grpc.RpcError) as caught:
                env.run_pod()
            assert_refused_for_space(caught.value, disk, "running pod sandbox test/pod-")
            assert runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items == pods
            assert set(os.listdir(root / "pods")) == pod_dirs
            assert mounts_under(env.daemon.run_dir) == namespaces
        assert "OSError: [Errno 28]" in env.daemon.log()  # the files, not the database
        created = runtime.CreateContainer(request).container_id
        runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=created))
        assert env.status(created).status.state == cri_pb2.CONTAINER_RUNNING
    finally:
        env.remove_pod(pod)


def test_database_commits_on_a_full_disk(disk: Path) -> None:
    directory = disk / "db-test"
    directory.mkdir()

    async def scenario() -> None:
        db = await Database.open(directory / "crisp.db")
        try:
            records = Records(db, "images")
            await records.put("kept", {"id": "kept"})
            with filled(disk):
                written = 0
                with pytest.raises(DiskFull) as caught:
                    while written < 10_000:  # the WAL has room for some; then it must grow
                        await records.put(f"more-{written}", {"id": "x", "pad": "y" * 65536})
                        written += 1
                assert f"no space left on the filesystem at {disk} (" in str(caught.value)
                assert "crisp's database" in str(caught.value)
                assert await records.get(f"more-{written}") is None  # rolled back
                assert await records.get("kept") == {"id": "kept"}
            await records.put("after", {"id": "after"})  # works again once there is space
        finally:
            await db.close()
        db = await Database.open(directory / "crisp.db")
        try:
            records = Records(db, "images")
            assert await records.get("kept") == {"id": "kept"}
            assert await records.get("after") == {"id": "after"}
            assert len(await records.find()) == written + 2
        finally:
            await db.close()

    asyncio.run(scenario())
    shutil.rmtree(directory)
