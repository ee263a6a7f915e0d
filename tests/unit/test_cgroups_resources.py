"""CRI resources to OCI linux.resources, and reading them back from cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.cgroups.host import CgroupHost, CgroupMode
from crisp.cgroups.resources import (
    HugepageLimit,
    LinuxResources,
    clamp_oom_score_adj,
    oci_resources,
    read_resources,
    weight_to_shares,
)
from crisp.errors import FailedPrecondition, InvalidArgument, NotFound

V1 = CgroupHost(
    CgroupMode.HYBRID,
    v1_mounts={"cpu": "/c", "memory": "/m", "cpuset": "/s"},
    unified_mount="/u",
    hugepage_sizes=("2MB", "1GB"),
    swap_accounting=True,
)
V1_HUGETLB = CgroupHost(
    CgroupMode.LEGACY,
    v1_mounts={"memory": "/m", "hugetlb": "/h"},
    hugepage_sizes=("2MB",),
    swap_accounting=True,
)
V2 = CgroupHost(
    CgroupMode.UNIFIED,
    unified_mount="/u",
    unified_controllers=frozenset({"cpu", "memory", "hugetlb", "cpuset"}),
    hugepage_sizes=("2MB",),
    swap_accounting=True,
)


def test_nothing_specified_gives_an_empty_dict() -> None:
    assert oci_resources(LinuxResources(), V1) == {}


def test_cpu_and_memory_map_to_oci_names() -> None:
    resources = LinuxResources(
        cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, cpuset_cpus="0-1,3",
        cpuset_mems="0", memory_limit_in_bytes=64 << 20,
    )
    assert oci_resources(resources, V1) == {
        "cpu": {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0-1,3", "mems": "0"},
        # No swap asked for: memory+swap equals memory, so the container stays off swap.
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
    }


def test_swap_limit_counts_memory_plus_swap() -> None:
    resources = LinuxResources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    assert oci_resources(resources, V2)["memory"] == {"limit": 100, "swap": 300}
    unlimited = LinuxResources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=-1)
    assert oci_resources(unlimited, V1)["memory"] == {"limit": 100, "swap": -1}


def test_swap_below_memory_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="at least the memory limit"):
        oci_resources(LinuxResources(memory_limit_in_bytes=300, memory_swap_limit_in_bytes=100), V1)


def test_swap_without_memory_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="needs a memory limit"):
        oci_resources(LinuxResources(memory_swap_limit_in_bytes=100), V1)


def test_swap_is_left_out_without_swap_accounting() -> None:
    host = CgroupHost(CgroupMode.LEGACY, v1_mounts={"memory": "/m"}, swap_accounting=False)
    resources = LinuxResources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=100)
    assert oci_resources(resources, host) == {"memory": {"limit": 100}}


def test_minus_one_lifts_limits_for_updates() -> None:
    resources = LinuxResources(cpu_quota=-1, memory_limit_in_bytes=-1)
    assert oci_resources(resources, V1) == {
        "cpu": {"quota": -1}, "memory": {"limit": -1, "swap": -1}
    }


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (LinuxResources(cpu_shares=1), "cpu_shares 1"),
        (LinuxResources(cpu_shares=300_000), "cpu_shares 300000"),
        (LinuxResources(cpu_quota=500), "cpu_quota 500us"),
        (LinuxResources(cpu_quota=-5), "cpu_quota -5us"),
        (LinuxResources(cpu_period=999), "cpu_period 999us"),
        (LinuxResources(cpu_period=2_000_000), "cpu_period 2000000us"),
        (LinuxResources(cpuset_cpus="0-a"), "cpuset_cpus '0-a'"),
        (LinuxResources(cpuset_cpus="3-1"), "backwards"),
        (LinuxResources(cpuset_mems="0,,1"), "cpuset_mems"),
        (LinuxResources(memory_limit_in_bytes=-2), "memory_limit_in_bytes -2"),
        (LinuxResources(memory_swap_limit_in_bytes=-3), "memory_swap_limit_in_bytes -3"),
    ],
)
def test_out_of_range_values_are_invalid_arguments(
    resources: LinuxResources, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci_resources(resources, V1)


def test_unified_keys_only_on_cgroup_v2() -> None:
    resources = LinuxResources(unified={"memory.high": "1000000"})
    assert oci_resources(resources, V2) == {"unified": {"memory.high": "1000000"}}
    with pytest.raises(InvalidArgument, match="cgroup hybrid"):
        oci_resources(resources, V1)


@pytest.mark.parametrize("key", ["../etc", "memory", "Memory.high", "a/b.c"])
def test_unified_keys_must_be_cgroup_file_names(key: str) -> None:
    with pytest.raises(InvalidArgument, match="not a cgroup v2 file name"):
        oci_resources(LinuxResources(unified={key: "1"}), V2)


def test_hugepage_limits_where_the_controller_and_size_exist() -> None:
    resources = LinuxResources(hugepage_limits=(HugepageLimit("2MB", 4 << 20),))
    assert oci_resources(resources, V1_HUGETLB) == {
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]
    }
    assert oci_resources(resources, V2)["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]


def test_zero_hugepage_limits_the_host_cannot_enforce_are_dropped() -> None:
    # The kubelet sends a zero limit for every size; this host has no hugetlb for runc.
    resources = LinuxResources(
        hugepage_limits=(HugepageLimit("2MB", 0), HugepageLimit("1GB", 0), HugepageLimit("16GB", 0))
    )
    assert oci_resources(resources, V1) == {}


def test_nonzero_hugepage_limits_the_host_cannot_enforce_are_errors() -> None:
    with pytest.raises(FailedPrecondition, match="hugetlb cgroup controller"):
        oci_resources(LinuxResources(hugepage_limits=(HugepageLimit("2MB", 1 << 21),)), V1)
    with pytest.raises(InvalidArgument, match=r"supported: 2MB"):
        oci_resources(
            LinuxResources(hugepage_limits=(HugepageLimit("1GB", 1 << 30),)), V1_HUGETLB
        )


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (HugepageLimit("2mb", 0), "malformed"),
        (HugepageLimit("2MB", -1), "negative"),
    ],
)
def test_malformed_hugepage_limits(limit: HugepageLimit, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci_resources(LinuxResources(hugepage_limits=(limit,)), V1_HUGETLB)


def test_duplicate_hugepage_sizes_are_refused() -> None:
    limits = (HugepageLimit("2MB", 0), HugepageLimit("2MB", 1 << 21))
    with pytest.raises(InvalidArgument, match="twice"):
        oci_resources(LinuxResources(hugepage_limits=limits), V1_HUGETLB)


def test_oom_score_adj_is_raised_to_the_floor_and_range_checked() -> None:
    assert clamp_oom_score_adj(-998, floor=0) == 0
    assert clamp_oom_score_adj(1000, floor=0) == 1000
    assert clamp_oom_score_adj(-500, floor=-900) == -500
    with pytest.raises(InvalidArgument, match="out of range"):
        clamp_oom_score_adj(1001, floor=0)


def test_weight_to_shares_inverts_runcs_mapping() -> None:
    def runc_weight(shares: int) -> int:
        return 1 + ((shares - 2) * 9999) // 262142

    for weight in range(1, 10001):
        assert runc_weight(weight_to_shares(weight)) == weight
    assert weight_to_shares(1) == 2


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n")


def test_read_back_from_v1_files(tmp_path: Path) -> None:
    host = CgroupHost(
        CgroupMode.LEGACY,
        v1_mounts={name: str(tmp_path / name) for name in ("cpu", "memory", "cpuset", "hugetlb")},
        hugepage_sizes=("2MB", "1GB"),
    )
    _write(tmp_path / "cpu/k/c", {
        "cpu.shares": "512", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000",
    })
    _write(tmp_path / "memory/k/c", {
        "memory.limit_in_bytes": str(64 << 20),
        "memory.memsw.limit_in_bytes": "9223372036854771712",
    })
    _write(tmp_path / "cpuset/k/c", {"cpuset.cpus": "0-1", "cpuset.mems": "0"})
    _write(tmp_path / "hugetlb/k/c", {
        "hugetlb.2MB.limit_in_bytes": str(4 << 20),
        "hugetlb.1GB.limit_in_bytes": "9223372036854771712",
    })
    assert read_resources(host, "/k/c") == LinuxResources(
        cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, memory_limit_in_bytes=64 << 20,
        cpuset_cpus="0-1", cpuset_mems="0", hugepage_limits=(HugepageLimit("2MB", 4 << 20),),
    )


def test_read_back_from_v2_files(tmp_path: Path) -> None:
    host = CgroupHost(
        CgroupMode.UNIFIED,
        unified_mount=str(tmp_path),
        unified_controllers=frozenset({"cpu", "memory", "hugetlb", "cpuset"}),
        hugepage_sizes=("2MB",),
    )
    _write(tmp_path / "k/c", {
        "cpu.max": "20000 100000", "cpu.weight": "39", "memory.max": "1048576",
        "memory.swap.max": "1048576", "cpuset.cpus": "", "cpuset.mems": "",
        "hugetlb.2MB.max": "max",
    })
    read = read_resources(host, "/k/c")
    assert (read.cpu_quota, read.cpu_period) == (20_000, 100_000)
    assert read.memory_limit_in_bytes == 1 << 20
    assert read.memory_swap_limit_in_bytes == 2 << 20
    assert read.cpu_shares == weight_to_shares(39)
    assert read.hugepage_limits == ()
    unlimited = {"cpu.max": "max 100000", "memory.max": "max", "memory.swap.max": "max"}
    _write(tmp_path / "k/c", unlimited)
    read = read_resources(host, "/k/c")
    assert read.cpu_quota == read.memory_limit_in_bytes == read.memory_swap_limit_in_bytes == 0


def test_reading_a_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    host = CgroupHost(CgroupMode.UNIFIED, unified_mount=str(tmp_path))
    with pytest.raises(NotFound, match="/gone"):
        read_resources(host, "/gone")


def test_pod_resources_add_overhead_and_lift_on_minus_one() -> None:
    from crisp.cgroups.resources import pod_resources
    total = pod_resources(LinuxResources(cpu_shares=24, memory_limit_in_bytes=10),
                          LinuxResources(cpu_shares=1000, cpu_quota=-1, cpu_period=50_000,
                                         memory_limit_in_bytes=90))
    assert (total.cpu_shares, total.cpu_quota, total.cpu_period,
            total.memory_limit_in_bytes) == (1024, -1, 50_000, 100)


def test_write_pod_resources_creates_the_pod_cgroup_and_writes_v1_files(
        tmp_path: Path) -> None:
    from crisp.cgroups.resources import write_pod_resources
    for controller in ("cpu", "memory"):
        (tmp_path / controller).mkdir()
    host = CgroupHost(mode=CgroupMode.LEGACY, v1_mounts={
        "cpu": str(tmp_path / "cpu"), "memory": str(tmp_path / "memory")})
    write_pod_resources(host, "/kubepods/pod1",
                        LinuxResources(cpu_shares=512, memory_limit_in_bytes=1 << 20))
    assert (tmp_path / "cpu/kubepods/pod1/cpu.shares").read_text() == "512"
    assert (tmp_path / "memory/kubepods/pod1/memory.limit_in_bytes").read_text() == "1048576"
