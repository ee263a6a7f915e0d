"""Pure stats logic: metrics from readings, CRI stats messages, handler features, resources."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from crisp.cgroups import (
    BlockDeviceIo,
    CgroupAccounting,
    CgroupHost,
    CgroupMode,
    CgroupUsage,
    ContainerCgroupStats,
    HugepageLimit,
    InterfaceStats,
    Pressure,
    ProcessTotals,
)
from crisp.cgroups.accounting import (
    cpu_weight_to_shares,
    parse_blkio_v1,
    parse_io_stat,
    parse_pressure,
    read_accounting,
)
from crisp.cgroups.processes import parse_open_files_soft_limit
from crisp.errors import FailedPrecondition, InvalidArgument, NotFound
from crisp.oci.handlers import features_of, kernel_version
from crisp.oci.spec import linux_resources
from crisp.pods.filesystems import (
    FilesystemInfo,
    filesystem_of,
    parse_mountinfo,
    writable_directory,
)
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
from crisp.pods.stats import ContainerUsage, PodUsage, WritableLayer, _Kept
from crisp.server.pod_convert import container_status, resources
from crisp.server.stats import (
    FILL_BATCH,
    _Attributes,
    _fill_containers,
    _fill_pods,
    container_stats,
    pod_sandbox_stats,
)


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
    # No filesystem read (the stats calls skip it): the device is unknown, left empty.
    assert samples["container_fs_usage_bytes"].label_values == ("app", "c1", "busybox", "")
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


def test_container_stats_message_keeps_zero_values_and_clamps_negative_ones() -> None:
    zeros = dataclasses.replace(reading(), major_page_faults=0, page_faults=-5)
    message = container_stats(usage(zeros))
    assert message.memory.HasField("major_page_faults")
    assert message.memory.major_page_faults.value == 0
    assert message.memory.page_faults.value == 0


async def test_list_responses_are_each_containers_message_in_order() -> None:
    # More than one fill batch, attributes built once per id and never mixed up.
    many = [dataclasses.replace(usage(reading(cpu=i)), container=container(f"c{i}", f"n{i}"))
            for i in range(3 * FILL_BATCH + 5)]
    for _ in range(2):
        response = cri_pb2.ListContainerStatsResponse()
        await _fill_containers(response, many)
        assert list(response.stats) == [container_stats(u) for u in many]
        assert [m.attributes.metadata.name for m in response.stats] == [
            f"n{i}" for i in range(len(many))]
        assert response.stats[7].cpu.usage_core_nano_seconds.value == 7
    pods = [PodUsage(sandbox=dataclasses.replace(sandbox(), id=f"s{i}"), timestamp_ns=1,
                     cgroup=None, containers=[many[i]]) for i in range(len(many))]
    listed = cri_pb2.ListPodSandboxStatsResponse()
    await _fill_pods(listed, pods)
    assert list(listed.stats) == [pod_sandbox_stats(p) for p in pods]
    assert [m.attributes.id for m in listed.stats] == [f"s{i}" for i in range(len(many))]


def test_kept_attributes_of_removed_objects_are_swept() -> None:
    kept = _Attributes()
    for i in range(200):
        kept.container(container(f"c{i}"))
    kept.sweep(["c1", "c2"], [])
    assert set(kept.containers) == {"c1", "c2"}


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
    assert features.user_namespaces is False  # unless the host gives pod user namespaces
    userns = features_of({**document, "linux": {"namespaces": ["user"]}}, kernel,
                         pod_userns_host=True)
    assert userns.user_namespaces is True
    assert features_of(document, kernel, pod_userns_host=True).user_namespaces is False


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


# Detailed accounting for the cAdvisor-style metrics ---------------------------------------

def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_blkio_io_stat_and_pressure_parsers() -> None:
    assert parse_blkio_v1("254:0 Read 4096\n254:0 Write 8192\n254:0 Total 12288\n"
                          "7:1 Read 10\nTotal 12298\n") == {
        (254, 0): {"Read": 4096, "Write": 8192, "Total": 12288}, (7, 1): {"Read": 10}}
    by_bytes, by_operations = parse_io_stat(
        "254:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n")
    assert by_bytes == {(254, 0): {"Read": 4096, "Write": 512, "Discard": 0}}
    assert by_operations == {(254, 0): {"Read": 2, "Write": 1, "Discard": 0}}
    pressure = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=1500\n"
                              "full avg10=0.00 avg60=0.00 avg300=0.00 total=700\n")
    assert pressure is not None
    assert (pressure.waiting_ns, pressure.stalled_ns) == (1_500_000, 700_000)
    assert parse_pressure("") is None
    limits = "Limit Soft Limit Hard Limit Units\nMax open files 1024 4096 files\n"
    assert parse_open_files_soft_limit(limits) == 1024
    assert parse_open_files_soft_limit("Max open files unlimited unlimited files") == 0
    assert (cpu_weight_to_shares(1), cpu_weight_to_shares(10000)) == (2, 262144)
    # runc stores shares 1024 as weight 39; the way back loses the rounding.
    assert cpu_weight_to_shares(39) == 998


def test_accounting_of_a_v1_cgroup(tmp_path: Path) -> None:
    mounts = {name: str(tmp_path / name)
              for name in ("cpu", "cpuacct", "memory", "blkio", "pids")}
    host = CgroupHost(mode=CgroupMode.HYBRID, v1_mounts=mounts,
                      unified_mount=str(tmp_path / "unified"))
    cgroup = "/pod/c1"
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    write_files(tmp_path / "cpuacct/pod/c1", {"cpuacct.stat": "user 300\nsystem 150\n"})
    write_files(tmp_path / "cpu/pod/c1", {
        "cpu.stat": "nr_periods 40\nnr_throttled 12\nthrottled_time 2500000000\n",
        "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "20000\n",
        "cpu.shares": "1024\n"})
    write_files(tmp_path / "memory/pod/c1", {
        "memory.stat": "cache 1\ntotal_cache 8192\ntotal_mapped_file 4096\n",
        "memory.kmem.usage_in_bytes": "65536\n", "memory.failcnt": "3\n",
        "memory.max_usage_in_bytes": "1048576\n", "memory.limit_in_bytes": "67108864\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.soft_limit_in_bytes": "9223372036854771712\n"})
    write_files(tmp_path / "blkio/pod/c1", {
        "blkio.throttle.io_service_bytes": "254:0 Read 4096\n254:0 Write 512\nTotal 4608\n",
        "blkio.throttle.io_serviced": "254:0 Read 2\n254:0 Write 1\nTotal 3\n"})
    write_files(tmp_path / "pids/pod/c1", {"pids.max": "max\n",
                                           "cgroup.procs": f"{os.getpid()}\n"})
    write_files(tmp_path / "unified/pod/c1", {
        "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=3000000\n"
                        "full avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n"})
    reading = read_accounting(host, cgroup, init_pid=os.getpid())
    assert (reading.cpu_user_ns, reading.cpu_system_ns) == (300 * tick_ns, 150 * tick_ns)
    assert (reading.cfs_periods, reading.cfs_throttled_periods) == (40, 12)
    assert reading.cfs_throttled_ns == 2_500_000_000
    assert (reading.spec_cpu_period_us, reading.spec_cpu_quota_us) == (100000, 20000)
    assert reading.spec_cpu_shares == 1024
    assert (reading.memory_cache, reading.memory_mapped_file) == (8192, 4096)
    assert (reading.memory_kernel, reading.memory_failcnt) == (65536, 3)
    assert reading.memory_max_usage == 1048576
    assert reading.spec_memory_limit == 67108864
    assert reading.spec_memory_swap_limit == 0  # the kernel's "no limit": cAdvisor's 0
    assert reading.spec_memory_reservation == 0
    assert reading.threads_max == 0
    (device,) = reading.block_io
    assert (device.major, device.minor) == (254, 0)
    assert device.bytes == {"Read": 4096, "Write": 512}
    assert device.operations == {"Read": 2, "Write": 1}
    assert reading.pressure["cpu"].waiting_ns == 3_000_000_000
    assert "io" not in reading.pressure
    assert reading.processes is not None  # this test's own process, really in /proc
    assert reading.processes.threads >= 1 and reading.processes.file_descriptors >= 3
    assert reading.open_files_soft_limit is not None and reading.open_files_soft_limit > 0
    with pytest.raises(NotFound):
        read_accounting(host, "/pod/gone")


def test_accounting_of_a_v2_cgroup(tmp_path: Path) -> None:
    host = CgroupHost(mode=CgroupMode.UNIFIED, unified_mount=str(tmp_path),
                      unified_controllers=frozenset({"cpu", "memory", "io", "pids"}))
    write_files(tmp_path / "pod/c1", {
        "cpu.stat": "usage_usec 9000000\nuser_usec 6000000\nsystem_usec 3000000\n"
                    "nr_periods 50\nnr_throttled 5\nthrottled_usec 1500000\n",
        "cpu.max": "20000 100000\n", "cpu.weight": "100\n",
        "memory.stat": "anon 4096\nfile 8192\nfile_mapped 2048\nkernel 12288\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 0\noom_kill 0\n",
        "memory.peak": "999999\n", "memory.max": "67108864\n",
        "memory.swap.max": "0\n", "memory.low": "0\n",
        "io.stat": "254:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n",
        "pids.max": "128\n", "cgroup.procs": ""})
    reading = read_accounting(host, "/pod/c1")
    assert (reading.cpu_user_ns, reading.cpu_system_ns) == (6 * 10**9, 3 * 10**9)
    assert (reading.cfs_periods, reading.cfs_throttled_periods) == (50, 5)
    assert reading.cfs_throttled_ns == 1_500_000_000
    assert (reading.spec_cpu_period_us, reading.spec_cpu_quota_us) == (100000, 20000)
    assert reading.spec_cpu_shares == cpu_weight_to_shares(100)
    assert (reading.memory_cache, reading.memory_mapped_file) == (8192, 2048)
    assert (reading.memory_kernel, reading.memory_failcnt) == (12288, 7)
    assert reading.memory_max_usage == 999999
    assert reading.spec_memory_limit == 67108864
    assert reading.spec_memory_swap_limit == 67108864  # memory plus no swap, as CRI says
    assert reading.threads_max == 128
    assert reading.block_io[0].bytes["Read"] == 4096
    assert reading.processes is not None and reading.processes.threads == 0
    (tmp_path / "pod/c1/memory.swap.max").write_text("max\n")
    assert read_accounting(host, "/pod/c1").spec_memory_swap_limit == 0  # unlimited swap


def test_writable_layer_filesystem_is_the_overlay_upper_dir(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    mountinfo = parse_mountinfo(
        "25 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"90 25 0:77 / /run/c1/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir={upper},"
        "workdir=/w\n"
        "91 25 0:78 / /mnt/with\\040space rw - tmpfs tmpfs rw\n")
    assert writable_directory("/run/c1/rootfs", mountinfo) == str(upper)
    assert writable_directory("/elsewhere", mountinfo) == "/elsewhere"
    assert mountinfo[2].mount_point == "/mnt/with space"
    info = filesystem_of("/run/c1/rootfs", mountinfo)
    assert info is not None
    vfs = os.statvfs(upper)
    assert info.capacity_bytes == vfs.f_blocks * vfs.f_frsize > 0
    assert info.inodes_total == vfs.f_files
    assert filesystem_of(str(tmp_path / "missing"), mountinfo) is None


def detailed_usage() -> ContainerUsage:
    base = usage(reading())
    accounting = CgroupAccounting(
        timestamp_ns=10, cpu_user_ns=2_900_000_000, cpu_system_ns=600_000_000,
        cfs_periods=40, cfs_throttled_periods=12, cfs_throttled_ns=2_500_000_000,
        memory_cache=8192, memory_mapped_file=4096, memory_kernel=65536, memory_failcnt=3,
        memory_max_usage=1 << 20,
        block_io=(BlockDeviceIo(254, 0, "/dev/vda", {"Read": 4096, "Write": 512},
                                {"Read": 2, "Write": 1}),),
        pressure={"cpu": Pressure(waiting_ns=3 * 10**9, stalled_ns=10**9)},
        processes=ProcessTotals(threads=3, file_descriptors=7, sockets=1), threads_max=0,
        open_files_soft_limit=1024, spec_cpu_period_us=100000, spec_cpu_quota_us=20000,
        spec_cpu_shares=1024, spec_memory_limit=1 << 26, spec_memory_swap_limit=1 << 26,
        spec_memory_reservation=0)
    container = dataclasses.replace(base.container, started_at=1_700_000_000_500_000_000)
    return dataclasses.replace(
        base, container=container, accounting=accounting,
        filesystem=FilesystemInfo(device="/dev/vda", capacity_bytes=1 << 30,
                                  inodes_total=1000, inodes_free=900))


def test_detailed_samples_follow_cadvisor_units_and_labels() -> None:
    samples = container_samples(detailed_usage())
    described = {d.name: d for d in METRIC_DESCRIPTORS}
    for sample in samples:
        assert len(sample.label_values) == len(described[sample.name].label_keys)
        assert sample.kind is described[sample.name].kind
    values = {(s.name, s.label_values[3:]): s.value for s in samples}
    assert values["container_cpu_user_seconds_total", ()] == 2  # whole seconds
    assert values["container_cpu_cfs_throttled_seconds_total", ()] == 2
    assert values["container_cpu_cfs_periods_total", ()] == 40
    assert values["container_memory_failcnt", ()] == 3
    assert values["container_blkio_device_usage_total", ("/dev/vda", "254", "0", "Read")] == 4096
    assert values["container_fs_writes_bytes_total", ("/dev/vda",)] == 512
    assert values["container_fs_reads_total", ("/dev/vda",)] == 2
    assert values["container_fs_usage_bytes", ("/dev/vda",)] == 4096
    assert values["container_fs_inodes_free", ("/dev/vda",)] == 900
    assert values["container_fs_limit_bytes", ("/dev/vda",)] == 1 << 30
    assert values["container_threads", ()] == 3
    assert values["container_sockets", ()] == 1
    assert values["container_ulimits_soft", ("max_open_files",)] == 1024
    assert values["container_pressure_cpu_waiting_seconds_total", ()] == 3
    assert values["container_pressure_cpu_stalled_seconds_total", ()] == 1
    assert ("container_pressure_io_waiting_seconds_total", ()) not in values
    assert values["container_spec_cpu_quota", ()] == 20000
    assert values["container_spec_memory_swap_limit_bytes", ()] == 1 << 26
    assert values["container_start_time_seconds", ()] == 1_700_000_000
    assert values["container_last_seen", ()] == 0  # the reading's timestamp 10 ns
    kinds = {s.name: s.kind for s in samples}
    assert kinds["container_cpu_cfs_periods_total"] is MetricKind.COUNTER
    assert kinds["container_spec_cpu_shares"] is MetricKind.GAUGE


async def test_kept_readings_are_shared_until_too_old() -> None:
    kept: _Kept[str, int] = _Kept()
    reads: list[dict[str, str]] = []

    async def read(wanted: dict[str, str]) -> dict[str, int]:
        reads.append(dict(wanted))
        await asyncio.sleep(0.01)  # a batch under way: the other call waits for it
        return {key: len(reads) for key in wanted if key != "gone"}

    live = {"a", "b", "gone"}
    first, second = await asyncio.gather(kept.get({"a": "x", "b": "y"}, 60.0, read, live),
                                         kept.get({"a": "x", "gone": "z"}, 60.0, read, live))
    assert first == {"a": 1, "b": 1}
    assert second == {"a": 1}  # a reused, gone read once and left out
    assert reads == [{"a": "x", "b": "y"}, {"gone": "z"}]
    assert await kept.get({"a": "x"}, 0.0, read, live) == {"a": 3}  # no max age: read now
    assert await kept.get({"b": "y"}, 1e-9, read, live) == {"b": 4}  # too old: read again
