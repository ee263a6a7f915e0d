"""CRI fields that name host paths or reach host programs stay inside crisp's directories.

Each test tries what an attacker with access to the CRI socket would: a log_path that points
out of the pod's log directory (absolute, with '..', through a symlink), and a hostname that
``hostname(1)`` could read as an option. Each checks both the answer and the host.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-escape-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture
def pod(env: PodsEnv) -> Iterator[tuple[str, cri_pb2.PodSandboxConfig]]:
    config = env.pod_config()
    pod_id = env.run_pod(config)
    yield pod_id, config
    env.remove_pod(pod_id)


def _create(env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], log_path: str) -> str:
    pod_id, pod_config = pod
    config = env.container_config("writer", ["sh", "-c", "echo escaped"])
    config.log_path = log_path
    return str(env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)).container_id)


def test_an_absolute_log_path_is_written_beneath_the_log_directory(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], tmp_path: Path) -> None:
    outside = tmp_path / "somewhere" / "else.log"
    container_id = _create(env, pod, str(outside))
    env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
    status = env.wait_exited(container_id)

    log_directory = Path(pod[1].log_directory)
    assert status.log_path == f"{log_directory}{outside}"
    assert "escaped" in Path(status.log_path).read_text()
    assert not outside.exists() and not outside.parent.exists()


@pytest.mark.parametrize("log_path", ["../outside.log", "a/../../outside.log", "bad\0.log"])
def test_a_log_path_that_climbs_out_is_refused(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], log_path: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _create(env, pod, log_path)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (Path(pod[1].log_directory).parent / "outside.log").exists()
    assert not env.runtime.ListContainers(cri_pb2.ListContainersRequest()).containers


def test_a_log_path_through_a_symlink_out_of_the_directory_is_refused(
        env: PodsEnv, pod: tuple[str, cri_pb2.PodSandboxConfig], tmp_path: Path) -> None:
    log_directory = Path(pod[1].log_directory)
    log_directory.mkdir(parents=True, exist_ok=True)
    (log_directory / "link").symlink_to(tmp_path)
    with pytest.raises(grpc.RpcError) as refused:
        _create(env, pod, "link/sub/writer.log")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "symbolic link" in str(refused.value.details())
    assert list(tmp_path.iterdir()) == []


def test_a_log_path_needs_a_log_directory(env: PodsEnv, tmp_path: Path) -> None:
    config = env.pod_config()
    config.log_directory = ""
    pod_id = env.run_pod(config)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _create(env, (pod_id, config), str(tmp_path / "x.log"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(tmp_path.iterdir()) == []
    finally:
        env.remove_pod(pod_id)


@pytest.mark.parametrize("hostname", ["-F/etc/passwd", "--file=/etc/passwd", "a b", "bad\0name",
                                      "under_score", "x" * 65, "-leading", "trailing-", "a..b"])
def test_a_hostname_that_is_not_rfc_1123_is_refused(env: PodsEnv, hostname: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        env.run_pod(env.pod_config(hostname=hostname))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items


def test_a_pod_name_that_is_no_hostname_is_refused_when_it_would_be_the_hostname(
        env: PodsEnv) -> None:
    config = env.pod_config("../../x")
    config.hostname = ""
    with pytest.raises(grpc.RpcError) as refused:
        env.run_pod(config)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod name" in str(refused.value.details())


def test_a_valid_hostname_reaches_the_pod(env: PodsEnv) -> None:
    pod_id = env.run_pod(env.pod_config(hostname="web-1.example"))
    try:
        container_id = env.run_container(pod_id, env.container_config(
            "uname", ["sh", "-c", "hostname; cat /etc/hostname"]))
        status = env.wait_exited(container_id)
        lines = [line.split(" ", 3)[3] for line in
                 Path(status.log_path).read_text().splitlines()]
        assert lines == ["web-1.example", "web-1.example"]
    finally:
        env.remove_pod(pod_id)
