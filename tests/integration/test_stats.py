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


def test_the_polled_list_calls_share_one_reading(env: PodsEnv,
                                                  pod: tuple[str, str, str]) -> None:
    pod_id, burner, _ = pod
    began = time.monotonic()
    pods = env.runtime.ListPodSandboxStats(cri_pb2.ListPodSandboxStatsRequest()).stats
    listed = env.runtime.ListContainerStats(cri_pb2.ListContainerStatsRequest()).stats
    in_pod = {c.attributes.id: c for p in pods if p.attributes.id == pod_id
              for c in p.linux.containers}
    in_list = {c.attributes.id: c for c in listed}
    again = env.runtime.ListPodSandboxStats(cri_pb2.ListPodSandboxStatsRequest()).stats
    took = time.monotonic() - began
    if took < 1.5:  # the kubelet's round: the second call reuses the first one's reading
        assert in_list[burner].cpu.timestamp == in_pod[burner].cpu.timestamp
        assert (in_list[burner].cpu.usage_core_nano_seconds.value
                == in_pod[burner].cpu.usage_core_nano_seconds.value)
        # Pods' own cgroups and interfaces too, not only their containers'.
        first = next(p for p in pods if p.attributes.id == pod_id).linux
        later = next(p for p in again if p.attributes.id == pod_id).linux
        assert later.cpu.timestamp == first.cpu.timestamp
        assert later.network == first.network
    # A call about one container reads it now.
    single = container_stats(env, burner)
    assert single.cpu.timestamp > in_list[burner].cpu.timestamp


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


def test_every_pod_of_a_list_reports_its_own_network(env: PodsEnv,
                                                      pod: tuple[str, str, str]) -> None:
    pod_id, _, _ = pod
    empty = env.run_pod()  # no process in its namespace: read through nsenter
    try:
        stats = {s.attributes.id: s for s in env.runtime.ListPodSandboxStats(
            cri_pb2.ListPodSandboxStatsRequest()).stats}
        interfaces = {pid: {i.name for i in stats[pid].linux.network.interfaces}
                      for pid in (pod_id, empty)}
        assert interfaces[pod_id] >= {"eth0", "lo"} and interfaces[empty] >= {"eth0", "lo"}
        assert stats[empty].linux.network.default_interface.name == "eth0"
        assert not stats[empty].linux.containers
        # The two pods' eth0 are different interfaces: the one with traffic has its own.
        assert (stats[pod_id].linux.network.default_interface.rx_bytes.value
                != stats[empty].linux.network.default_interface.rx_bytes.value)
    finally:
        env.remove_pod(empty)


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


CADVISOR_CONTAINER_METRICS = {
    "container_blkio_device_usage_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total", "container_file_descriptors",
    "container_fs_inodes_free", "container_fs_inodes_total", "container_fs_limit_bytes",
    "container_fs_reads_bytes_total", "container_fs_reads_total", "container_fs_usage_bytes",
    "container_fs_writes_bytes_total", "container_fs_writes_total",
    "container_hugetlb_max_usage_bytes", "container_hugetlb_usage_bytes",
    "container_last_seen", "container_memory_cache", "container_memory_failcnt",
    "container_memory_failures_total", "container_memory_kernel_usage",
    "container_memory_mapped_file", "container_memory_max_usage_bytes",
    "container_memory_rss", "container_memory_swap", "container_memory_usage_bytes",
    "container_memory_working_set_bytes", "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total", "container_processes",
    "container_sockets", "container_spec_cpu_period", "container_spec_cpu_quota",
    "container_spec_cpu_shares", "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes", "container_start_time_seconds",
    "container_threads", "container_threads_max", "container_ulimits_soft",
}
"""The per-container series the kubelet's /metrics/cadvisor shows (network ones aside)."""

NOT_ALWAYS_ACCOUNTED = {
    # Only with the hugetlb controller, which this kind of host may not mount.
    "container_hugetlb_max_usage_bytes", "container_hugetlb_usage_bytes",
    # Only once the container did block I/O the blkio/io controller saw.
    "container_blkio_device_usage_total", "container_fs_reads_bytes_total",
    "container_fs_reads_total", "container_fs_writes_bytes_total", "container_fs_writes_total",
}

MEMORY_LIMIT = 64 << 20


@pytest.fixture(scope="module")
def limited(env: PodsEnv) -> Iterator[tuple[str, str, int]]:
    """A pod whose only container burns CPU under a 20% quota: (pod, container, start)."""
    started = time.time()
    pod_id = env.run_pod()
    config = env.container_config("limited", BURN)
    config.linux.resources.CopyFrom(cri_pb2.LinuxContainerResources(
        cpu_period=100_000, cpu_quota=20_000, cpu_shares=512,
        memory_limit_in_bytes=MEMORY_LIMIT, memory_swap_limit_in_bytes=MEMORY_LIMIT))
    container_id = env.run_container(pod_id, config)
    yield pod_id, container_id, int(started)
    env.remove_pod(pod_id)


def container_metrics(env: PodsEnv, pod_id: str, container_id: str) -> dict[str, Any]:
    """name -> metric of one container (first series of each name), labels checked."""
    descriptors = {d.name: list(d.label_keys) for d in env.runtime.ListMetricDescriptors(
        cri_pb2.ListMetricDescriptorsRequest()).descriptors}
    response = env.runtime.ListPodSandboxMetrics(cri_pb2.ListPodSandboxMetricsRequest())
    (pod,) = [p for p in response.pod_metrics if p.pod_sandbox_id == pod_id]
    (ours,) = [c for c in pod.container_metrics if c.container_id == container_id]
    metrics: dict[str, Any] = {}
    for metric in ours.metrics:
        assert len(metric.label_values) == len(descriptors[metric.name]), metric.name
        metrics.setdefault(metric.name, metric)
    return metrics


def test_every_cadvisor_metric_is_described(env: PodsEnv) -> None:
    descriptors = {d.name: d for d in env.runtime.ListMetricDescriptors(
        cri_pb2.ListMetricDescriptorsRequest()).descriptors}
    assert not CADVISOR_CONTAINER_METRICS - set(descriptors)
    for descriptor in descriptors.values():
        assert descriptor.help and descriptor.label_keys, descriptor.name


def test_metrics_of_a_running_container_are_real(env: PodsEnv,
                                                 limited: tuple[str, str, int]) -> None:
    pod_id, container_id, started = limited
    first = container_metrics(env, pod_id, container_id)
    time.sleep(1.0)
    second = container_metrics(env, pod_id, container_id)
    now = time.time()
    missing = CADVISOR_CONTAINER_METRICS - NOT_ALWAYS_ACCOUNTED - set(second)
    if not Path("/proc/pressure").is_dir():
        missing -= {name for name in missing if name.startswith("container_pressure_")}
    assert not missing

    def value(metrics: dict[str, Any], name: str) -> int:
        return int(metrics[name].value.value)

    # A 100 ms period elapses ten times a second while the loop runs; a 20% quota throttles.
    periods = value(second, "container_cpu_cfs_periods_total")
    assert periods >= value(first, "container_cpu_cfs_periods_total") + 5
    assert value(second, "container_cpu_cfs_throttled_periods_total") > 0
    assert value(second, "container_threads") >= 1
    assert value(second, "container_file_descriptors") > 0
    assert value(second, "container_processes") >= 1
    assert abs(value(second, "container_last_seen") - now) <= 5
    assert started - 1 <= value(second, "container_start_time_seconds") <= now
    assert value(second, "container_spec_cpu_period") == 100_000
    assert value(second, "container_spec_cpu_quota") == 20_000
    assert value(second, "container_spec_cpu_shares") == 512
    assert value(second, "container_spec_memory_limit_bytes") == MEMORY_LIMIT
    assert value(second, "container_spec_memory_swap_limit_bytes") == MEMORY_LIMIT
    assert value(second, "container_memory_max_usage_bytes") >= value(
        second, "container_memory_usage_bytes") > 0
    assert value(second, "container_fs_limit_bytes") > 0
    assert value(second, "container_fs_inodes_total") >= value(
        second, "container_fs_inodes_free") > 0
    fs_labels = list(second["container_fs_limit_bytes"].label_values)
    assert fs_labels[1] == container_id and fs_labels[-1]  # device named
    assert list(second["container_ulimits_soft"].label_values)[-1] == "max_open_files"
