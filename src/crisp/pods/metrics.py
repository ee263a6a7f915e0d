"""The pod and container metrics of ListMetricDescriptors and ListPodSandboxMetrics.

Names follow cAdvisor (and CRI-O, which serves the same call), so that dashboards built on
the kubelet's /metrics/cadvisor keep working when the kubelet takes them from the runtime.
The set is fixed for the daemon's lifetime: the kubelet drops samples of metrics the first
ListMetricDescriptors did not describe. Values are read from the same `PodUsage` the stats
calls report, so the two always agree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crisp.cgroups import (
    BlockDeviceIo,
    CgroupAccounting,
    ContainerCgroupStats,
    HugetlbUsage,
    InterfaceStats,
    ProcessTotals,
)
from crisp.cgroups.accounting import PRESSURE_RESOURCES
from crisp.pods.filesystems import FilesystemInfo
from crisp.pods.stats import ContainerUsage, PodUsage, WritableLayer

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


Values = Iterable[tuple[tuple[str, ...], int]]
"""A metric's values for one container: (extra label values, value) pairs."""

_Reader = Callable[[ContainerUsage], Values]


def _seconds(nanoseconds: int | None) -> int | None:
    return None if nanoseconds is None else nanoseconds // NANOSECONDS_PER_SECOND


def _one(value: int | None) -> Values:
    return () if value is None else (((), value),)


def _cgroup(read: Callable[[ContainerCgroupStats], int | None]) -> _Reader:
    """A value of the reading the stats calls share (present while the container runs)."""
    return lambda usage: _one(read(usage.cgroup.stats)) if usage.cgroup is not None else ()


def _accounting(read: Callable[[CgroupAccounting], int | None]) -> _Reader:
    """A value of the detailed reading taken for metrics (present while it runs)."""
    return lambda usage: _one(read(usage.accounting)) if usage.accounting is not None else ()


def _processes(read: Callable[[ProcessTotals], int]) -> _Reader:
    return _accounting(lambda a: read(a.processes) if a.processes is not None else None)


def _block_io(read: Callable[[BlockDeviceIo], dict[str, int]], operation: str) -> _Reader:
    """One operation's count per device, labelled with the device name."""
    def values(usage: ContainerUsage) -> Values:
        devices = usage.accounting.block_io if usage.accounting is not None else ()
        return [((device.device,), read(device)[operation])
                for device in devices if operation in read(device)]
    return values


def _blkio_device_usage(usage: ContainerUsage) -> Values:
    devices = usage.accounting.block_io if usage.accounting is not None else ()
    return [((device.device, str(device.major), str(device.minor), operation), value)
            for device in devices for operation, value in device.bytes.items()]


def _filesystem(read: Callable[[FilesystemInfo], int]) -> _Reader:
    return lambda usage: (
        (((usage.filesystem.device,), read(usage.filesystem)),)
        if usage.filesystem is not None else ()
    )


def _layer(read: Callable[[WritableLayer], int]) -> _Reader:
    """A writable-layer value, labelled with the device of the filesystem it is on."""
    def values(usage: ContainerUsage) -> Values:
        if usage.writable_layer is None:
            return ()
        device = usage.filesystem.device if usage.filesystem is not None else ""
        return (((device,), read(usage.writable_layer)),)
    return values


def _hugetlb(read: Callable[[HugetlbUsage], int | None]) -> _Reader:
    def values(usage: ContainerUsage) -> Values:
        pages = usage.accounting.hugetlb if usage.accounting is not None else ()
        return [((page.page_size,), value) for page in pages
                if (value := read(page)) is not None]
    return values


def _pressure(resource: str, stalled: bool) -> _Reader:
    def read(accounting: CgroupAccounting) -> int | None:
        pressure = accounting.pressure.get(resource)
        if pressure is None:
            return None
        return _seconds(pressure.stalled_ns if stalled else pressure.waiting_ns)
    return _accounting(read)


def _open_files_limit(usage: ContainerUsage) -> Values:
    limit = usage.accounting.open_files_soft_limit if usage.accounting is not None else None
    return () if limit is None else ((("max_open_files",), limit),)


def _last_seen(usage: ContainerUsage) -> Values:
    return _one(_seconds(usage.cgroup.stats.timestamp_ns)) if usage.cgroup is not None else ()


def _start_time(usage: ContainerUsage) -> Values:
    started = usage.container.started_at
    return _one(_seconds(started)) if started > 0 else ()


_G, _C = MetricKind.GAUGE, MetricKind.COUNTER
_DEVICE = ("device",)

_CONTAINER: list[tuple[str, str, tuple[str, ...], MetricKind, _Reader]] = [
    # CPU
    ("container_cpu_usage_seconds_total", "Cumulative CPU time consumed, in whole seconds.",
     (), _C, _cgroup(lambda s: _seconds(s.cpu_usage_core_ns))),
    ("container_cpu_user_seconds_total", "Cumulative user CPU time consumed, in whole seconds.",
     (), _C, _accounting(lambda a: _seconds(a.cpu_user_ns))),
    ("container_cpu_system_seconds_total",
     "Cumulative system (kernel) CPU time consumed, in whole seconds.",
     (), _C, _accounting(lambda a: _seconds(a.cpu_system_ns))),
    ("container_cpu_cfs_periods_total",
     "Number of elapsed CFS enforcement periods (they only elapse under a CPU quota).",
     (), _C, _accounting(lambda a: a.cfs_periods)),
    ("container_cpu_cfs_throttled_periods_total",
     "Number of CFS enforcement periods in which the container hit its CPU quota.",
     (), _C, _accounting(lambda a: a.cfs_throttled_periods)),
    ("container_cpu_cfs_throttled_seconds_total",
     "Total time the container was throttled by its CPU quota, in whole seconds.",
     (), _C, _accounting(lambda a: _seconds(a.cfs_throttled_ns))),
    # Memory
    ("container_memory_usage_bytes",
     "Current memory usage, including all memory regardless of when it was accessed.",
     (), _G, _cgroup(lambda s: s.memory_usage_bytes)),
    ("container_memory_working_set_bytes", "Current working set: usage minus inactive file "
     "cache.", (), _G, _cgroup(lambda s: s.memory_working_set_bytes)),
    ("container_memory_rss", "Size of RSS (anonymous memory) in bytes.",
     (), _G, _cgroup(lambda s: s.memory_rss_bytes)),
    ("container_memory_cache", "Page cache memory (file-backed pages) in bytes.",
     (), _G, _accounting(lambda a: a.memory_cache)),
    ("container_memory_mapped_file",
     "Size of memory-mapped files (tmpfs and shared memory included) in bytes.",
     (), _G, _accounting(lambda a: a.memory_mapped_file)),
    ("container_memory_kernel_usage", "Kernel memory (slab, stacks, page tables) in bytes.",
     (), _G, _accounting(lambda a: a.memory_kernel)),
    ("container_memory_swap", "Container swap usage in bytes.",
     (), _G, _cgroup(lambda s: s.swap_usage_bytes)),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded, in bytes.",
     (), _G, _accounting(lambda a: a.memory_max_usage)),
    ("container_memory_failcnt",
     "Number of times memory usage hit the limit (cgroup v2: memory.events max).",
     (), _C, _accounting(lambda a: a.memory_failcnt)),
    ("container_memory_failures_total", "Cumulative count of page faults.",
     (), _C, _cgroup(lambda s: s.page_faults)),
    ("container_memory_major_page_faults_total", "Cumulative count of major page faults.",
     (), _C, _cgroup(lambda s: s.major_page_faults)),
    ("container_oom_events_total", "Count of out-of-memory kills in the container's cgroup.",
     (), _C, _cgroup(lambda s: s.oom_kills)),
    ("container_hugetlb_usage_bytes",
     "Hugepage usage in bytes, per page size; absent where the hugetlb controller is not "
     "mounted (hugepages are then not accounted per container).",
     ("pagesize",), _G, _hugetlb(lambda p: p.usage)),
    ("container_hugetlb_max_usage_bytes",
     "Maximum hugepage usage recorded in bytes, per page size; absent without the hugetlb "
     "controller, and on cgroup v2, which records no maximum.",
     ("pagesize",), _G, _hugetlb(lambda p: p.max_usage)),
    # Block I/O and filesystem
    ("container_blkio_device_usage_total",
     "Bytes transferred to and from each block device, by operation (blkio/io controller).",
     ("device", "major", "minor", "operation"), _C, _blkio_device_usage),
    ("container_fs_reads_bytes_total", "Cumulative bytes read, per block device.",
     _DEVICE, _C, _block_io(lambda d: d.bytes, "Read")),
    ("container_fs_writes_bytes_total", "Cumulative bytes written, per block device.",
     _DEVICE, _C, _block_io(lambda d: d.bytes, "Write")),
    ("container_fs_reads_total", "Cumulative count of reads completed, per block device.",
     _DEVICE, _C, _block_io(lambda d: d.operations, "Read")),
    ("container_fs_writes_total", "Cumulative count of writes completed, per block device.",
     _DEVICE, _C, _block_io(lambda d: d.operations, "Write")),
    ("container_fs_usage_bytes", "Bytes used by the container's writable layer.",
     _DEVICE, _G, _layer(lambda layer: layer.used_bytes)),
    ("container_fs_inodes_used", "Inodes used by the container's writable layer.",
     _DEVICE, _G, _layer(lambda layer: layer.inodes_used)),
    ("container_fs_limit_bytes",
     "Size of the filesystem holding the container's writable layer, in bytes (the most "
     "the layer can grow to: crisp sets no per-container quota).",
     _DEVICE, _G, _filesystem(lambda fs: fs.capacity_bytes)),
    ("container_fs_inodes_total",
     "Inodes of the filesystem holding the container's writable layer.",
     _DEVICE, _G, _filesystem(lambda fs: fs.inodes_total)),
    ("container_fs_inodes_free",
     "Free inodes of the filesystem holding the container's writable layer.",
     _DEVICE, _G, _filesystem(lambda fs: fs.inodes_free)),
    # Processes
    ("container_processes", "Number of processes running in the container.",
     (), _G, _cgroup(lambda s: s.process_count)),
    ("container_threads", "Number of threads running in the container.",
     (), _G, _processes(lambda p: p.threads)),
    ("container_threads_max", "Maximum number of threads (pids.max); 0 means no limit.",
     (), _G, _accounting(lambda a: a.threads_max)),
    ("container_file_descriptors", "Number of open file descriptors of the container.",
     (), _G, _processes(lambda p: p.file_descriptors)),
    ("container_sockets", "Number of open sockets of the container.",
     (), _G, _processes(lambda p: p.sockets)),
    ("container_ulimits_soft",
     "Soft ulimit of the container's first process; only max_open_files is reported.",
     ("ulimit",), _G, _open_files_limit),
    # Pressure stall information
    *((f"container_pressure_{resource}_{state}_seconds_total",
       f"Total time {'some' if state == 'waiting' else 'all'} of the container's tasks "
       f"{'waited' if state == 'waiting' else 'were stalled'} on {resource}, in whole "
       "seconds (PSI; absent where the kernel has no per-cgroup pressure).",
       (), _C, _pressure(resource, state == "stalled"))
      for resource in PRESSURE_RESOURCES for state in ("waiting", "stalled")),
    # Limits in force and lifetime
    ("container_spec_cpu_period", "CPU CFS period of the container, in microseconds.",
     (), _G, _accounting(lambda a: a.spec_cpu_period_us)),
    ("container_spec_cpu_quota",
     "CPU CFS quota of the container, in microseconds per period; absent without a quota.",
     (), _G, _accounting(lambda a: a.spec_cpu_quota_us)),
    ("container_spec_cpu_shares", "CPU shares of the container (cgroup v2: from cpu.weight).",
     (), _G, _accounting(lambda a: a.spec_cpu_shares)),
    ("container_spec_memory_limit_bytes", "Memory limit in bytes; 0 means no limit.",
     (), _G, _accounting(lambda a: a.spec_memory_limit)),
    ("container_spec_memory_swap_limit_bytes",
     "Memory plus swap limit in bytes; 0 means no limit, or a kernel without swap "
     "accounting, where none can be enforced.",
     (), _G, _accounting(lambda a: a.spec_memory_swap_limit)),
    ("container_spec_memory_reservation_limit_bytes",
     "Memory reservation (v1 soft limit, v2 memory.low) in bytes; 0 means none.",
     (), _G, _accounting(lambda a: a.spec_memory_reservation)),
    ("container_start_time_seconds", "Start time of the container, in seconds since the epoch.",
     (), _G, _start_time),
    ("container_last_seen",
     "Time crisp last read the running container, in seconds since the epoch.",
     (), _G, _last_seen),
]

_CONTAINER_METRICS: list[tuple[MetricDescriptor, _Reader]] = [
    (MetricDescriptor(name, help_text, CONTAINER_LABELS + extra, kind), read)
    for name, help_text, extra, kind, read in _CONTAINER
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
    *(descriptor for descriptor, _ in _CONTAINER_METRICS),
    *(descriptor for descriptor, _ in _NETWORK),
]


def container_samples(usage: ContainerUsage) -> list[MetricSample]:
    """The samples of one container; values the host does not account are left out."""
    container = usage.container
    labels = (container.name, container.id, container.config.image)
    return [
        MetricSample(descriptor.name, descriptor.kind, labels + extra, value)
        for descriptor, read in _CONTAINER_METRICS
        for extra, value in read(usage)
    ]


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
