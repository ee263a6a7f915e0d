"""The stats and metrics RPCs: ContainerStats ... ListPodSandboxMetrics.

Readings come from crisp.pods (cgroups, writable layers, pod interfaces); this module only
turns them into CRI messages. A value the host does not account is left unset rather than
reported as zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from crisp.api import cri_pb2
from crisp.cgroups import CgroupUsage, InterfaceStats
from crisp.pods import PodService
from crisp.pods.metrics import METRIC_DESCRIPTORS, MetricKind, MetricSample, pod_metrics
from crisp.pods.model import Container, Sandbox
from crisp.pods.stats import ContainerUsage, PodUsage
from crisp.server.services import Services

Context = grpc.aio.ServicerContext[Any, Any]

T = TypeVar("T")

_METRIC_TYPES = {MetricKind.COUNTER: cri_pb2.COUNTER, MetricKind.GAUGE: cri_pb2.GAUGE}


# The messages are filled field by field into the response (``add()``), not built from
# nested constructors and copied in: a full node's ListPodSandboxStats is some 3,000
# sub-messages, and building each one and then copying it cost more than the reading.
# Setting a field marks its message present, as the constructors did; None leaves it unset.

def _put(wrapper: cri_pb2.UInt64Value, value: int | None) -> None:
    if value is not None:
        wrapper.value = value if value > 0 else 0


class _Attributes:
    """Attributes (id, metadata, labels, annotations) of each container and pod, built once.

    They come from the object's config, which never changes, and rebuilding the label and
    annotation maps was the largest part of each stats message; a copy of a kept message is
    done in C. An entry is used only for the very config it was built from (ids are not
    trusted alone). Entries of removed objects go when the kept ones outnumber a full list
    call's by far.
    """

    def __init__(self) -> None:
        self.containers: dict[str, tuple[object, cri_pb2.ContainerAttributes]] = {}
        self.pods: dict[str, tuple[object, cri_pb2.PodSandboxAttributes]] = {}

    def container(self, container: Container) -> cri_pb2.ContainerAttributes:
        config = container.config
        kept = self.containers.get(container.id)
        if kept is not None and kept[0] is config:
            return kept[1]
        message = cri_pb2.ContainerAttributes(
            id=container.id,
            metadata=cri_pb2.ContainerMetadata(name=container.name,
                                               attempt=config.metadata.attempt),
            labels=config.labels, annotations=config.annotations,
        )
        self.containers[container.id] = (config, message)
        return message

    def pod(self, sandbox: Sandbox) -> cri_pb2.PodSandboxAttributes:
        config = sandbox.config
        kept = self.pods.get(sandbox.id)
        if kept is not None and kept[0] is config:
            return kept[1]
        metadata = config.metadata
        message = cri_pb2.PodSandboxAttributes(
            id=sandbox.id,
            metadata=cri_pb2.PodSandboxMetadata(name=metadata.name, uid=metadata.uid,
                                                namespace=metadata.namespace,
                                                attempt=metadata.attempt),
            labels=config.labels, annotations=config.annotations,
        )
        self.pods[sandbox.id] = (config, message)
        return message

    def sweep(self, containers: list[str], pods: list[str]) -> None:
        """Keep only these ids' entries if far more are kept (called after list calls)."""
        if len(self.containers) > 2 * len(containers) + 64:
            self.containers = {i: self.containers[i] for i in containers
                               if i in self.containers}
        if len(self.pods) > 2 * len(pods) + 64:
            self.pods = {i: self.pods[i] for i in pods if i in self.pods}


_attributes = _Attributes()


def _fill_cpu(message: cri_pb2.CpuUsage, usage: CgroupUsage) -> None:
    stats = usage.stats
    message.timestamp = stats.timestamp_ns
    _put(message.usage_core_nano_seconds, stats.cpu_usage_core_ns)
    _put(message.usage_nano_cores, usage.cpu_nano_cores)


def _fill_memory(message: cri_pb2.MemoryUsage, usage: CgroupUsage) -> None:
    stats = usage.stats
    message.timestamp = stats.timestamp_ns
    _put(message.working_set_bytes, stats.memory_working_set_bytes)
    _put(message.available_bytes, stats.memory_available_bytes)
    _put(message.usage_bytes, stats.memory_usage_bytes)
    _put(message.rss_bytes, stats.memory_rss_bytes)
    _put(message.page_faults, stats.page_faults)
    _put(message.major_page_faults, stats.major_page_faults)


def _fill_container(message: cri_pb2.ContainerStats, usage: ContainerUsage) -> None:
    message.attributes.CopyFrom(_attributes.container(usage.container))
    if usage.cgroup is not None:
        stats = usage.cgroup.stats
        _fill_cpu(message.cpu, usage.cgroup)
        _fill_memory(message.memory, usage.cgroup)
        swap = message.swap
        swap.timestamp = stats.timestamp_ns
        _put(swap.swap_available_bytes, stats.swap_available_bytes)
        _put(swap.swap_usage_bytes, stats.swap_usage_bytes)
    if usage.writable_layer is not None:
        layer = usage.writable_layer
        filesystem = message.writable_layer
        filesystem.timestamp = usage.timestamp_ns
        filesystem.fs_id.mountpoint = layer.mountpoint
        _put(filesystem.used_bytes, layer.used_bytes)
        _put(filesystem.inodes_used, layer.inodes_used)


def _fill_interface(message: cri_pb2.NetworkInterfaceUsage, interface: InterfaceStats) -> None:
    message.name = interface.name
    _put(message.rx_bytes, interface.rx_bytes)
    _put(message.rx_errors, interface.rx_errors)
    _put(message.tx_bytes, interface.tx_bytes)
    _put(message.tx_errors, interface.tx_errors)


def _fill_pod(message: cri_pb2.PodSandboxStats, usage: PodUsage) -> None:
    message.attributes.CopyFrom(_attributes.pod(usage.sandbox))
    linux = message.linux
    linux.SetInParent()  # there even for a pod with nothing to report yet
    add = linux.containers.add
    for container in usage.containers:
        _fill_container(add(), container)
    if usage.cgroup is not None:
        _fill_cpu(linux.cpu, usage.cgroup)
        _fill_memory(linux.memory, usage.cgroup)
        process = linux.process
        process.timestamp = usage.cgroup.stats.timestamp_ns
        _put(process.process_count, usage.cgroup.stats.process_count)
    if usage.interfaces:
        network = linux.network
        network.timestamp = usage.timestamp_ns
        add_interface = network.interfaces.add
        for interface in usage.interfaces:
            _fill_interface(add_interface(), interface)
        if (default := usage.default_interface) is not None:
            _fill_interface(network.default_interface, default)


def container_stats(usage: ContainerUsage) -> cri_pb2.ContainerStats:
    message = cri_pb2.ContainerStats()
    _fill_container(message, usage)
    return message


def pod_sandbox_stats(usage: PodUsage) -> cri_pb2.PodSandboxStats:
    message = cri_pb2.PodSandboxStats()
    _fill_pod(message, usage)
    return message


FILL_BATCH = 32
"""Containers or pods filled into a list response between two returns to the event loop,
so that the kubelet's relists, arriving meanwhile, wait for one batch, not the whole list."""


async def _fill_batched(add: Callable[[], Any], items: Sequence[T],
                       fill: Callable[[Any, T], None], batch: int) -> None:
    """Fill ``items`` into a list response's new entries, ``batch`` at a time."""
    for start in range(0, len(items), batch):
        if start:
            await asyncio.sleep(0)
        for item in items[start:start + batch]:
            fill(add(), item)


async def _fill_containers(response: cri_pb2.ListContainerStatsResponse,
                           usage: list[ContainerUsage]) -> None:
    await _fill_batched(response.stats.add, usage, _fill_container, FILL_BATCH)


async def _fill_pods(response: cri_pb2.ListPodSandboxStatsResponse,
                     usage: list[PodUsage]) -> None:
    # a pod is several containers' worth of messages
    await _fill_batched(response.stats.add, usage, _fill_pod, max(FILL_BATCH // 4, 1))


def _metric(sample: MetricSample) -> cri_pb2.Metric:
    # timestamp 0: a live value, read for this call.
    return cri_pb2.Metric(name=sample.name, timestamp=0, metric_type=_METRIC_TYPES[sample.kind],
                          label_values=list(sample.label_values),
                          value=cri_pb2.UInt64Value(value=max(sample.value, 0)))


class StatsCalls:
    """ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats and metrics."""

    services: Services

    @property
    def _stats_pods(self) -> PodService:
        return self.services.pods

    async def ContainerStats(
        self, request: cri_pb2.ContainerStatsRequest, context: Context
    ) -> cri_pb2.ContainerStatsResponse:
        usage = await self._stats_pods.container_usage(request.container_id)
        return cri_pb2.ContainerStatsResponse(stats=container_stats(usage))

    async def ListContainerStats(
        self, request: cri_pb2.ListContainerStatsRequest, context: Context
    ) -> cri_pb2.ListContainerStatsResponse:
        wanted = request.filter
        usage = await self._stats_pods.containers_usage(
            id_prefix=wanted.id, sandbox_id=wanted.pod_sandbox_id,
            labels=dict(wanted.label_selector),
        )
        response = cri_pb2.ListContainerStatsResponse()
        await _fill_containers(response, usage)
        if not (wanted.id or wanted.pod_sandbox_id or wanted.label_selector):
            _attributes.sweep([u.container.id for u in usage], list(_attributes.pods))
        return response

    async def PodSandboxStats(
        self, request: cri_pb2.PodSandboxStatsRequest, context: Context
    ) -> cri_pb2.PodSandboxStatsResponse:
        usage = await self._stats_pods.sandbox_usage(request.pod_sandbox_id)
        return cri_pb2.PodSandboxStatsResponse(stats=pod_sandbox_stats(usage))

    async def ListPodSandboxStats(
        self, request: cri_pb2.ListPodSandboxStatsRequest, context: Context
    ) -> cri_pb2.ListPodSandboxStatsResponse:
        wanted = request.filter
        usage = await self._stats_pods.sandboxes_usage(id_prefix=wanted.id,
                                                       labels=dict(wanted.label_selector))
        response = cri_pb2.ListPodSandboxStatsResponse()
        await _fill_pods(response, usage)
        if not (wanted.id or wanted.label_selector):
            _attributes.sweep([c.container.id for u in usage for c in u.containers],
                              [u.sandbox.id for u in usage])
        return response

    async def ListMetricDescriptors(
        self, request: cri_pb2.ListMetricDescriptorsRequest, context: Context
    ) -> cri_pb2.ListMetricDescriptorsResponse:
        return cri_pb2.ListMetricDescriptorsResponse(descriptors=[
            cri_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys))
            for d in METRIC_DESCRIPTORS
        ])

    async def ListPodSandboxMetrics(
        self, request: cri_pb2.ListPodSandboxMetricsRequest, context: Context
    ) -> cri_pb2.ListPodSandboxMetricsResponse:
        usage = await self._stats_pods.sandboxes_usage(detailed=True)
        response = cri_pb2.ListPodSandboxMetricsResponse()
        for pod in map(pod_metrics, usage):
            response.pod_metrics.append(cri_pb2.PodSandboxMetrics(
                pod_sandbox_id=pod.sandbox_id,
                metrics=[_metric(s) for s in pod.samples],
                container_metrics=[
                    cri_pb2.ContainerMetrics(container_id=container_id,
                                             metrics=[_metric(s) for s in samples])
                    for container_id, samples in pod.containers.items()
                ],
            ))
        return response
