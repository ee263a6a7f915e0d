"""Image volumes (KEP-4639) on a real daemon: an image's root filesystem mounted read-only.

The volume image is a small two-layer one of its own (so removing it touches no other test):
its files must show in the container, writes must fail, image_sub_path must pick a directory
and refuse escapes, ContainerStatus must name the image and its id, and RemoveImage must wait
until no container mounts it. The volume's overlay goes with the container.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support import image_builder as ib
from tests.support.pods import PodsEnv, assert_no_leaks, known_ids, mounts_under, pods_environment

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]
TARGET = "/mnt/image-volume"


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-imgvol-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def volume_image(env: PodsEnv) -> str:
    """An image with data in two layers, a symlink out of it, and a sub-directory."""
    lower = ib.LayerBuilder().dir("data").file("data/lower.txt", b"from the lower layer\n")
    upper = (ib.LayerBuilder().dir("data").dir("data/sub")
             .file("data/sub/upper.txt", b"from the upper layer\n")
             .symlink("escape", "/etc"))
    image = ib.build_image([ib.make_layer(lower), ib.make_layer(upper)])
    ib.push_image(env.registry, "test/volume", "latest", image)
    name = f"{env.registry.removeprefix('http://')}/test/volume:latest"
    env.daemon.images.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=name)))
    return name


def _volume(image: str, sub_path: str = "", readonly: bool = True) -> cri_pb2.Mount:
    return cri_pb2.Mount(container_path=TARGET, readonly=readonly,
                         image=cri_pb2.ImageSpec(image=image), image_sub_path=sub_path)


def _create(env: PodsEnv, pod: str, mount: cri_pb2.Mount) -> str:
    config = env.container_config("vol", SLEEP, mounts=[mount])
    return str(env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod, config=config)).container_id)


def _exec(env: PodsEnv, container_id: str, *argv: str) -> cri_pb2.ExecSyncResponse:
    return env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container_id, cmd=list(argv), timeout=10))


def test_image_volume_is_mounted_read_only_and_reported(
        env: PodsEnv, volume_image: str) -> None:
    pod = env.run_pod()
    try:
        container_id = _create(env, pod, _volume(volume_image))
        env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        out = _exec(env, container_id, "cat", f"{TARGET}/data/lower.txt",
                    f"{TARGET}/data/sub/upper.txt")
        assert out.exit_code == 0, out.stderr
        assert out.stdout == b"from the lower layer\nfrom the upper layer\n"
        write = _exec(env, container_id, "touch", f"{TARGET}/data/new")
        assert write.exit_code != 0
        assert b"Read-only" in write.stderr
        image_id = env.daemon.images.ImageStatus(cri_pb2.ImageStatusRequest(
            image=cri_pb2.ImageSpec(image=volume_image))).image.id
        (mount,) = [m for m in env.status(container_id).status.mounts
                    if m.container_path == TARGET]
        assert (mount.image.image, mount.image.image_ref, mount.readonly) == (
            volume_image, image_id, True)
        with pytest.raises(grpc.RpcError) as busy:
            env.daemon.images.RemoveImage(cri_pb2.RemoveImageRequest(
                image=cri_pb2.ImageSpec(image=volume_image)))
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert container_id in (busy.value.details() or "")
        volume_mounts = [m for m in mounts_under(Path(env.daemon.root))
                         if f"{container_id}.vol0" in m]
        assert volume_mounts, "the image volume's overlay is not mounted"
        env.runtime.StopContainer(cri_pb2.StopContainerRequest(
            container_id=container_id, timeout=0))
        env.runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))
        assert not [m for m in mounts_under(Path(env.daemon.root))
                    if f"{container_id}.vol0" in m]
    finally:
        env.remove_pod(pod)


def test_image_sub_path_mounts_that_directory(env: PodsEnv, volume_image: str) -> None:
    pod = env.run_pod()
    try:
        container_id = _create(env, pod, _volume(volume_image, "data/sub"))
        env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        out = _exec(env, container_id, "ls", TARGET)
        assert out.stdout.split() == [b"upper.txt"], out
    finally:
        env.remove_pod(pod)


@pytest.mark.parametrize(("mount", "code", "words"), [
    (lambda image: _volume(image, "nowhere"), grpc.StatusCode.NOT_FOUND, "does not exist"),
    (lambda image: _volume(image, "escape"), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    (lambda image: _volume(image, "../etc"), grpc.StatusCode.INVALID_ARGUMENT, ".."),
    (lambda image: _volume(image, readonly=False), grpc.StatusCode.INVALID_ARGUMENT,
     "readonly"),
    (lambda image: _volume("localhost:1/never/pulled:1"), grpc.StatusCode.NOT_FOUND,
     "never/pulled"),
], ids=["missing-sub-path", "symlink-escape", "dot-dot", "writable", "not-pulled"])
def test_bad_image_volumes_are_refused(env: PodsEnv, volume_image: str, mount: object,
                                       code: grpc.StatusCode, words: str) -> None:
    pod = env.run_pod()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _create(env, pod, mount(volume_image))  # type: ignore[operator]
        assert refused.value.code() == code, refused.value.details()
        assert words in (refused.value.details() or "")
        assert not [m for m in mounts_under(Path(env.daemon.root)) if ".vol" in m]
    finally:
        env.remove_pod(pod)


def _crash_inside(env: PodsEnv, failpoint: str, operation: Callable[[], object]) -> None:
    """Restart crisp armed with ``failpoint``, run ``operation`` into it, restart clean."""
    daemon = env.daemon
    daemon.stop()
    os.environ["CRISP_FAILPOINTS"] = failpoint
    try:
        daemon.start()
    finally:
        del os.environ["CRISP_FAILPOINTS"]
    with pytest.raises(grpc.RpcError) as error:
        operation()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert daemon.process is not None
    daemon.process.wait(timeout=10)
    daemon.kill()
    daemon.start()


def _volume_leftovers(env: PodsEnv) -> list[str]:
    snapshots = Path(env.daemon.root) / "containers"
    return ([m for m in mounts_under(Path(env.daemon.root)) if ".vol" in m]
            + [p.name for p in snapshots.glob("*.vol*")])


def test_crash_inside_create_leaves_no_image_volume(env: PodsEnv, volume_image: str) -> None:
    pod = env.run_pod()
    try:
        _crash_inside(env, "container.create.monitor",
                      lambda: _create(env, pod, _volume(volume_image)))
        assert not known_ids(env)[1]
        assert not _volume_leftovers(env)
        assert_no_leaks(env)
    finally:
        env.remove_pod(pod)


def test_crash_inside_remove_finishes_removing_the_image_volume(
        env: PodsEnv, volume_image: str) -> None:
    pod = env.run_pod()
    try:
        container_id = _create(env, pod, _volume(volume_image))
        assert _volume_leftovers(env)
        assert_no_leaks(env)
        _crash_inside(env, "container.destroy.runtime", lambda: env.runtime.RemoveContainer(
            cri_pb2.RemoveContainerRequest(container_id=container_id)))
        assert container_id not in known_ids(env)[1]
        assert not _volume_leftovers(env)
    finally:
        env.remove_pod(pod)


def test_image_can_be_removed_once_its_containers_are_gone(
        env: PodsEnv, volume_image: str) -> None:
    env.daemon.images.RemoveImage(cri_pb2.RemoveImageRequest(
        image=cri_pb2.ImageSpec(image=volume_image)))
