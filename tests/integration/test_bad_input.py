"""Bad input gets a status a person can act on, never UNKNOWN, from a real daemon.

Each case was once answered as "crisp failed unexpectedly": out-of-range enums, filters with
unknown values, layer entries the kernel refuses, malformed archive indexes, bind mounts with
relative or missing host paths. Every test checks the code and that the daemon still serves.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2, crisp_images_pb2
from tests.support import image_builder as ib
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-bad-input-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture
def pod(env: PodsEnv) -> Iterator[tuple[str, cri_pb2.PodSandboxConfig]]:
    config = env.pod_config()
    pod_id = env.run_pod(config)
    yield pod_id, config
    env.remove_pod(pod_id)


def _code(call: grpc.RpcError) -> grpc.StatusCode:
    return call.code()  # type: ignore[attr-defined, no-any-return]


def _refused(env: PodsEnv, method: str, request: object,
             code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    stub = env.daemon.images if method in {"PullImage", "StreamImages"} else env.runtime
    with pytest.raises(grpc.RpcError) as error:
        answer = getattr(stub, method)(request, timeout=30)
        if method.startswith("Stream"):
            list(answer)
    assert _code(error.value) == code, error.value.details()  # type: ignore[attr-defined]
    details: str = error.value.details()  # type: ignore[attr-defined]
    assert "unexpectedly" not in details
    env.runtime.Version(cri_pb2.VersionRequest(), timeout=5)
    return details


def test_an_unknown_namespace_mode_is_an_invalid_argument(env: PodsEnv) -> None:
    config = env.pod_config()
    config.linux.security_context.namespace_options.network = 8  # type: ignore[assignment]
    details = _refused(env, "RunPodSandbox", cri_pb2.RunPodSandboxRequest(config=config))
    assert "network is 8, which is not a NamespaceMode" in details
    assert env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items == []


def test_an_unknown_mount_propagation_is_an_invalid_argument(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig]) -> None:
    pod_id, pod_config = pod
    config = env.container_config("c", ["true"])
    config.mounts.add(container_path="/data", host_path="/tmp", propagation=7)
    details = _refused(env, "CreateContainer", cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
    assert "propagation is 7, which is not a MountPropagation" in details


def test_list_filters_with_unknown_states_match_nothing(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig]) -> None:
    pod_id, _ = pod
    env.run_container(pod_id, env.container_config("sleeper", ["sleep", "60"]))
    containers = cri_pb2.ListContainersRequest()
    containers.filter.state.state = 8  # type: ignore[assignment]
    assert env.runtime.ListContainers(containers).containers == []
    sandboxes = cri_pb2.ListPodSandboxRequest()
    sandboxes.filter.state.state = 8  # type: ignore[assignment]
    assert env.runtime.ListPodSandbox(sandboxes).items == []
    assert len(env.runtime.ListContainers(cri_pb2.ListContainersRequest()).containers) == 1


def test_stream_images_is_unimplemented_like_the_other_streams(env: PodsEnv) -> None:
    details = _refused(env, "StreamImages", cri_pb2.StreamImagesRequest(),
                       grpc.StatusCode.UNIMPLEMENTED)
    assert "ImageService/StreamImages" in details


def test_nul_bytes_are_invalid_arguments(env: PodsEnv) -> None:
    config = env.pod_config()
    config.metadata.name = "web\0x"
    assert "NUL" in _refused(env, "RunPodSandbox", cri_pb2.RunPodSandboxRequest(config=config))
    request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image="busybox\0:1"))
    assert "NUL" in _refused(env, "PullImage", request)


@pytest.mark.parametrize("host_path", ["relative/dir", "./x"])
def test_a_relative_bind_mount_host_path_is_an_invalid_argument(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], host_path: str) -> None:
    pod_id, pod_config = pod
    config = env.container_config("c", ["true"])
    config.mounts.add(container_path="/data", host_path=host_path)
    details = _refused(env, "CreateContainer", cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
    assert "must be an absolute path" in details


def test_a_missing_bind_mount_host_path_is_created(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], tmp_path: Path) -> None:
    pod_id, pod_config = pod
    missing = tmp_path / "not" / "yet"
    config = env.container_config("c", ["sh", "-c", "echo made > /data/file"])
    config.mounts.add(container_path="/data", host_path=str(missing))
    container_id = env.run_container(pod_id, config, pod_config)
    assert env.wait_exited(container_id).exit_code == 0
    assert (missing / "file").read_text() == "made\n"


# Layers the kernel refuses to unpack -------------------------------------------------------

_BAD_LAYERS = {
    "long-name": ib.LayerBuilder().file("n" * 300, "x"),
    "long-path": ib.LayerBuilder().file("/".join(["d" * 200] * 21) + "/f", "x"),
    "bad-capability": ib.LayerBuilder().file("f", "x", xattrs={"security.capability": "zz"}),
}


@pytest.mark.parametrize("kind", sorted(_BAD_LAYERS))
def test_a_pulled_layer_the_kernel_refuses_is_an_invalid_argument(
        env: PodsEnv, kind: str) -> None:
    image = ib.build_image([ib.make_layer(_BAD_LAYERS[kind])])
    ib.push_image(env.registry, f"bad/{kind}", "v1", image)
    reference = f"{env.registry.removeprefix('http://')}/bad/{kind}:v1"
    details = _refused(env, "PullImage",
                       cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference)))
    assert "cannot be unpacked" in details
    listed = env.daemon.images.ListImages(cri_pb2.ListImagesRequest()).images
    assert not any(reference in i.repo_tags for i in listed)


def _import(env: PodsEnv, archive: bytes) -> crisp_images_pb2.ImportResponse:
    requests = [crisp_images_pb2.ImportRequest(header=crisp_images_pb2.ImportHeader()),
                crisp_images_pb2.ImportRequest(data=archive)]
    return env.daemon.crisp_images.Import(iter(requests), timeout=30)


def _import_refused(env: PodsEnv, archive: bytes) -> str:
    with pytest.raises(grpc.RpcError) as error:
        _import(env, archive)
    assert _code(error.value) == grpc.StatusCode.INVALID_ARGUMENT, \
        error.value.details()  # type: ignore[attr-defined]
    env.runtime.Version(cri_pb2.VersionRequest(), timeout=5)
    return error.value.details()  # type: ignore[attr-defined, no-any-return]


def test_an_imported_layer_the_kernel_refuses_is_an_invalid_argument(env: PodsEnv) -> None:
    image = ib.build_image([ib.make_layer(_BAD_LAYERS["long-name"], "none")])
    archive = ib.docker_save_archive(image, ["bad/import:v1"])
    assert "cannot be unpacked" in _import_refused(env, archive)


@pytest.mark.parametrize(("files", "message"), [
    ({"manifest.json": b"{not json"}, "manifest.json in the archive is not valid JSON"),
    ({"manifest.json": b'[1, "x"]'}, "manifest.json entry 0 is not an object"),
    ({"manifest.json": b'[{"Layers": []}]'}, "manifest.json entry 0 has no Config"),
    ({"manifest.json": b'[{"Config": "c.json", "Layers": [7]}]', "c.json": b"{}"},
     "Layers must be a list of strings"),
    ({"index.json": b'{"manifests": {}}'}, "not an object with a manifests list"),
    ({"index.json": json.dumps({"manifests": [{"digest": "sha256:" + "0" * 64,
                                               "size": "x"}]}).encode()},
     "lacks a valid digest or size"),
    ({"index.json": b'{"manifests": [{"size": 3}]}'}, "lacks a valid digest or size"),
    ({"index.json": b'{"manifests": [{"digest": "sha256:../../x", "size": 3}]}'},
     "digest"),
], ids=["not-json", "not-objects", "no-config", "layer-not-string", "manifests-not-list",
        "size-not-int", "no-digest", "digest-climbs"])
def test_malformed_archive_indexes_are_invalid_arguments(
        env: PodsEnv, files: dict[str, bytes], message: str) -> None:
    assert message in _import_refused(env, ib.tar_bytes(files))
