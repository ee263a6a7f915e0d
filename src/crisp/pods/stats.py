"""Usage of containers and pods: cgroup readings, writable layers and pod network counters.

The CRI stats calls and the pod metrics all start from the same readings, taken here in the
pods' own terms (a container's cgroupsPath, its snapshot key, the pod's pinned network
namespace), so the servicers only translate. A container or pod whose cgroup is gone (it
exited, or never started) still reports what it has: its writable layer, its network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from crisp.cgroups import CgroupAccounting, CgroupUsage, InterfaceStats, interfaces_of_netns
from crisp.errors import CrispError, NotFound
from crisp.pods.containers import ContainerManager
from crisp.pods.context import PodContext
from crisp.pods.filesystems import FilesystemInfo, filesystems_of
from crisp.pods.model import Container, Sandbox

log = logging.getLogger(__name__)

POD_INTERFACE = "eth0"
"""The interface CNI gives every pod (crisp.network asks plugins for this name)."""


@dataclass(frozen=True)
class WritableLayer:
    """Bytes and inodes a container's writable (upper) layer holds, and where it is."""

    used_bytes: int
    inodes_used: int
    mountpoint: str


@dataclass(frozen=True)
class ContainerUsage:
    """One container's reading; ``cgroup`` None when it has no cgroup (not running).

    ``accounting`` and ``filesystem`` are read only for metrics (see `UsageReader`).
    """

    container: Container
    timestamp_ns: int
    cgroup: CgroupUsage | None
    writable_layer: WritableLayer | None
    accounting: CgroupAccounting | None = None
    filesystem: FilesystemInfo | None = None


@dataclass(frozen=True)
class PodUsage:
    """One pod's reading: its cgroup (all its processes), its interfaces and its containers."""

    sandbox: Sandbox
    timestamp_ns: int
    cgroup: CgroupUsage | None
    interfaces: list[InterfaceStats] = field(default_factory=list)
    containers: list[ContainerUsage] = field(default_factory=list)

    @property
    def default_interface(self) -> InterfaceStats | None:
        return next((i for i in self.interfaces if i.name == POD_INTERFACE), None)


class UsageReader:
    """Reads usage for the stats RPCs and pod metrics; owns nothing, changes nothing."""

    def __init__(self, ctx: PodContext, containers: ContainerManager) -> None:
        self.ctx = ctx
        self.containers = containers

    async def containers_usage(self, containers: list[Container],
                               detailed: bool = False) -> list[ContainerUsage]:
        """Usage of ``containers`` (in that order): cgroups in one batch, layers in parallel.

        ``detailed`` adds the cgroup accounting and writable-layer filesystem the metrics
        report; the stats calls do without (they are polled as often and need less).
        """
        cgroups = self.ctx.cgroups
        paths = {c.id: self.containers.cgroups_path(c) for c in containers if c.pid}
        readings = await cgroups.containers_usage(paths) if paths else {}
        accounting: dict[str, CgroupAccounting] = {}
        filesystems: dict[str, FilesystemInfo] = {}
        if detailed:
            running = {c.id: (paths[c.id], c.pid) for c in containers if c.id in readings}
            accounting, filesystems = await asyncio.gather(
                cgroups.containers_accounting(running),
                asyncio.to_thread(filesystems_of, [c.rootfs for c in containers]),
            )
        layers = await asyncio.gather(*(self._writable_layer(c) for c in containers))
        now = time.time_ns()
        return [
            ContainerUsage(container=c, timestamp_ns=now, cgroup=readings.get(c.id),
                           writable_layer=layer, accounting=accounting.get(c.id),
                           filesystem=filesystems.get(c.rootfs))
            for c, layer in zip(containers, layers, strict=True)
        ]

    async def pod_usage(self, sandbox: Sandbox, containers: list[Container],
                        detailed: bool = False) -> PodUsage:
        """A pod's usage; containers as `containers_usage` reads them."""
        cgroup: CgroupUsage | None = None
        if sandbox.cgroup_parent:
            try:
                cgroup = await self.ctx.cgroups.pod_usage(sandbox.id, sandbox.cgroup_parent)
            except NotFound:
                cgroup = None  # runc makes the pod cgroup with the pod's first container
        interfaces, usage = await asyncio.gather(
            self._interfaces(sandbox), self.containers_usage(containers, detailed)
        )
        return PodUsage(sandbox=sandbox, timestamp_ns=time.time_ns(), cgroup=cgroup,
                        interfaces=interfaces, containers=usage)

    async def _writable_layer(self, container: Container) -> WritableLayer | None:
        try:
            used, inodes = await self.ctx.rootfs.usage(container.id)
        except NotFound:
            return None
        return WritableLayer(used_bytes=used, inodes_used=inodes, mountpoint=container.rootfs)

    async def _interfaces(self, sandbox: Sandbox) -> list[InterfaceStats]:
        netns = sandbox.namespace_paths.get("net", "")
        if not netns or not sandbox.network_ready:
            return []  # a host-network pod's traffic is the node's, not the pod's
        try:
            return await interfaces_of_netns(netns)
        except NotFound:
            return []
        except CrispError as error:
            log.warning("pod %s: cannot read its network counters: %s", sandbox.id, error)
            return []
