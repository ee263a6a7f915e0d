"""Pure stats logic: metrics from readings, CRI stats messages, handler features, resources."""

from __future__ import annotations

import pytest

from crisp.api import cri_pb2
from crisp.cgroups import (
    CgroupHost,
    CgroupMode,
    CgroupUsage,
    ContainerCgroupStats,
    HugepageLimit,
    InterfaceStats,
)
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.handlers import features_of, kernel_version
from crisp.oci.spec import linux_resources
from crisp.pods.metrics import METRIC_DESCRIPTORS, MetricKind, container_samples, pod_metrics
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ImageRuntimeConfig,
    Resources,
    Sandbox,
    SandboxConfig,
    SandboxMetadata,
)
from crisp.pods.stats import ContainerUsage, PodUsage, WritableLayer
from crisp.server.pod_convert import container_status, resources
from crisp.server.stats import container_stats, pod_sandbox_stats


def reading(cpu: int | None = 3_500_000_000, working_set: int | None = 4096,
            processes: int | None = 2) -> ContainerCgroupStats:
    return ContainerCgroupStats(
        timestamp_ns=10, monotonic_ns=5, cpu_usage_core_ns=cpu, memory_usage_bytes=8192,
        memory_working_set_bytes=working_set, memory_available_bytes=None,
        memory_rss_bytes=1024, page_faults=7, major_page_faults=1, swap_usage_bytes=None,
        swap_available_bytes=None, process_count=processes, oom_kills=0,
    )


def container(container_id: str = "c1", name: str = "app") -> Container:
    return Container(
        id=container_id, sandbox_id="s1",
        config=ContainerConfig(metadata=ContainerMetadata(name=name), image="busybox",
                               labels={"l": "v"}),
        image=ImageRuntimeConfig(id="sha256:i", reference="busybox"), created_at=1,
        log_path="", runtime_handler="runc", bundle="/b", rootfs="/rootfs/c1",
    )


def sandbox() -> Sandbox:
    return Sandbox(id="s1", config=SandboxConfig(metadata=SandboxMetadata("p", "u", "ns")),
                   runtime_handler="runc", created_at=1)


def interface(name: str, rx: int) -> InterfaceStats:
    return InterfaceStats(name=name, rx_bytes=rx, rx_packets=2, rx_errors=0, rx_dropped=0,
                          tx_bytes=rx * 2, tx_packets=3, tx_errors=1, tx_dropped=0)


def usage(cgroup: ContainerCgroupStats | None = None) -> ContainerUsage:
    return ContainerUsage(
        container=container(), timestamp_ns=11,
        cgroup=CgroupUsage(cgroup, 250_000_000) if cgroup is not None else None,
        writable_layer=WritableLayer(used_bytes=4096, inodes_used=3, mountpoint="/rootfs/c1"),
    )


def test_descriptors_are_unique_and_cover_every_sample() -> None:
    names = [d.name for d in METRIC_DESCRIPTORS]
    assert len(names) == len(set(names))
    described = {d.name: d for d in METRIC_DESCRIPTORS}
    pod = pod_metrics(PodUsage(sandbox=sandbox(), timestamp_ns=1, cgroup=None,
                               interfaces=[interface("eth0", 100), interface("lo", 5)],
                               containers=[usage(reading())]))
    samples = [*pod.samples, *pod.containers["c1"]]
    for sample in samples:
        assert len(sample.label_values) == len(described[sample.name].label_keys)
        assert sample.kind == described[sample.name].kind
    network = {(s.name, s.label_values): s.value for s in pod.samples}
    assert network["container_network_receive_bytes_total", ("eth0",)] == 100
    assert network["container_network_transmit_bytes_total", ("lo",)] == 10
    assert network["container_network_transmit_errors_total", ("eth0",)] == 1


def test_container_samples_use_cadvisor_names_and_units() -> None:
    samples = {s.name: s for s in container_samples(usage(reading()))}
    assert samples["container_cpu_usage_seconds_total"].value == 3  # whole seconds
    assert samples["container_cpu_usage_seconds_total"].kind is MetricKind.COUNTER
    assert samples["container_memory_working_set_bytes"].value == 4096
    assert samples["container_memory_working_set_bytes"].kind is MetricKind.GAUGE
    assert samples["container_fs_usage_bytes"].value == 4096
    assert samples["container_fs_usage_bytes"].label_values == ("app", "c1", "busybox")
    assert "container_memory_swap" not in samples  # not accounted: left out, not zero


def test_a_container_without_cgroup_reports_only_its_layer() -> None:
    assert {s.name for s in container_samples(usage(None))} == {
        "container_fs_usage_bytes", "container_fs_inodes_used"}
    message = container_stats(usage(None))
    assert not message.HasField("cpu") and not message.HasField("memory")
    assert message.writable_layer.used_bytes.value == 4096
    assert message.attributes.labels["l"] == "v"


def test_container_stats_message_leaves_unaccounted_values_unset() -> None:
    message = container_stats(usage(reading(working_set=None)))
    assert message.cpu.usage_core_nano_seconds.value == 3_500_000_000
    assert message.cpu.usage_nano_cores.value == 250_000_000
    assert not message.memory.HasField("working_set_bytes")
    assert not message.memory.HasField("available_bytes")
    assert message.memory.usage_bytes.value == 8192
    assert not message.swap.HasField("swap_usage_bytes")


def test_pod_stats_message_has_default_interface_and_processes() -> None:
    pod = PodUsage(sandbox=sandbox(), timestamp_ns=1,
                   cgroup=CgroupUsage(reading(processes=5), None),
                   interfaces=[interface("lo", 5), interface("eth0", 100)],
                   containers=[usage(reading())])
    message = pod_sandbox_stats(pod)
    assert message.attributes.metadata.namespace == "ns"
    assert message.linux.process.process_count.value == 5
    assert not message.linux.cpu.HasField("usage_nano_cores")  # one reading: no rate yet
    assert message.linux.network.default_interface.name == "eth0"
    assert [i.name for i in message.linux.network.interfaces] == ["lo", "eth0"]
    assert [c.attributes.id for c in message.linux.containers] == ["c1"]
    bare = pod_sandbox_stats(PodUsage(sandbox=sandbox(), timestamp_ns=1, cgroup=None))
    assert not bare.linux.HasField("network") and not bare.linux.HasField("process")


@pytest.mark.parametrize(("document", "kernel", "rro"), [
    ({"mountOptions": ["ro", "rro"]}, (6, 1), True),
    ({"mountOptions": ["ro", "rro"]}, (5, 11), False),
    ({"mountOptions": ["ro"]}, (6, 1), False),
    ({}, (6, 1), False),
])
def test_handler_features(document: dict[str, list[str]], kernel: tuple[int, int],
                          rro: bool) -> None:
    features = features_of({**document, "linux": {"namespaces": ["user"]}}, kernel)
    assert features.recursive_read_only_mounts is rro
    assert features.user_namespaces is False


def test_kernel_version() -> None:
    assert kernel_version("6.1.0-13-amd64") == (6, 1)
    assert kernel_version("5.12") == (5, 12)
    assert kernel_version("weird") == (0, 0)


def test_resources_are_checked_against_the_host() -> None:
    v1 = CgroupHost(mode=CgroupMode.HYBRID, v1_mounts={"memory": "/m", "cpu": "/c"},
                    swap_accounting=True, hugepage_sizes=("2MB",))
    assert linux_resources(Resources(memory_limit_in_bytes=1 << 26), v1)["memory"] == {
        "limit": 1 << 26, "swap": 1 << 26}
    with pytest.raises(InvalidArgument, match="unified"):
        linux_resources(Resources(unified={"memory.high": "1M"}), v1)
    with pytest.raises(FailedPrecondition, match="hugetlb"):
        linux_resources(Resources(hugepage_limits=(HugepageLimit("2MB", 1 << 21),)), v1)
    assert "hugepageLimits" not in linux_resources(
        Resources(hugepage_limits=(HugepageLimit("2MB", 0),)), v1)
    v2 = CgroupHost(mode=CgroupMode.UNIFIED, unified_mount="/u",
                    unified_controllers=frozenset({"memory", "hugetlb"}),
                    hugepage_sizes=("2MB",))
    limited = linux_resources(Resources(unified={"memory.high": "1M"},
                                        hugepage_limits=(HugepageLimit("2MB", 1 << 21),)), v2)
    assert limited["unified"] == {"memory.high": "1M"}
    assert limited["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]


def test_hugepage_limits_cross_the_protobuf_border_both_ways() -> None:
    message = cri_pb2.LinuxContainerResources(
        cpu_quota=5, hugepage_limits=[cri_pb2.HugepageLimit(page_size="2MB", limit=4)])
    converted = resources(message)
    assert converted.hugepage_limits == (HugepageLimit("2MB", 4),)
    status = container_status(container(), converted)
    assert status.resources.linux.hugepage_limits[0].page_size == "2MB"
    assert status.resources.linux.cpu_quota == 5
