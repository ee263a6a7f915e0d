"""Container resources through CRI on a real daemon: limits land in the container's cgroup.

Each test reads the cgroup files runc wrote, on the host (under the pod's cgroup parent) and
from inside the container, rather than trusting what crisp says it asked for.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from crisp.cgroups import CgroupHost, detect_host, remove_cgroup
from tests.integration.conftest import DaemonFactory
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-res-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def host() -> CgroupHost:
    return detect_host()


@pytest.fixture
def kubelet_parent(host: CgroupHost) -> Iterator[str]:
    """A pod cgroup parent named as the kubelet's cgroupfs driver names them."""
    parent = f"/crisp-test-kubepods/burstable/pod{uuid.uuid4().hex[:12]}"
    yield parent
    remove_cgroup(host, "/crisp-test-kubepods")


def cgroup_file(host: CgroupHost, controller: str, cgroup: str, name: str) -> str:
    directory = host.controller_dir(controller, cgroup)
    assert directory is not None, f"no {controller} hierarchy on this host"
    return (directory / name).read_text().strip()


def exec_out(env: PodsEnv, container_id: str, *argv: str) -> str:
    result = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container_id, cmd=list(argv), timeout=10))
    assert result.exit_code == 0, result.stderr
    return str(result.stdout.decode())


def test_cpu_memory_and_cpuset_land_in_the_pods_cgroup_parent(
        env: PodsEnv, host: CgroupHost, kubelet_parent: str) -> None:
    config = env.pod_config()
    config.linux.cgroup_parent = kubelet_parent
    pod = env.run_pod(config)
    try:
        container = env.container_config("limited", SLEEP)
        container.linux.resources.CopyFrom(cri_pb2.LinuxContainerResources(
            cpu_shares=512, cpu_quota=50_000, cpu_period=100_000, cpuset_cpus="0",
            memory_limit_in_bytes=48 << 20))
        container_id = env.run_container(pod, container)
        cgroup = f"{kubelet_parent}/crisp-{container_id}"
        assert cgroup_file(host, "cpu", cgroup, "cpu.cfs_quota_us") == "50000"
        assert cgroup_file(host, "cpu", cgroup, "cpu.cfs_period_us") == "100000"
        assert cgroup_file(host, "cpu", cgroup, "cpu.shares") == "512"
        assert cgroup_file(host, "cpuset", cgroup, "cpuset.cpus") == "0"
        assert cgroup_file(host, "memory", cgroup, "memory.limit_in_bytes") == str(48 << 20)
        # The container's own processes are in that cgroup, and see the limit inside.
        memberships = exec_out(env, container_id, "cat", "/proc/1/cgroup").splitlines()
        assert any(line.split(":", 1)[1] == f"cpu:{cgroup}" for line in memberships), \
            memberships
        assert exec_out(env, container_id, "cat",
                        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip() == "50000"
        limits = env.status(container_id).status.resources.linux
        assert (limits.cpu_quota, limits.cpu_period, limits.cpu_shares) == (50_000, 100_000, 512)
        assert (limits.cpuset_cpus, limits.memory_limit_in_bytes) == ("0", 48 << 20)
    finally:
        env.remove_pod(pod)
    # The kubelet's parent is the kubelet's: crisp removed its container cgroups only.
    directory = host.controller_dir("cpu", kubelet_parent)
    assert directory is not None and directory.is_dir()
    assert not any(p.name.startswith("crisp-") for p in directory.iterdir())


def test_update_resources_is_applied_live_and_shown_in_status(env: PodsEnv,
                                                               host: CgroupHost) -> None:
    pod = env.run_pod()
    try:
        container = env.container_config("updated", SLEEP)
        container.linux.resources.cpu_quota = 30_000
        container.linux.resources.cpu_period = 100_000
        container_id = env.run_container(pod, container)
        # Read once before the update: the limits status keeps must not outlive it.
        assert env.status(container_id).status.resources.linux.cpu_quota == 30_000
        env.runtime.UpdateContainerResources(cri_pb2.UpdateContainerResourcesRequest(
            container_id=container_id, linux=cri_pb2.LinuxContainerResources(
                cpu_quota=70_000, cpu_period=100_000, memory_limit_in_bytes=80 << 20)))
        limits = env.status(container_id).status.resources.linux
        assert (limits.cpu_quota, limits.memory_limit_in_bytes) == (70_000, 80 << 20)
        assert exec_out(env, container_id, "cat",
                        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip() == "70000"
        # Invalid values are refused before runc sees them.
        with pytest.raises(grpc.RpcError) as error:
            env.runtime.UpdateContainerResources(cri_pb2.UpdateContainerResourcesRequest(
                container_id=container_id,
                linux=cri_pb2.LinuxContainerResources(cpu_period=10)))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cpu_period" in str(error.value.details())
    finally:
        env.remove_pod(pod)


def test_a_pod_without_a_parent_gets_its_own_cgroup_removed_with_it(
        env: PodsEnv, host: CgroupHost) -> None:
    pod = env.run_pod()
    container_id = env.run_container(pod, env.container_config("own-parent", SLEEP))
    parent = f"/crisp/pod-{pod}"
    cgroup_dir = host.controller_dir("memory", f"{parent}/crisp-{container_id}")
    assert cgroup_dir is not None and cgroup_dir.is_dir()
    env.remove_pod(pod)
    for controller in ("memory", "cpu", "pids"):
        directory = host.controller_dir(controller, parent)
        assert directory is not None and not directory.exists(), controller


def test_resources_the_host_cannot_honour_are_refused_clearly(env: PodsEnv,
                                                              host: CgroupHost) -> None:
    slice_pod = env.pod_config()
    slice_pod.linux.cgroup_parent = "kubepods-burstable-pod1.slice"
    with pytest.raises(grpc.RpcError) as error:
        env.run_pod(slice_pod)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "systemd" in str(error.value.details())

    pod = env.run_pod()
    try:
        refused: list[tuple[cri_pb2.LinuxContainerResources, str]] = [
            (cri_pb2.LinuxContainerResources(cpu_shares=1), "cpu_shares"),
            (cri_pb2.LinuxContainerResources(cpuset_cpus="3-1"), "cpuset_cpus"),
            (cri_pb2.LinuxContainerResources(oom_score_adj=1001), "oom_score_adj"),
        ]
        if not host.is_unified:
            refused.append((cri_pb2.LinuxContainerResources(unified={"memory.high": "1M"}),
                            "unified"))
        for resources, word in refused:
            config = env.container_config(f"refused-{word}", SLEEP)
            config.linux.resources.CopyFrom(resources)
            with pytest.raises(grpc.RpcError) as error:
                env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod, config=config))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, word
            assert word in str(error.value.details()), word
        # The kubelet sends a zero limit for each hugepage size the node has: fine anywhere.
        config = env.container_config("hugepages-zero", ["true"])
        config.linux.resources.hugepage_limits.append(
            cri_pb2.HugepageLimit(page_size="2MB", limit=0))
        assert env.wait_exited(env.run_container(pod, config)).exit_code == 0
        if not host.has_controller("hugetlb"):
            config = env.container_config("hugepages", ["true"])
            config.linux.resources.hugepage_limits.append(
                cri_pb2.HugepageLimit(page_size="2MB", limit=4 << 20))
            with pytest.raises(grpc.RpcError) as error:
                env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod, config=config))
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hugetlb" in str(error.value.details())
    finally:
        env.remove_pod(pod)


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs on this host")
def test_the_systemd_driver_without_systemd_is_reported_not_hidden(
        make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('cgroup_manager = "systemd"\n')
    conditions = {c.type: c for c in daemon.runtime.Status(
        cri_pb2.StatusRequest()).status.conditions}
    ready = conditions["RuntimeReady"]
    assert not ready.status
    assert ready.reason == "CgroupDriverUnavailable"
    assert "systemd" in ready.message and "cgroupfs" in ready.message
    with pytest.raises(grpc.RpcError) as error:
        daemon.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
            config=cri_pb2.PodSandboxConfig(metadata=cri_pb2.PodSandboxMetadata(
                name="p", uid="u", namespace="n"))))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "systemd is not running" in str(error.value.details())
