"""Pod sandboxes through CRI on a real daemon: namespaces, pod files, infra, stop and remove."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, mounts_under, pods_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-pods-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


def _output(env: PodsEnv, pod_id: str, name: str, script: str, **fields: object) -> str:
    container_id = env.run_container(pod_id, env.container_config(name, ["sh", "-c", script],
                                                                   **fields))
    status = env.wait_exited(container_id)
    assert status.exit_code == 0, Path(status.log_path).read_text()
    lines = Path(status.log_path).read_text().splitlines()
    return "\n".join(line.split(" ", 3)[3] for line in lines)


def test_pod_gets_its_own_namespaces_hostname_dns_and_shm(env: PodsEnv) -> None:
    dns = cri_pb2.DNSConfig(servers=["10.96.0.10"], searches=["test.svc.cluster.local"],
                            options=["ndots:5"])
    config = env.pod_config("files", hostname="files-host", dns=dns)
    pod_id = env.run_pod(config)
    try:
        script = ("hostname; cat /etc/resolv.conf; grep files-host /etc/hosts; "
                  "for k in net ipc uts; do readlink /proc/self/ns/$k; done; "
                  "grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3; echo shared > /dev/shm/mark")
        first = _output(env, pod_id, "first", script).splitlines()
        assert first[0] == "files-host"
        assert first[1:4] == ["search test.svc.cluster.local", "nameserver 10.96.0.10",
                              "options ndots:5"]
        assert "files-host" in first[4]
        namespaces = first[5:8]
        host = [os.readlink(f"/proc/self/ns/{kind}") for kind in ("net", "ipc", "uts")]
        assert all(mine != theirs for mine, theirs in zip(namespaces, host, strict=True))
        assert first[8] == "tmpfs"
        second = _output(env, pod_id, "second",
                         "for k in net ipc uts; do readlink /proc/self/ns/$k; done; "
                         "cat /dev/shm/mark").splitlines()
        assert second[:3] == namespaces
        assert second[3] == "shared"
        # The start steps the benchmark splits a pod start into were timed.
        info = env.runtime.Status(cri_pb2.StatusRequest(verbose=True)).info
        steps = json.loads(info["steps"])
        for name in ("pod: namespaces", "pod: files", "container: conmon + runc create",
                     "conmon: spawn", "conmon: runc create",
                     "container: runc start", "container: state commit"):
            assert steps[name]["count"] >= 1 and steps[name]["seconds"] > 0, name
    finally:
        env.remove_pod(pod_id)


def test_pod_status_reports_everything_the_kubelet_reads(env: PodsEnv) -> None:
    config = env.pod_config("status", labels={"app": "status"})
    pod_id = env.run_pod(config)
    try:
        response = env.runtime.PodSandboxStatus(
            cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
        status = response.status
        assert status.id == pod_id
        assert status.state == cri_pb2.SANDBOX_READY
        assert status.created_at > 0
        assert status.metadata.name == "status" and status.metadata.uid == "uid-status"
        assert dict(status.labels) == {"app": "status"}
        assert dict(status.annotations) == {"note": "annotation of status"}
        assert status.runtime_handler == "runc"
        assert status.network.ip.startswith("10.88."), status.network
        assert status.linux.namespaces.options.pid == cri_pb2.CONTAINER
        info = json.loads(response.info["info"])
        assert "pid" in info
    finally:
        env.remove_pod(pod_id)
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_shared_pid_namespace_runs_the_pause_image_as_init(env: PodsEnv) -> None:
    config = env.pod_config("sharedpid", pid=cri_pb2.POD)
    pod_id = env.run_pod(config)
    try:
        info = json.loads(env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True)).info["info"])
        assert info["pid"] > 0
        assert os.path.exists(f"/proc/{info['pid']}")
        output = _output(env, pod_id, "ps", "cat /proc/1/cmdline | tr '\\0' ' '",
                         pid=cri_pb2.POD).strip()
        assert output == "/bin/sleep 2147483647"
    finally:
        env.remove_pod(pod_id)
    assert not os.path.exists(f"/proc/{info['pid']}/ns")


def test_pod_sysctls_apply_to_its_containers(env: PodsEnv) -> None:
    config = env.pod_config("sysctls")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "123"
    pod_id = env.run_pod(config)
    try:
        output = _output(env, pod_id, "read",
                         "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
        assert output == "123"
    finally:
        env.remove_pod(pod_id)


def test_infra_less_pod_has_no_infra_process(env: PodsEnv) -> None:
    pod_id = env.run_pod(env.pod_config("noinfra"))
    try:
        info = json.loads(env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True)).info["info"])
        assert info["pid"] == 0
        assert _output(env, pod_id, "pid1", "echo $$") == "1"
    finally:
        env.remove_pod(pod_id)


def test_host_network_pod_uses_the_host_namespaces(env: PodsEnv) -> None:
    config = env.pod_config("hostnet", network=cri_pb2.NODE, ipc=cri_pb2.NODE)
    pod_id = env.run_pod(config)
    try:
        output = _output(env, pod_id, "ns",
                         "readlink /proc/self/ns/net; readlink /proc/self/ns/ipc",
                         network=cri_pb2.NODE, ipc=cri_pb2.NODE).splitlines()
        assert output == [os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/ipc")]
        status = env.runtime.PodSandboxStatus(
            cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
        assert status.network.ip == ""
    finally:
        env.remove_pod(pod_id)


def test_reused_metadata_is_already_exists_naming_the_holder(env: PodsEnv) -> None:
    config = env.pod_config("twice")
    pod_id = env.run_pod(config)
    try:
        with pytest.raises(grpc.RpcError) as error:
            env.run_pod(config)
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert pod_id in error.value.details()
        pods = env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items
        assert [p.id for p in pods if p.metadata.name == "twice"] == [pod_id]
    finally:
        env.remove_pod(pod_id)
    # Once removed, the name is free again.
    env.remove_pod(env.run_pod(config))


def test_list_filters_by_id_state_and_labels(env: PodsEnv) -> None:
    first = env.run_pod(env.pod_config("list-a", labels={"group": "list", "which": "a"}))
    second = env.run_pod(env.pod_config("list-b", labels={"group": "list", "which": "b"}))
    try:
        env.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=second))

        def listed(**filter_fields: object) -> list[str]:
            request = cri_pb2.ListPodSandboxRequest(
                filter=cri_pb2.PodSandboxFilter(**filter_fields))  # type: ignore[arg-type]
            return [p.id for p in env.runtime.ListPodSandbox(request).items]

        assert listed(label_selector={"group": "list"}) == [first, second]
        assert listed(label_selector={"group": "list", "which": "b"}) == [second]
        assert listed(id=first) == [first]
        assert listed(id=first[:12]) == [first]
        ready = cri_pb2.PodSandboxStateValue(state=cri_pb2.SANDBOX_READY)
        not_ready = cri_pb2.PodSandboxStateValue(state=cri_pb2.SANDBOX_NOTREADY)
        assert listed(label_selector={"group": "list"}, state=ready) == [first]
        assert listed(label_selector={"group": "list"}, state=not_ready) == [second]
    finally:
        env.remove_pod(first)
        env.remove_pod(second)


def test_stop_and_remove_are_idempotent_and_leave_nothing(env: PodsEnv) -> None:
    pod_id = env.run_pod(env.pod_config("idem"))
    env.run_container(pod_id, env.container_config("sleeper", ["sleep", "3600"]))
    base = env.daemon.base
    for _ in range(2):
        env.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    status = env.runtime.PodSandboxStatus(
        cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == cri_pb2.SANDBOX_NOTREADY
    containers = env.runtime.ListContainers(cri_pb2.ListContainersRequest(
        filter=cri_pb2.ContainerFilter(pod_sandbox_id=pod_id))).containers
    assert [c.state for c in containers] == [cri_pb2.CONTAINER_EXITED]
    assert not [m for m in mounts_under(base / "run" / "pods") if pod_id in m]
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=env.container_config("late", ["true"])))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(2):
        env.runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not [m for m in mounts_under(base) if pod_id in m]
    assert not (base / "root" / "pods" / pod_id).exists()
    assert not (base / "run" / "pods" / pod_id).exists()
    assert not env.runtime.ListContainers(cri_pb2.ListContainersRequest(
        filter=cri_pb2.ContainerFilter(pod_sandbox_id=pod_id))).containers
    # Ids that were never there are not errors either.
    env.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id="f" * 64))
    env.runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))


def test_unknown_runtime_handler_is_refused_with_the_configured_ones(env: PodsEnv) -> None:
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
            config=env.pod_config("handler"), runtime_handler="kata"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata" in error.value.details() and "runc" in error.value.details()


def test_invalid_pod_config_is_invalid_argument(env: PodsEnv) -> None:
    config = env.pod_config("bad")
    config.metadata.uid = ""
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uid" in error.value.details()
