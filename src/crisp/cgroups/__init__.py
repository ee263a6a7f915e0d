"""Cgroups: host detection, the cgroupfs and systemd drivers, resources and stats.

`CgroupService` (built once with `CgroupService.detect(config.cgroup_manager)`) is what the
sandbox and container services hold: pod parents, cgroupsPath, OCI resources, oom_score_adj,
limits read back, usage with CPU rates and the detailed accounting metrics report. The pure
pieces under it (`cgroups_path`, `oci_resources`, `read_stats`, `read_accounting`, ...) are
exported for the spec builder and for tests; the
netdev readers give a pod's interface counters. Nothing here imports grpc or protobuf.
"""

from crisp.cgroups.accounting import (
    BlockDeviceIo,
    CgroupAccounting,
    HugetlbUsage,
    Pressure,
    read_accounting,
)
from crisp.cgroups.driver import (
    CgroupDriver,
    CgroupfsDriver,
    SystemdDriver,
    cgroups_path,
    driver_for,
    expand_slice,
)
from crisp.cgroups.host import CgroupHost, CgroupMode, detect_host
from crisp.cgroups.netdev import (
    InterfaceStats,
    interfaces_of_netns,
    interfaces_of_netns_many,
    interfaces_of_pid,
)
from crisp.cgroups.processes import ProcessTotals
from crisp.cgroups.resources import (
    HugepageLimit,
    LinuxResources,
    clamp_oom_score_adj,
    current_oom_score_adj,
    oci_resources,
    read_resources,
    read_resources_async,
)
from crisp.cgroups.service import CgroupService, CgroupUsage
from crisp.cgroups.stats import (
    ContainerCgroupStats,
    CpuRateTracker,
    read_stats,
    read_stats_async,
    read_stats_many,
)
from crisp.cgroups.tree import cgroup_dirs, remove_cgroup

__all__ = [
    "BlockDeviceIo",
    "CgroupAccounting",
    "CgroupDriver",
    "CgroupHost",
    "CgroupMode",
    "CgroupService",
    "CgroupUsage",
    "CgroupfsDriver",
    "ContainerCgroupStats",
    "CpuRateTracker",
    "HugepageLimit",
    "HugetlbUsage",
    "InterfaceStats",
    "LinuxResources",
    "Pressure",
    "ProcessTotals",
    "SystemdDriver",
    "cgroup_dirs",
    "cgroups_path",
    "clamp_oom_score_adj",
    "current_oom_score_adj",
    "detect_host",
    "driver_for",
    "expand_slice",
    "interfaces_of_netns",
    "interfaces_of_netns_many",
    "interfaces_of_pid",
    "oci_resources",
    "read_accounting",
    "read_resources",
    "read_resources_async",
    "read_stats",
    "read_stats_async",
    "read_stats_many",
    "remove_cgroup",
]
