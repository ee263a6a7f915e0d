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
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
"""How old a cgroup reading (a container's or a pod's) and a pod's interface counters may be
in the list calls: the kubelet asks ListContainerStats and ListPodSandboxStats in the same
round, and both cover every container, so the second is answered from the first's
readings."""

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
    """One pod's reading: its cgroup (all its processes), its interfaces and its containers.

    ``timestamp_ns`` is when the interfaces were read (the call's time for a pod without).
    """

    sandbox: Sandbox
    timestamp_ns: int
    cgroup: CgroupUsage | None
    interfaces: list[InterfaceStats] = field(default_factory=list)
    containers: list[ContainerUsage] = field(default_factory=list)

    @property
    def default_interface(self) -> InterfaceStats | None:
        return next((i for i in self.interfaces if i.name == POD_INTERFACE), None)


K = TypeVar("K")
V = TypeVar("V")


class _Kept(Generic[K, V]):
    """Readings by id, each kept with the time it was taken, for the list calls' max age.

    One batch at a time: a call arriving while another reads waits for it and takes its
    readings rather than reading the same files again. An id the read left out (its cgroup
    or namespace is gone) loses what was kept for it.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[float, V]] = {}
        self._lock = asyncio.Lock()

    async def get(self, wanted: dict[str, K], max_age: float,
                  read: Callable[[dict[str, K]], Awaitable[dict[str, V]]],
                  live: Collection[str]) -> dict[str, V]:
        """The readings of ``wanted`` (id -> what reading it takes), up to ``max_age`` old;
        ``live`` is every id that may still be asked about (the others are swept)."""
        if max_age <= 0:
            return await read(wanted)
        async with self._lock:
            now = time.monotonic()
            kept = self._kept
            stale = {key: argument for key, argument in wanted.items()
                     if (entry := kept.get(key)) is None or now - entry[0] >= max_age}
            if stale:
                read_now = await read(stale)
                for key in stale:
                    if key in read_now:
                        kept[key] = (now, read_now[key])
                    else:
                        kept.pop(key, None)
                if len(kept) > len(live) + 64:  # sweep removed objects' readings
                    self._kept = kept = {k: e for k, e in kept.items() if k in live}
            return {key: kept[key][1] for key in wanted if key in kept}


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
        # For the list calls: container and pod cgroups, pod interfaces (by sandbox id).
        self._container_readings: _Kept[Container, CgroupUsage] = _Kept()
        self._pod_readings: _Kept[str, CgroupUsage] = _Kept()
        self._interface_readings: _Kept[tuple[str, list[int]],
                                        tuple[int, list[InterfaceStats]]] = _Kept()

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
        started = {c.id: c for c in containers if c.pid}
        accounting: dict[str, CgroupAccounting] = {}
        filesystems: dict[str, FilesystemInfo] = {}
        readings, layers = await asyncio.gather(
            self._container_cgroups(started, detailed, cgroups_max_age),
            self.ctx.rootfs.usages([c.id for c in containers], layers_max_age),
        )
        if detailed:
            running = {c.id: (self.containers.cgroups_path(c), c.pid)
                       for c in containers if c.id in readings}
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

    async def _container_cgroups(self, containers: dict[str, Container], processes: bool,
                                 max_age: float) -> dict[str, CgroupUsage]:
        """Readings of the containers' cgroups (by id), up to ``max_age`` old.

        Paths are worked out only for the containers read now, not the kept ones.
        """
        if not containers:
            return {}
        cgroups = self.ctx.cgroups

        async def read(stale: dict[str, Container]) -> dict[str, CgroupUsage]:
            paths = {cid: self.containers.cgroups_path(c) for cid, c in stale.items()}
            return await cgroups.containers_usage(paths, processes=processes)

        if processes:  # the metrics' readings have more in them: never the kept ones
            return await read(containers)
        return await self._container_readings.get(containers, max_age, read,
                                                  self.ctx.store.containers)

    async def pods_usage(self, pods: list[tuple[Sandbox, list[Container]]],
                         detailed: bool = False, layers_max_age: float = 0.0,
                         cgroups_max_age: float = 0.0) -> list[PodUsage]:
        """Usage of each pod with its containers (as `containers_usage` reads them)."""
        parents = {s.id: s.cgroup_parent for s, _ in pods if s.cgroup_parent}
        # runc makes the pod cgroup with the pod's first container: none before that
        cgroups, interfaces, usage = await asyncio.gather(
            self._pod_readings.get(parents, cgroups_max_age, self.ctx.cgroups.pods_usage,
                                   self.ctx.store.sandboxes) if parents else _nothing(),
            self._interfaces(pods, cgroups_max_age),
            self.containers_usage([c for _, cs in pods for c in cs], detailed, layers_max_age,
                                  cgroups_max_age),
        )
        by_id = {u.container.id: u for u in usage}
        now = time.time_ns()
        return [
            PodUsage(sandbox=s, timestamp_ns=network[0], cgroup=cgroups.get(s.id),
                     interfaces=network[1], containers=[by_id[c.id] for c in cs])
            for s, cs in pods
            for network in (interfaces.get(s.id, (now, [])),)
        ]

    async def pod_usage(self, sandbox: Sandbox, containers: list[Container],
                        detailed: bool = False) -> PodUsage:
        """One pod's usage, its layers walked afresh."""
        (usage,) = await self.pods_usage([(sandbox, containers)], detailed)
        return usage

    async def _interfaces(
        self, pods: list[tuple[Sandbox, list[Container]]], max_age: float
    ) -> dict[str, tuple[int, list[InterfaceStats]]]:
        """Each pod's interfaces (by sandbox id) and when they were read."""
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
        return await self._interface_readings.get(namespaces, max_age, _read_interfaces,
                                                  self.ctx.store.sandboxes)


async def _nothing() -> dict[str, CgroupUsage]:
    return {}


async def _read_interfaces(
    namespaces: dict[str, tuple[str, list[int]]]
) -> dict[str, tuple[int, list[InterfaceStats]]]:
    now = time.time_ns()
    try:
        found = await interfaces_of_netns_many(namespaces)
    except CrispError as error:
        log.warning("cannot read the network counters of pods: %s", error)
        return {}
    return {key: (now, interfaces) for key, interfaces in found.items()}


def _layer(container: Container, figures: tuple[int, int] | None) -> WritableLayer | None:
    if figures is None:
        return None
    return WritableLayer(used_bytes=figures[0], inodes_used=figures[1],
                         mountpoint=container.rootfs)
