"""Host detection from mountinfo: v1, hybrid and unified layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.cgroups.host import (
    CgroupHost,
    CgroupMode,
    host_from_mounts,
    hugepage_size_name,
    parse_cgroup_mounts,
    read_hugepage_sizes,
)
from crisp.errors import FailedPrecondition

HYBRID = """\
23 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

DEBIAN_V1 = """\
25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
"""

UNIFIED = """\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_hybrid_layout_keeps_v1_controllers_and_the_cgroup2_mount() -> None:
    host = host_from_mounts(parse_cgroup_mounts(HYBRID), frozenset({"hugetlb"}), ("2MB",))
    assert host.mode is CgroupMode.HYBRID
    assert host.v1_mounts["cpu"] == "/sys/fs/cgroup/cpu"
    assert host.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpuacct"
    assert host.v1_mounts["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert "xattr" not in host.v1_mounts
    assert host.unified_mount == "/sys/fs/cgroup/unified"
    assert host.controller_dir("memory", "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    # hugetlb lives only in the cgroup2 tree here, and runc does not drive it on hybrid.
    assert host.controller_dir("hugetlb", "/a") == Path("/sys/fs/cgroup/unified/a")
    assert not host.has_controller("hugetlb")
    assert host.has_controller("memory")
    assert not host.is_unified


def test_comounted_v1_controllers_share_one_directory() -> None:
    host = host_from_mounts(parse_cgroup_mounts(DEBIAN_V1), frozenset(), ())
    assert host.mode is CgroupMode.LEGACY
    assert host.v1_mounts["cpu"] == host.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert host.unified_dir("/x") is None
    assert host.controller_dir("pids", "/x") is None


def test_unified_layout_puts_every_controller_in_one_tree() -> None:
    controllers = frozenset({"cpu", "memory", "pids"})
    host = host_from_mounts(parse_cgroup_mounts(UNIFIED), controllers, ("2MB", "1GB"))
    assert host.mode is CgroupMode.UNIFIED
    assert host.is_unified
    assert host.controller_dir("cpu", "/k/p") == Path("/sys/fs/cgroup/k/p")
    assert host.has_controller("memory")
    assert not host.has_controller("hugetlb")


def test_no_cgroups_at_all_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="no cgroup hierarchy"):
        host_from_mounts([], frozenset(), ())


def test_escaped_mount_points_are_unescaped() -> None:
    text = "41 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n"
    assert parse_cgroup_mounts(text)[0].mount_point == "/mnt/with space"


def test_relative_cgroup_paths_are_refused() -> None:
    host = CgroupHost(CgroupMode.UNIFIED, unified_mount="/sys/fs/cgroup")
    with pytest.raises(ValueError, match="absolute"):
        host.controller_dir("cpu", "relative")


@pytest.mark.parametrize(
    ("kib", "name"), [(2048, "2MB"), (1048576, "1GB"), (64, "64KB"), (32768, "32MB")]
)
def test_hugepage_size_names_follow_the_oci_form(kib: int, name: str) -> None:
    assert hugepage_size_name(kib) == name


def test_hugepage_sizes_come_sorted_from_sysfs(tmp_path: Path) -> None:
    for name in ("hugepages-1048576kB", "hugepages-2048kB", "unrelated"):
        (tmp_path / name).mkdir()
    assert read_hugepage_sizes(str(tmp_path)) == ("2MB", "1GB")
    assert read_hugepage_sizes(str(tmp_path / "missing")) == ()
