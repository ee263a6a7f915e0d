"""The detailed accounting of a container's cgroup that cAdvisor-style metrics report.

`read_stats` (stats.py) reads the handful of values the CRI stats messages carry; the
metrics the kubelet's /metrics/cadvisor has always shown need more: CPU user/system split and
CFS throttling, page cache and kernel memory, block I/O per device, PSI pressure, the limits
in force (the "spec" metrics) and the threads, fds and sockets of the processes. Reading them
is some 20 small pseudo-files plus /proc per process, so it is done only for
ListPodSandboxMetrics, in one worker thread for all containers.

Units are the kernel's, normalised: nanoseconds for time, bytes for sizes. Limits use
cAdvisor's conventions: 0 means "no limit", a CPU quota is None when there is none.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from crisp.cgroups.files import gone_as_not_found, read_int, read_text
from crisp.cgroups.host import CgroupHost
from crisp.cgroups.processes import (
    ProcessTotals,
    cgroup_pids,
    open_files_soft_limit,
    process_totals,
)
from crisp.cgroups.stats import UNLIMITED_THRESHOLD, parse_flat_keyed
from crisp.errors import NotFound

NANOSECONDS_PER_MICROSECOND = 1_000
NANOSECONDS_PER_SECOND = 1_000_000_000
PRESSURE_RESOURCES = ("cpu", "memory", "io")
SYS_DEV_BLOCK = "/sys/dev/block"


@dataclass(frozen=True)
class BlockDeviceIo:
    """I/O of one block device: bytes and operations by operation (Read, Write, ...)."""

    major: int
    minor: int
    device: str
    bytes: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Pressure:
    """PSI totals of one resource in nanoseconds: some tasks waiting / all tasks stalled."""

    waiting_ns: int
    stalled_ns: int | None


@dataclass(frozen=True)
class HugetlbUsage:
    """Hugepage usage of one page size ("2MB"); ``max_usage`` is None where not recorded."""

    page_size: str
    usage: int
    max_usage: int | None


@dataclass(frozen=True)
class CgroupAccounting:
    """One detailed reading of a container's cgroup and processes; None: not accounted."""

    timestamp_ns: int
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_ns: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_kernel: int | None = None
    memory_failcnt: int | None = None
    memory_max_usage: int | None = None
    block_io: tuple[BlockDeviceIo, ...] = ()
    pressure: dict[str, Pressure] = field(default_factory=dict)
    hugetlb: tuple[HugetlbUsage, ...] = ()
    processes: ProcessTotals | None = None
    threads_max: int | None = None
    open_files_soft_limit: int | None = None
    spec_cpu_period_us: int | None = None
    spec_cpu_quota_us: int | None = None
    spec_cpu_shares: int | None = None
    spec_memory_limit: int | None = None
    spec_memory_swap_limit: int | None = None
    spec_memory_reservation: int | None = None


def _limit_int(path: Path | None) -> int | None:
    """A number file as cAdvisor reads it: the kernel's "max" (no limit) is 0."""
    return read_int(path, max_as=0)


def _scaled(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def _limit(value: int | None) -> int | None:
    """A kernel limit in cAdvisor's terms: "max" and page-rounded LONG_MAX become 0."""
    if value is None:
        return None
    return 0 if value < 0 or value >= UNLIMITED_THRESHOLD else value


@functools.lru_cache(maxsize=256)
def block_device_name(major: int, minor: int, sys_dev_block: str = SYS_DEV_BLOCK) -> str:
    """/dev/NAME of a block device from sysfs, or "MAJOR:MINOR" if sysfs does not know it."""
    uevent = read_text(Path(sys_dev_block, f"{major}:{minor}", "uevent")) or ""
    for line in uevent.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return f"/dev/{value}"
    return f"{major}:{minor}"


def _device(number: str) -> tuple[int, int] | None:
    major, colon, minor = number.partition(":")
    if not colon or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def parse_blkio_v1(text: str | None) -> dict[tuple[int, int], dict[str, int]]:
    """blkio.throttle.io_service_bytes / io_serviced: "MAJ:MIN Op value" lines."""
    result: dict[tuple[int, int], dict[str, int]] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 3 or (device := _device(fields[0])) is None:
            continue  # the closing "Total N" line
        result.setdefault(device, {})[fields[1]] = int(fields[2])
    return result


_IO_STAT_BYTES = {"rbytes": "Read", "wbytes": "Write", "dbytes": "Discard"}
_IO_STAT_OPERATIONS = {"rios": "Read", "wios": "Write", "dios": "Discard"}


def parse_io_stat(
    text: str | None,
) -> tuple[dict[tuple[int, int], dict[str, int]], dict[tuple[int, int], dict[str, int]]]:
    """cgroup2 io.stat ("MAJ:MIN rbytes=N wbytes=N rios=N ...") as v1-style bytes and ops."""
    by_bytes: dict[tuple[int, int], dict[str, int]] = {}
    by_operations: dict[tuple[int, int], dict[str, int]] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if not fields or (device := _device(fields[0])) is None:
            continue
        for pair in fields[1:]:
            key, _, value = pair.partition("=")
            if key in _IO_STAT_BYTES:
                by_bytes.setdefault(device, {})[_IO_STAT_BYTES[key]] = int(value)
            elif key in _IO_STAT_OPERATIONS:
                by_operations.setdefault(device, {})[_IO_STAT_OPERATIONS[key]] = int(value)
    return by_bytes, by_operations


def _block_devices(
    by_bytes: dict[tuple[int, int], dict[str, int]],
    by_operations: dict[tuple[int, int], dict[str, int]],
) -> tuple[BlockDeviceIo, ...]:
    return tuple(
        BlockDeviceIo(major=major, minor=minor, device=block_device_name(major, minor),
                      bytes=by_bytes.get((major, minor), {}),
                      operations=by_operations.get((major, minor), {}))
        for major, minor in sorted(by_bytes.keys() | by_operations.keys())
    )


def parse_pressure(text: str | None) -> Pressure | None:
    """A PSI file ("some avg10=.. total=USEC" / "full ... total=USEC") in nanoseconds."""
    totals: dict[str, int] = {}
    for line in (text or "").splitlines():
        kind, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key == "total":
                totals[kind] = int(value) * NANOSECONDS_PER_MICROSECOND
    if "some" not in totals:
        return None
    return Pressure(waiting_ns=totals["some"], stalled_ns=totals.get("full"))


def cpu_weight_to_shares(weight: int) -> int:
    """cgroup2 cpu.weight [1, 10000] back to v1 shares [2, 262144] (runc's mapping, inverted)."""
    return 2 + ((weight - 1) * 262142) // 9999


def _v1(host: CgroupHost, cgroup: str, reading: CgroupAccounting) -> CgroupAccounting:
    """``reading`` with what the v1 controllers account, controller by controller."""
    if (cpuacct := host.controller_dir("cpuacct", cgroup)) is not None:
        ticks = parse_flat_keyed(read_text(cpuacct / "cpuacct.stat"))
        nanoseconds_per_tick = NANOSECONDS_PER_SECOND // os.sysconf("SC_CLK_TCK")
        reading = replace(
            reading,
            cpu_user_ns=_scaled(ticks.get("user"), nanoseconds_per_tick),
            cpu_system_ns=_scaled(ticks.get("system"), nanoseconds_per_tick),
        )
    if (cpu := host.controller_dir("cpu", cgroup)) is not None:
        stat = parse_flat_keyed(read_text(cpu / "cpu.stat"))
        quota = _limit_int(cpu / "cpu.cfs_quota_us")
        reading = replace(
            reading,
            cfs_periods=stat.get("nr_periods"),
            cfs_throttled_periods=stat.get("nr_throttled"),
            cfs_throttled_ns=stat.get("throttled_time"),
            spec_cpu_period_us=_limit_int(cpu / "cpu.cfs_period_us"),
            spec_cpu_quota_us=quota if quota is not None and quota > 0 else None,
            spec_cpu_shares=_limit_int(cpu / "cpu.shares"),
        )
    if (memory := host.controller_dir("memory", cgroup)) is not None:
        stat = parse_flat_keyed(read_text(memory / "memory.stat"))
        reading = replace(
            reading,
            memory_cache=stat.get("total_cache"),
            memory_mapped_file=stat.get("total_mapped_file"),
            memory_kernel=_limit_int(memory / "memory.kmem.usage_in_bytes"),
            memory_failcnt=_limit_int(memory / "memory.failcnt"),
            memory_max_usage=_limit_int(memory / "memory.max_usage_in_bytes"),
            spec_memory_limit=_limit(_limit_int(memory / "memory.limit_in_bytes")),
            # Without swap accounting there is no memsw file and no swap limit can be set.
            spec_memory_swap_limit=_limit(_limit_int(memory / "memory.memsw.limit_in_bytes")) or 0,
            spec_memory_reservation=_limit(_limit_int(memory / "memory.soft_limit_in_bytes")),
        )
    if (blkio := host.controller_dir("blkio", cgroup)) is not None:
        by_bytes = parse_blkio_v1(
            read_text(blkio / "blkio.throttle.io_service_bytes_recursive")
            or read_text(blkio / "blkio.throttle.io_service_bytes"))
        by_operations = parse_blkio_v1(
            read_text(blkio / "blkio.throttle.io_serviced_recursive")
            or read_text(blkio / "blkio.throttle.io_serviced"))
        reading = replace(reading, block_io=_block_devices(by_bytes, by_operations))
    if (hugetlb := host.controller_dir("hugetlb", cgroup)) is not None:
        reading = replace(reading, hugetlb=tuple(
            HugetlbUsage(size, usage, _limit_int(hugetlb / f"hugetlb.{size}.max_usage_in_bytes"))
            for size in host.hugepage_sizes
            if (usage := _limit_int(hugetlb / f"hugetlb.{size}.usage_in_bytes")) is not None
        ))
    return reading


def _v2(host: CgroupHost, cgroup: str, reading: CgroupAccounting) -> CgroupAccounting:
    """``reading`` with what the cgroup2 files account."""
    directory = host.unified_dir(cgroup)
    if directory is None:
        return reading
    stat = parse_flat_keyed(read_text(directory / "cpu.stat"))
    cpu_max = (read_text(directory / "cpu.max") or "").split()
    weight = _limit_int(directory / "cpu.weight")
    memory = parse_flat_keyed(read_text(directory / "memory.stat"))
    kernel = memory.get("kernel")
    if kernel is None and "slab" in memory:  # kernels before 5.18 split it up
        kernel = (memory["slab"] + memory.get("kernel_stack", 0)
                  + memory.get("pagetables", 0) + memory.get("sock", 0))
    limit = _limit(_limit_int(directory / "memory.max"))
    swap = read_text(directory / "memory.swap.max") or "max"
    return replace(
        reading,
        cpu_user_ns=_scaled(stat.get("user_usec"), NANOSECONDS_PER_MICROSECOND),
        cpu_system_ns=_scaled(stat.get("system_usec"), NANOSECONDS_PER_MICROSECOND),
        cfs_periods=stat.get("nr_periods"),
        cfs_throttled_periods=stat.get("nr_throttled"),
        cfs_throttled_ns=_scaled(stat.get("throttled_usec"), NANOSECONDS_PER_MICROSECOND),
        spec_cpu_period_us=int(cpu_max[1]) if len(cpu_max) == 2 else None,
        spec_cpu_quota_us=(int(cpu_max[0]) if len(cpu_max) == 2 and cpu_max[0] != "max"
                           else None),
        spec_cpu_shares=cpu_weight_to_shares(weight) if weight is not None else None,
        memory_cache=memory.get("file"),
        memory_mapped_file=memory.get("file_mapped"),
        memory_kernel=kernel,
        memory_failcnt=parse_flat_keyed(read_text(directory / "memory.events")).get("max"),
        memory_max_usage=_limit_int(directory / "memory.peak"),
        spec_memory_limit=limit,
        # CRI and cAdvisor's v1 value are memory plus swap; cgroup2 keeps swap on its own.
        spec_memory_swap_limit=0 if not limit or swap == "max" else limit + int(swap),
        spec_memory_reservation=_limit(_limit_int(directory / "memory.low")),
        block_io=_block_devices(*parse_io_stat(read_text(directory / "io.stat"))),
        hugetlb=tuple(
            HugetlbUsage(size, usage, None)  # cgroup2 records no hugetlb peak
            for size in host.hugepage_sizes
            if (usage := _limit_int(directory / f"hugetlb.{size}.current")) is not None
        ),
    )


def _pressure(host: CgroupHost, cgroup: str) -> dict[str, Pressure]:
    """PSI lives only in cgroup2; hybrid hosts have the container there too (runc puts it)."""
    directory = host.unified_dir(cgroup)
    if directory is None:
        return {}
    result: dict[str, Pressure] = {}
    for resource in PRESSURE_RESOURCES:
        if (pressure := parse_pressure(read_text(directory / f"{resource}.pressure"))) is not None:
            result[resource] = pressure
    return result


def _pids_dir(host: CgroupHost, cgroup: str) -> Path | None:
    for controller in ("pids", "memory", "cpu"):
        directory = host.controller_dir(controller, cgroup)
        if directory is not None and directory.is_dir():
            return directory
    return None


def read_accounting(host: CgroupHost, cgroup: str, init_pid: int = 0) -> CgroupAccounting:
    """The detailed reading of ``cgroup`` (blocking); NotFound when the cgroup is gone.

    ``init_pid`` is the container's first process, whose soft open-files limit is reported.
    """
    directory = _pids_dir(host, cgroup)
    if directory is None:
        raise NotFound(f"cgroup {cgroup} does not exist on this host")
    with gone_as_not_found(cgroup):
        return _read_accounting(host, cgroup, directory, init_pid)


def _read_accounting(host: CgroupHost, cgroup: str, directory: Path,
                     init_pid: int) -> CgroupAccounting:
    pids_dir = host.controller_dir("pids", cgroup)
    reading = CgroupAccounting(
        timestamp_ns=time.time_ns(),
        pressure=_pressure(host, cgroup),
        processes=process_totals(cgroup_pids(directory)),
        threads_max=_limit_int(pids_dir / "pids.max") if pids_dir is not None else None,
        open_files_soft_limit=open_files_soft_limit(init_pid) if init_pid > 0 else None,
    )
    return _v2(host, cgroup, reading) if host.is_unified else _v1(host, cgroup, reading)


def _read_many(
    host: CgroupHost, cgroups: dict[str, tuple[str, int]]
) -> dict[str, CgroupAccounting]:
    result: dict[str, CgroupAccounting] = {}
    for key, (cgroup, init_pid) in cgroups.items():
        try:
            result[key] = read_accounting(host, cgroup, init_pid)
        except NotFound:
            continue  # gone between listing and reading
    return result


async def read_accounting_many(
    host: CgroupHost, cgroups: dict[str, tuple[str, int]]
) -> dict[str, CgroupAccounting]:
    """Readings of many cgroups (key -> (cgroup, init pid)) in one worker thread."""
    return await asyncio.to_thread(_read_many, host, cgroups)
