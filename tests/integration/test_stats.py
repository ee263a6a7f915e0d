"""Container and pod stats and metrics through CRI, read while real containers work."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

BURN = ["sh", "-c", "while :; do :; done"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-stats-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def pod(env: PodsEnv) -> Iterator[tuple[str, str, str]]:
    """One pod with a CPU burner and an idle container, shared by the tests here."""
    pod_id = env.run_pod(env.pod_config(labels={"stats": "yes"}))
    burner = env.run_container(pod_id, env.container_config("burner", BURN,
                                                             labels={"role": "burn"}))
    idle = env.run_container(pod_id, env.container_config("idle", ["sleep", "3600"],
                                                          labels={"role": "idle"}))
    yield pod_id, burner, idle
    env.remove_pod(pod_id)


def container_stats(env: PodsEnv, container_id: str) -> Any:
    return env.runtime.ContainerStats(
        cri_pb2.ContainerStatsRequest(container_id=container_id)).stats


def pod_stats(env: PodsEnv, pod_id: str) -> Any:
    return env.runtime.PodSandboxStats(
        cri_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats


def exec_ok(env: PodsEnv, container_id: str, *argv: str) -> str:
    result = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container_id, cmd=list(argv), timeout=10))
    assert result.exit_code == 0, result.stderr
    return str(result.stdout.decode())


def test_cpu_and_memory_grow_while_a_container_burns_cpu(env: PodsEnv,
                                                        pod: tuple[str, str, str]) -> None:
    _, burner, _ = pod
    first = container_stats(env, burner)
    time.sleep(1.0)
    second = container_stats(env, burner)
    assert second.attributes.id == burner
    assert second.attributes.metadata.name == "burner"
    assert second.attributes.labels["role"] == "burn"
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    # A busy loop keeps a core busy; even on a loaded machine it gets more than 1% of one.
    assert second.cpu.usage_nano_cores.value > 10_000_000
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.memory.working_set_bytes.value > 0
    assert second.memory.usage_bytes.value >= second.memory.working_set_bytes.value
    assert second.memory.HasField("rss_bytes") and second.memory.HasField("page_faults")


def test_writable_layer_grows_when_a_file_is_written(env: PodsEnv,
                                                     pod: tuple[str, str, str]) -> None:
    _, _, idle = pod
    before = container_stats(env, idle).writable_layer
    exec_ok(env, idle, "dd", "if=/dev/zero", "of=/data.bin", "bs=64k", "count=16")
    after = container_stats(env, idle).writable_layer
    assert after.used_bytes.value >= before.used_bytes.value + (1 << 20)
    assert after.inodes_used.value > before.inodes_used.value
    assert after.fs_id.mountpoint


def test_pod_stats_report_processes_cpu_and_network_that_grows(
        env: PodsEnv, pod: tuple[str, str, str]) -> None:
    pod_id, burner, idle = pod
    before = pod_stats(env, pod_id)
    ip = env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.network.ip
    gateway = ip.rsplit(".", 1)[0] + ".1"
    # Traffic over the pod's eth0 to the bridge, and over its loopback to itself.
    exec_ok(env, idle, "sh", "-c", f"ping -c 2 -W 1 {gateway} >/dev/null; "
                                   f"ping -c 2 -W 1 127.0.0.1 >/dev/null; true")
    after = pod_stats(env, pod_id)
    assert after.attributes.id == pod_id
    assert after.attributes.labels["stats"] == "yes"
    linux = after.linux
    assert linux.process.process_count.value >= 2  # the burner's sh and the idle sleep
    assert linux.cpu.usage_core_nano_seconds.value > 0
    assert linux.memory.working_set_bytes.value > 0
    assert linux.network.default_interface.name == "eth0"
    eth0_before = before.linux.network.default_interface
    eth0_after = linux.network.default_interface
    assert eth0_after.tx_bytes.value > eth0_before.tx_bytes.value
    assert eth0_after.rx_bytes.value > eth0_before.rx_bytes.value
    loopback = {i.name: i for i in linux.network.interfaces}["lo"]
    loopback_before = {i.name: i for i in before.linux.network.interfaces}["lo"]
    assert loopback.rx_bytes.value > loopback_before.rx_bytes.value
    assert {c.attributes.id for c in linux.containers} == {burner, idle}


def test_list_stats_filter_like_list_calls(env: PodsEnv, pod: tuple[str, str, str]) -> None:
    pod_id, burner, idle = pod
    other = env.run_pod()
    try:
        env.run_container(other, env.container_config("elsewhere", ["sleep", "3600"]))
        by_pod = env.runtime.ListContainerStats(cri_pb2.ListContainerStatsRequest(
            filter=cri_pb2.ContainerStatsFilter(pod_sandbox_id=pod_id))).stats
        assert {s.attributes.id for s in by_pod} == {burner, idle}
        by_label = env.runtime.ListContainerStats(cri_pb2.ListContainerStatsRequest(
            filter=cri_pb2.ContainerStatsFilter(label_selector={"role": "idle"}))).stats
        assert [s.attributes.id for s in by_label] == [idle]
        everything = env.runtime.ListPodSandboxStats(cri_pb2.ListPodSandboxStatsRequest()).stats
        assert {s.attributes.id for s in everything} == {pod_id, other}
        labelled = env.runtime.ListPodSandboxStats(cri_pb2.ListPodSandboxStatsRequest(
            filter=cri_pb2.PodSandboxStatsFilter(label_selector={"stats": "yes"}))).stats
        assert [s.attributes.id for s in labelled] == [pod_id]
    finally:
        env.remove_pod(other)
    for call, request in (
        (env.runtime.ContainerStats, cri_pb2.ContainerStatsRequest(container_id="nope")),
        (env.runtime.PodSandboxStats, cri_pb2.PodSandboxStatsRequest(pod_sandbox_id="nope")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_are_described_and_agree_with_stats(env: PodsEnv,
                                                    pod: tuple[str, str, str]) -> None:
    pod_id, burner, idle = pod
    descriptors = {d.name: d for d in env.runtime.ListMetricDescriptors(
        cri_pb2.ListMetricDescriptorsRequest()).descriptors}
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_memory_usage_bytes", "container_fs_usage_bytes",
                 "container_network_receive_bytes_total",
                 "container_network_transmit_bytes_total"):
        assert name in descriptors, name
        assert descriptors[name].help
    assert list(descriptors["container_network_receive_bytes_total"].label_keys) == ["interface"]
    container_keys = list(descriptors["container_fs_usage_bytes"].label_keys)

    cpu_before = container_stats(env, burner).cpu.usage_core_nano_seconds.value
    fs_before = container_stats(env, idle).writable_layer.used_bytes.value
    metrics = env.runtime.ListPodSandboxMetrics(cri_pb2.ListPodSandboxMetricsRequest())
    stats = pod_stats(env, pod_id)
    cpu_after = container_stats(env, burner).cpu.usage_core_nano_seconds.value
    (ours,) = [m for m in metrics.pod_metrics if m.pod_sandbox_id == pod_id]
    for metric in ours.metrics:
        assert metric.name in descriptors
        assert len(metric.label_values) == len(descriptors[metric.name].label_keys)
    network = {(m.name, m.label_values[0]): m for m in ours.metrics}
    rx = network["container_network_receive_bytes_total", "eth0"]
    assert rx.metric_type == cri_pb2.COUNTER
    assert 0 < rx.value.value <= stats.linux.network.default_interface.rx_bytes.value
    by_container = {c.container_id: {m.name: m for m in c.metrics}
                    for c in ours.container_metrics}
    assert set(by_container) == {burner, idle}
    burner_cpu = by_container[burner]["container_cpu_usage_seconds_total"]
    assert cpu_before // 10**9 <= burner_cpu.value.value <= cpu_after // 10**9
    fs = by_container[idle]["container_fs_usage_bytes"]
    assert fs.value.value == fs_before  # the idle container wrote nothing in between
    labels = dict(zip(container_keys, fs.label_values, strict=True))
    assert labels["id"] == idle and labels["container"] == "idle"
    assert by_container[idle]["container_memory_working_set_bytes"].metric_type == cri_pb2.GAUGE
