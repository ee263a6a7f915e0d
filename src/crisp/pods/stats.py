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

from crisp.cgroups import (
    CgroupAccounting,
    CgroupUsage,
    InterfaceStats,
    interfaces_of_netns_many,
)
from crisp.errors import CrispError
from crisp.pods.containers import ContainerManager
from crisp.pods.context import PodContext
from crisp.pods.filesystems import FilesystemInfo, filesystems_of
from crisp.pods.model import Container, ContainerState, Sandbox

log = logging.getLogger(__name__)

POLLED_LAYERS_MAX_AGE_SECONDS = 10.0
"""How old a writable layer's figure may be in the list calls the kubelet polls every 10 s
(containerd's CRI plugin collects snapshot usage in the background on the same period)."""

POLLED_CGROUPS_MAX_AGE_SECONDS = 2.0
"""How old a container's cgroup reading may be in the list calls: the kubelet asks
ListContainerStats and ListPodSandboxStats in the same round, and both cover every
container, so the second is answered from the first's readings."""

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
    """Reads usage for the stats RPCs and pod metrics; owns nothing, changes nothing.

    Every reading is a batch: all cgroups of a call in one worker thread, all writable
    layers in another, all pod interfaces in a third, so a call about a hundred pods costs
    three thread hops rather than hundreds, and the event loop stays free for the kubelet's
    relists meanwhile. Writable layers of the list calls come from figures up to
    `POLLED_LAYERS_MAX_AGE_SECONDS` old (the kubelet polls every 10 s); a call about one container
    or pod walks its layers afresh.
    """

    def __init__(self, ctx: PodContext, containers: ContainerManager) -> None:
        self.ctx = ctx
        self.containers = containers
        # container id -> (time.monotonic() of the reading, the reading), for the list calls
        self._readings: dict[str, tuple[float, CgroupUsage]] = {}
        self._reading = asyncio.Lock()  # one batch at a time: the second reuses the first

    async def containers_usage(self, containers: list[Container], detailed: bool = False,
                               layers_max_age: float = 0.0,
                               cgroups_max_age: float = 0.0) -> list[ContainerUsage]:
        """Usage of ``containers`` (in that order).

        ``detailed`` adds the process count, cgroup accounting and writable-layer filesystem
        the metrics report; the stats calls do without (they are polled as often and need
        less). ``layers_max_age`` and ``cgroups_max_age``: how old a writable layer's
        figure and a cgroup reading may be (0: read now).
        """
        cgroups = self.ctx.cgroups
        paths = {c.id: self.containers.cgroups_path(c) for c in containers if c.pid}
        accounting: dict[str, CgroupAccounting] = {}
        filesystems: dict[str, FilesystemInfo] = {}
        readings, layers = await asyncio.gather(
            self._container_cgroups(paths, detailed, cgroups_max_age),
            self.ctx.rootfs.usages([c.id for c in containers], layers_max_age),
        )
        if detailed:
            running = {c.id: (paths[c.id], c.pid) for c in containers if c.id in readings}
            accounting, filesystems = await asyncio.gather(
                cgroups.containers_accounting(running),
                asyncio.to_thread(filesystems_of, [c.rootfs for c in containers]),
            )
        now = time.time_ns()
        return [
            ContainerUsage(container=c, timestamp_ns=now, cgroup=readings.get(c.id),
                           writable_layer=_layer(c, layers.get(c.id)),
                           accounting=accounting.get(c.id), filesystem=filesystems.get(c.rootfs))
            for c in containers
        ]

    async def _container_cgroups(self, paths: dict[str, str], processes: bool,
                                 max_age: float) -> dict[str, CgroupUsage]:
        """Readings of the containers' cgroups (id -> cgroupsPath), up to ``max_age`` old."""
        if not paths:
            return {}
        if processes or max_age <= 0:
            return await self.ctx.cgroups.containers_usage(paths, processes=processes)
        async with self._reading:
            now = time.monotonic()
            kept = self._readings
            stale = {cid: path for cid, path in paths.items()
                     if (entry := kept.get(cid)) is None or now - entry[0] >= max_age}
            if stale:
                read = await self.ctx.cgroups.containers_usage(stale)
                for cid in stale:
                    if cid in read:
                        kept[cid] = (now, read[cid])
                    else:
                        kept.pop(cid, None)  # gone: its cgroup is not there any more
                live = self.ctx.store.containers
                if len(kept) > len(live) + 64:  # sweep removed containers' readings
                    self._readings = {cid: e for cid, e in kept.items() if cid in live}
            return {cid: self._readings[cid][1] for cid in paths if cid in self._readings}

    async def pods_usage(self, pods: list[tuple[Sandbox, list[Container]]],
                         detailed: bool = False, layers_max_age: float = 0.0,
                         cgroups_max_age: float = 0.0) -> list[PodUsage]:
        """Usage of each pod with its containers (as `containers_usage` reads them)."""
        parents = {s.id: s.cgroup_parent for s, _ in pods if s.cgroup_parent}
        # runc makes the pod cgroup with the pod's first container: none before that
        cgroups, interfaces, usage = await asyncio.gather(
            self.ctx.cgroups.pods_usage(parents) if parents else _nothing(),
            self._interfaces(pods),
            self.containers_usage([c for _, cs in pods for c in cs], detailed, layers_max_age,
                                  cgroups_max_age),
        )
        by_id = {u.container.id: u for u in usage}
        now = time.time_ns()
        return [
            PodUsage(sandbox=s, timestamp_ns=now, cgroup=cgroups.get(s.id),
                     interfaces=interfaces.get(s.id, []),
                     containers=[by_id[c.id] for c in cs])
            for s, cs in pods
        ]

    async def pod_usage(self, sandbox: Sandbox, containers: list[Container],
                        detailed: bool = False) -> PodUsage:
        """One pod's usage, its layers walked afresh."""
        (usage,) = await self.pods_usage([(sandbox, containers)], detailed)
        return usage

    async def _interfaces(
        self, pods: list[tuple[Sandbox, list[Container]]]
    ) -> dict[str, list[InterfaceStats]]:
        namespaces: dict[str, tuple[str, list[int]]] = {}
        for sandbox, containers in pods:
            netns = sandbox.namespace_paths.get("net", "")
            if not netns or not sandbox.network_ready:
                continue  # a host-network pod's traffic is the node's, not the pod's
            pids = [sandbox.infra.pid] if sandbox.infra is not None and sandbox.infra.pid else []
            pids += [c.pid for c in containers
                     if c.pid and c.state == ContainerState.RUNNING]
            namespaces[sandbox.id] = (netns, pids)
        if not namespaces:
            return {}
        try:
            return await interfaces_of_netns_many(namespaces)
        except CrispError as error:
            log.warning("cannot read the network counters of pods: %s", error)
            return {}


async def _nothing() -> dict[str, CgroupUsage]:
    return {}


def _layer(container: Container, figures: tuple[int, int] | None) -> WritableLayer | None:
    if figures is None:
        return None
    return WritableLayer(used_bytes=figures[0], inodes_used=figures[1],
                         mountpoint=container.rootfs)
