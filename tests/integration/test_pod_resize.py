"""UpdatePodSandboxResources on a real daemon: the pod cgroup files take the new limits.

The kubelet's in-place pod resize sends the containers' sum and the pod overhead; crisp
writes their total into the pod's cgroup parent. Checkpointing stays UNIMPLEMENTED, saying
why.
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
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-resize-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def host() -> CgroupHost:
    return detect_host()


@pytest.fixture
def kubelet_parent(host: CgroupHost) -> Iterator[str]:
    parent = f"/crisp-test-resize/burstable/pod{uuid.uuid4().hex[:12]}"
    yield parent
    remove_cgroup(host, "/crisp-test-resize")


def cgroup_file(host: CgroupHost, controller: str, cgroup: str, name: str) -> str:
    directory = host.controller_dir(controller, cgroup)
    assert directory is not None, f"no {controller} hierarchy on this host"
    return (directory / name).read_text().strip()


def _files(host: CgroupHost) -> tuple[str, str, str, str]:
    if host.is_unified:
        return "cpu.weight", "cpu.max", "", "memory.max"
    return "cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us", "memory.limit_in_bytes"


def test_resize_writes_sum_plus_overhead_into_the_pod_cgroup(
        env: PodsEnv, host: CgroupHost, kubelet_parent: str) -> None:
    config = env.pod_config()
    config.linux.cgroup_parent = kubelet_parent
    pod = env.run_pod(config)
    try:
        env.runtime.UpdatePodSandboxResources(cri_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            overhead=cri_pb2.LinuxContainerResources(
                cpu_shares=24, cpu_quota=10_000, memory_limit_in_bytes=16 << 20),
            resources=cri_pb2.LinuxContainerResources(
                cpu_shares=1000, cpu_quota=40_000, cpu_period=100_000,
                memory_limit_in_bytes=64 << 20)))
        shares, quota, period, memory = _files(host)
        if host.is_unified:
            assert cgroup_file(host, "cpu", kubelet_parent, quota) == "50000 100000"
        else:
            assert cgroup_file(host, "cpu", kubelet_parent, shares) == "1024"
            assert cgroup_file(host, "cpu", kubelet_parent, quota) == "50000"
            assert cgroup_file(host, "cpu", kubelet_parent, period) == "100000"
        assert cgroup_file(host, "memory", kubelet_parent, memory) == str(80 << 20)
        # A second resize shrinks the pod again.
        env.runtime.UpdatePodSandboxResources(cri_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            resources=cri_pb2.LinuxContainerResources(memory_limit_in_bytes=32 << 20)))
        assert cgroup_file(host, "memory", kubelet_parent, memory) == str(32 << 20)
        with pytest.raises(grpc.RpcError) as bad:
            env.runtime.UpdatePodSandboxResources(cri_pb2.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod,
                resources=cri_pb2.LinuxContainerResources(cpu_shares=1)))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cpu_shares" in (bad.value.details() or "")
    finally:
        env.remove_pod(pod)


def test_resize_of_an_unknown_pod_is_not_found(env: PodsEnv) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        env.runtime.UpdatePodSandboxResources(cri_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id="f" * 64,
            resources=cri_pb2.LinuxContainerResources(memory_limit_in_bytes=32 << 20)))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_checkpoint_is_unimplemented_and_says_why(env: PodsEnv) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        env.runtime.CheckpointContainer(cri_pb2.CheckpointContainerRequest(
            container_id="x", location="/tmp/x.tar"))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CRIU" in (refused.value.details() or "")
