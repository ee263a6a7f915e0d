"""The stats and metrics RPCs: ContainerStats ... ListPodSandboxMetrics.

Readings come from crisp.pods (cgroups, writable layers, pod interfaces); this module only
turns them into CRI messages. A value the host does not account is left unset rather than
reported as zero.
"""

from __future__ import annotations

from typing import Any

import grpc

from crisp.api import cri_pb2
from crisp.cgroups import CgroupUsage, InterfaceStats
from crisp.pods import PodService
from crisp.pods.metrics import METRIC_DESCRIPTORS, MetricKind, MetricSample, pod_metrics
from crisp.pods.stats import ContainerUsage, PodUsage
from crisp.server.services import Services

Context = grpc.aio.ServicerContext[Any, Any]

_METRIC_TYPES = {MetricKind.COUNTER: cri_pb2.COUNTER, MetricKind.GAUGE: cri_pb2.GAUGE}


def _u64(value: int | None) -> cri_pb2.UInt64Value | None:
    return None if value is None else cri_pb2.UInt64Value(value=max(value, 0))


def _cpu(usage: CgroupUsage) -> cri_pb2.CpuUsage:
    stats = usage.stats
    return cri_pb2.CpuUsage(timestamp=stats.timestamp_ns,
                            usage_core_nano_seconds=_u64(stats.cpu_usage_core_ns),
                            usage_nano_cores=_u64(usage.cpu_nano_cores))


def _memory(usage: CgroupUsage) -> cri_pb2.MemoryUsage:
    stats = usage.stats
    return cri_pb2.MemoryUsage(
        timestamp=stats.timestamp_ns,
        working_set_bytes=_u64(stats.memory_working_set_bytes),
        available_bytes=_u64(stats.memory_available_bytes),
        usage_bytes=_u64(stats.memory_usage_bytes),
        rss_bytes=_u64(stats.memory_rss_bytes),
        page_faults=_u64(stats.page_faults),
        major_page_faults=_u64(stats.major_page_faults),
    )


def container_stats(usage: ContainerUsage) -> cri_pb2.ContainerStats:
    container = usage.container
    message = cri_pb2.ContainerStats(attributes=cri_pb2.ContainerAttributes(
        id=container.id,
        metadata=cri_pb2.ContainerMetadata(name=container.name,
                                           attempt=container.config.metadata.attempt),
        labels=container.config.labels, annotations=container.config.annotations,
    ))
    if usage.cgroup is not None:
        stats = usage.cgroup.stats
        message.cpu.CopyFrom(_cpu(usage.cgroup))
        message.memory.CopyFrom(_memory(usage.cgroup))
        message.swap.CopyFrom(cri_pb2.SwapUsage(
            timestamp=stats.timestamp_ns,
            swap_available_bytes=_u64(stats.swap_available_bytes),
            swap_usage_bytes=_u64(stats.swap_usage_bytes),
        ))
    if usage.writable_layer is not None:
        layer = usage.writable_layer
        message.writable_layer.CopyFrom(cri_pb2.FilesystemUsage(
            timestamp=usage.timestamp_ns,
            fs_id=cri_pb2.FilesystemIdentifier(mountpoint=layer.mountpoint),
            used_bytes=_u64(layer.used_bytes), inodes_used=_u64(layer.inodes_used),
        ))
    return message


def _interface(interface: InterfaceStats) -> cri_pb2.NetworkInterfaceUsage:
    return cri_pb2.NetworkInterfaceUsage(
        name=interface.name, rx_bytes=_u64(interface.rx_bytes),
        rx_errors=_u64(interface.rx_errors), tx_bytes=_u64(interface.tx_bytes),
        tx_errors=_u64(interface.tx_errors),
    )


def pod_sandbox_stats(usage: PodUsage) -> cri_pb2.PodSandboxStats:
    sandbox = usage.sandbox
    metadata = sandbox.config.metadata
    linux = cri_pb2.LinuxPodSandboxStats(
        containers=[container_stats(c) for c in usage.containers]
    )
    if usage.cgroup is not None:
        linux.cpu.CopyFrom(_cpu(usage.cgroup))
        linux.memory.CopyFrom(_memory(usage.cgroup))
        linux.process.CopyFrom(cri_pb2.ProcessUsage(
            timestamp=usage.cgroup.stats.timestamp_ns,
            process_count=_u64(usage.cgroup.stats.process_count),
        ))
    if usage.interfaces:
        linux.network.CopyFrom(cri_pb2.NetworkUsage(
            timestamp=usage.timestamp_ns,
            interfaces=[_interface(i) for i in usage.interfaces],
        ))
        if (default := usage.default_interface) is not None:
            linux.network.default_interface.CopyFrom(_interface(default))
    return cri_pb2.PodSandboxStats(
        attributes=cri_pb2.PodSandboxAttributes(
            id=sandbox.id,
            metadata=cri_pb2.PodSandboxMetadata(name=metadata.name, uid=metadata.uid,
                                                namespace=metadata.namespace,
                                                attempt=metadata.attempt),
            labels=sandbox.config.labels, annotations=sandbox.config.annotations,
        ),
        linux=linux,
    )


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
        return cri_pb2.ListContainerStatsResponse(stats=[container_stats(u) for u in usage])

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
        return cri_pb2.ListPodSandboxStatsResponse(stats=[pod_sandbox_stats(u) for u in usage])

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
