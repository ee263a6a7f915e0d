"""One object the daemon builds at start-up: the host layout, the driver, and CPU rates.

The container and sandbox services hold a `CgroupService` and ask it everything cgroup
related in terms they have (pod cgroup parent, container id, OCI cgroupsPath, pid), so they
never combine host, driver and readers themselves.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from crisp.cgroups.accounting import CgroupAccounting, read_accounting_many
from crisp.cgroups.driver import CgroupDriver, driver_for
from crisp.cgroups.host import CgroupHost, detect_host
from crisp.cgroups.resources import (
    LinuxResources,
    clamp_oom_score_adj,
    current_oom_score_adj,
    oci_resources,
    read_resources,
    write_pod_resources,
)
from crisp.cgroups.stats import (
    ContainerCgroupStats,
    CpuRateTracker,
    read_stats,
    read_stats_batch,
)
from crisp.cgroups.tree import remove_cgroup
from crisp.errors import FailedPrecondition

SYSTEMD_RUNTIME_DIR = "/run/systemd/system"
"""Exists exactly when systemd is init (sd_booted(3)); runc's systemd driver needs that."""


@dataclass(frozen=True)
class CgroupUsage:
    """A reading plus the CPU rate since the previous reading of the same container."""

    stats: ContainerCgroupStats
    cpu_nano_cores: int | None


class CgroupService:
    """Cgroup paths, resources, limits read back, and usage for one host and driver."""

    def __init__(self, host: CgroupHost, driver: CgroupDriver, oom_score_adj_floor: int) -> None:
        self.host = host
        self.driver = driver
        self.oom_score_adj_floor = oom_score_adj_floor
        self._rates = CpuRateTracker()

    @classmethod
    async def detect(cls, cgroup_manager: str) -> CgroupService:
        """Look at the host (off the event loop) and set up the configured driver."""
        driver = driver_for(cgroup_manager)
        if driver.name == "systemd" and not await asyncio.to_thread(
            os.path.isdir, SYSTEMD_RUNTIME_DIR
        ):
            raise FailedPrecondition(
                'cgroup_manager is "systemd" but systemd is not running as init on this host '
                f'({SYSTEMD_RUNTIME_DIR} is missing): set cgroup_manager = "cgroupfs"'
            )
        host = await asyncio.to_thread(detect_host)
        floor = await asyncio.to_thread(current_oom_score_adj)
        return cls(host, driver, floor)

    def sandbox_parent(self, cgroup_parent: str, sandbox_id: str) -> str:
        """The pod's cgroup parent to store with the sandbox (see CgroupDriver.sandbox_parent)."""
        return self.driver.sandbox_parent(cgroup_parent, sandbox_id)

    async def release_sandbox_parent(self, cgroup_parent: str) -> None:
        """Remove a pod cgroup crisp made up, once the pod's containers are gone.

        The kubelet's parents are the kubelet's to remove; systemd removes its own slices.
        """
        if self.driver.name == "cgroupfs" and self.driver.owns_parent(cgroup_parent):
            await asyncio.to_thread(remove_cgroup, self.host, cgroup_parent)

    def cgroups_path(self, cgroup_parent: str, container_id: str) -> str:
        """The OCI ``linux.cgroupsPath`` of a container (or a pod's infra process)."""
        return self.driver.container_cgroups_path(cgroup_parent, container_id)

    def oci_resources(self, resources: LinuxResources) -> dict[str, Any]:
        """``linux.resources`` (cpu, memory, hugepages, unified) for this host."""
        return oci_resources(resources, self.host)

    def oom_score_adj(self, requested: int) -> int:
        """``process.oomScoreAdj``: the request, raised to what crisp may give."""
        return clamp_oom_score_adj(requested, self.oom_score_adj_floor)

    async def container_resources(self, cgroups_path: str, pid: int | None) -> LinuxResources:
        """The limits in force for a container, for ContainerStatus after an update."""
        cgroup = self.driver.container_cgroup(cgroups_path)
        return await asyncio.to_thread(read_resources, self.host, cgroup, pid)

    async def container_usage(self, container_id: str, cgroups_path: str) -> CgroupUsage:
        """One container's usage; NotFound when its cgroup is gone."""
        cgroup = self.driver.container_cgroup(cgroups_path)
        stats = await asyncio.to_thread(read_stats, self.host, cgroup)
        return CgroupUsage(stats, self._rates.update(container_id, stats))

    async def containers_usage(self, cgroups_paths: dict[str, str],
                               processes: bool = False) -> dict[str, CgroupUsage]:
        """Usage of many containers (id -> cgroupsPath) in one thread; gone ones left out.

        ``processes`` counts each one's processes and OOM kills too (the metrics; CRI stats
        do without).
        """
        return await asyncio.to_thread(self._usage_batch, cgroups_paths, "", processes,
                                       processes)

    def _usage_batch(self, paths: dict[str, str], rate_prefix: str, processes: bool,
                     oom_kills: bool) -> dict[str, CgroupUsage]:
        """Readings and CPU rates by id (blocking): the paths, the rates and the readings
        are all worked out in the worker thread, leaving the event loop nothing per cgroup.
        ``paths`` are cgroupsPaths, or with a ``rate_prefix`` pods' cgroup parents."""
        driver = self.driver
        if rate_prefix:
            cgroups = {key: driver.parent_cgroup(path) for key, path in paths.items()}
        else:
            cgroups = {key: driver.container_cgroup(path) for key, path in paths.items()}
        readings = read_stats_batch(self.host, list(cgroups.values()), processes, oom_kills)
        rates = self._rates
        usage: dict[str, CgroupUsage] = {}
        for key, cgroup in cgroups.items():
            if (stats := readings.get(cgroup)) is not None:
                usage[key] = CgroupUsage(stats, rates.update(rate_prefix + key, stats))
        return usage

    async def containers_accounting(
        self, containers: dict[str, tuple[str, int]]
    ) -> dict[str, CgroupAccounting]:
        """Detailed readings (id -> (cgroupsPath, init pid)) in one thread; gone ones left out."""
        cgroups = {cid: (self.driver.container_cgroup(path), pid)
                   for cid, (path, pid) in containers.items()}
        return await read_accounting_many(self.host, cgroups)

    async def pods_usage(self, cgroup_parents: dict[str, str]) -> dict[str, CgroupUsage]:
        """Usage of many pods (sandbox id -> cgroup parent, all its containers together)
        in one thread; pods whose cgroup is not there (yet, or any more) are left out.

        Pods' OOM kills are left unread: neither CRI nor the metrics report them.
        """
        return await asyncio.to_thread(self._usage_batch, cgroup_parents, "pod:", True, False)

    async def update_pod_resources(self, cgroup_parent: str, resources: LinuxResources) -> None:
        """Write a pod's new limits into its cgroup parent (UpdatePodSandboxResources)."""
        cgroup = self.driver.parent_cgroup(cgroup_parent)
        await asyncio.to_thread(write_pod_resources, self.host, cgroup, resources)

    def forget(self, object_id: str) -> None:
        """Drop the CPU reading kept for a removed container or sandbox."""
        self._rates.forget(object_id)
        self._rates.forget(f"pod:{object_id}")
