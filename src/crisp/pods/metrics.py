"""The pod and container metrics of ListMetricDescriptors and ListPodSandboxMetrics.

Names follow cAdvisor (and CRI-O, which serves the same call), so that dashboards built on
the kubelet's /metrics/cadvisor keep working when the kubelet takes them from the runtime.
The set is fixed for the daemon's lifetime: the kubelet drops samples of metrics the first
ListMetricDescriptors did not describe. Values are read from the same `PodUsage` the stats
calls report, so the two always agree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from crisp.cgroups import ContainerCgroupStats, InterfaceStats
from crisp.pods.stats import ContainerUsage, PodUsage

NANOSECONDS_PER_SECOND = 1_000_000_000

CONTAINER_LABELS = ("container", "id", "image")
NETWORK_LABELS = ("interface",)


class MetricKind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class MetricDescriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    kind: MetricKind


@dataclass(frozen=True)
class MetricSample:
    name: str
    kind: MetricKind
    label_values: tuple[str, ...]
    value: int


@dataclass(frozen=True)
class PodMetrics:
    """The samples of one pod: pod-level (network) and per container."""

    sandbox_id: str
    samples: list[MetricSample]
    containers: dict[str, list[MetricSample]]


_CgroupValue = Callable[[ContainerCgroupStats], int | None]


def _cpu_seconds(stats: ContainerCgroupStats) -> int | None:
    usage = stats.cpu_usage_core_ns
    return None if usage is None else usage // NANOSECONDS_PER_SECOND


_CONTAINER_CGROUP: list[tuple[MetricDescriptor, _CgroupValue]] = [
    (MetricDescriptor("container_cpu_usage_seconds_total",
                      "Cumulative CPU time consumed, in whole seconds.",
                      CONTAINER_LABELS, MetricKind.COUNTER), _cpu_seconds),
    (MetricDescriptor("container_memory_usage_bytes",
                      "Current memory usage, including all memory regardless of when it was "
                      "accessed.", CONTAINER_LABELS, MetricKind.GAUGE),
     lambda s: s.memory_usage_bytes),
    (MetricDescriptor("container_memory_working_set_bytes",
                      "Current working set: usage minus inactive file cache.",
                      CONTAINER_LABELS, MetricKind.GAUGE),
     lambda s: s.memory_working_set_bytes),
    (MetricDescriptor("container_memory_rss", "Size of RSS (anonymous memory) in bytes.",
                      CONTAINER_LABELS, MetricKind.GAUGE), lambda s: s.memory_rss_bytes),
    (MetricDescriptor("container_memory_swap", "Container swap usage in bytes.",
                      CONTAINER_LABELS, MetricKind.GAUGE), lambda s: s.swap_usage_bytes),
    (MetricDescriptor("container_memory_failures_total",
                      "Cumulative count of page faults.", CONTAINER_LABELS,
                      MetricKind.COUNTER), lambda s: s.page_faults),
    (MetricDescriptor("container_memory_major_page_faults_total",
                      "Cumulative count of major page faults.", CONTAINER_LABELS,
                      MetricKind.COUNTER), lambda s: s.major_page_faults),
    (MetricDescriptor("container_oom_events_total",
                      "Count of out-of-memory kills in the container's cgroup.",
                      CONTAINER_LABELS, MetricKind.COUNTER), lambda s: s.oom_kills),
    (MetricDescriptor("container_processes", "Number of processes running in the container.",
                      CONTAINER_LABELS, MetricKind.GAUGE), lambda s: s.process_count),
]

_CONTAINER_FS = [
    MetricDescriptor("container_fs_usage_bytes",
                     "Bytes used by the container's writable layer.",
                     CONTAINER_LABELS, MetricKind.GAUGE),
    MetricDescriptor("container_fs_inodes_used",
                     "Inodes used by the container's writable layer.",
                     CONTAINER_LABELS, MetricKind.GAUGE),
]

_NETWORK: list[tuple[MetricDescriptor, Callable[[InterfaceStats], int]]] = [
    (MetricDescriptor(f"container_network_{name}_total", help_text, NETWORK_LABELS,
                      MetricKind.COUNTER), value)
    for name, help_text, value in [
        ("receive_bytes", "Cumulative count of bytes received.", lambda i: i.rx_bytes),
        ("receive_packets", "Cumulative count of packets received.", lambda i: i.rx_packets),
        ("receive_errors", "Cumulative count of errors encountered while receiving.",
         lambda i: i.rx_errors),
        ("receive_packets_dropped", "Cumulative count of packets dropped while receiving.",
         lambda i: i.rx_dropped),
        ("transmit_bytes", "Cumulative count of bytes transmitted.", lambda i: i.tx_bytes),
        ("transmit_packets", "Cumulative count of packets transmitted.",
         lambda i: i.tx_packets),
        ("transmit_errors", "Cumulative count of errors encountered while transmitting.",
         lambda i: i.tx_errors),
        ("transmit_packets_dropped",
         "Cumulative count of packets dropped while transmitting.", lambda i: i.tx_dropped),
    ]
]

METRIC_DESCRIPTORS: list[MetricDescriptor] = [
    *(descriptor for descriptor, _ in _CONTAINER_CGROUP),
    *_CONTAINER_FS,
    *(descriptor for descriptor, _ in _NETWORK),
]


def container_samples(usage: ContainerUsage) -> list[MetricSample]:
    """The samples of one container; values the host does not account are left out."""
    container = usage.container
    labels = (container.name, container.id, container.config.image)
    samples: list[MetricSample] = []
    if usage.cgroup is not None:
        for descriptor, read in _CONTAINER_CGROUP:
            value = read(usage.cgroup.stats)
            if value is not None:
                samples.append(MetricSample(descriptor.name, descriptor.kind, labels, value))
    if usage.writable_layer is not None:
        used_bytes, inodes = _CONTAINER_FS
        samples.append(MetricSample(used_bytes.name, used_bytes.kind, labels,
                                    usage.writable_layer.used_bytes))
        samples.append(MetricSample(inodes.name, inodes.kind, labels,
                                    usage.writable_layer.inodes_used))
    return samples


def pod_metrics(usage: PodUsage) -> PodMetrics:
    """A pod's samples: network per interface at pod level, the rest per container."""
    network = [
        MetricSample(descriptor.name, descriptor.kind, (interface.name,), read(interface))
        for interface in usage.interfaces
        for descriptor, read in _NETWORK
    ]
    return PodMetrics(
        sandbox_id=usage.sandbox.id,
        samples=network,
        containers={c.container.id: container_samples(c) for c in usage.containers},
    )
