"""Container and pod usage read from cgroup v1 and v2 files.

One reading is a handful of small pseudo-files (cpuacct.usage or cpu.stat, memory.stat and a
few counters). That is cheap, but ListContainerStats reads every container at once, so the
async entry points run the whole batch in one worker thread rather than on the event loop.
CPU usage is cumulative; the rate in nano-cores needs two readings, which `CpuRateTracker`
keeps per container.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from crisp.cgroups.files import gone_as_not_found, procs_files, read_int, read_text
from crisp.cgroups.host import CgroupHost
from crisp.errors import NotFound

UNLIMITED_THRESHOLD = 1 << 62


@dataclass(frozen=True)
class ContainerCgroupStats:
    """One reading of a cgroup. None means the host does not account that value.

    ``timestamp_ns`` is wall-clock nanoseconds (what CRI reports); ``monotonic_ns`` is what
    rates are computed from. ``memory_available_bytes`` is limit minus working set, None
    without a limit. ``oom_kills`` counts processes the kernel killed for this cgroup's limit.
    """

    timestamp_ns: int
    monotonic_ns: int
    cpu_usage_core_ns: int | None
    memory_usage_bytes: int | None
    memory_working_set_bytes: int | None
    memory_available_bytes: int | None
    memory_rss_bytes: int | None
    page_faults: int | None
    major_page_faults: int | None
    swap_usage_bytes: int | None
    swap_available_bytes: int | None
    process_count: int | None
    oom_kills: int | None


def parse_flat_keyed(text: str | None) -> dict[str, int]:
    """Parse "key value" lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    result: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            result[key] = int(value)
        except ValueError:
            continue
    return result


def _finite(limit: int | None) -> int | None:
    return limit if limit is not None and 0 <= limit < UNLIMITED_THRESHOLD else None


def _exists(host: CgroupHost, cgroup: str) -> bool:
    for controller in ("memory", "cpuacct", "cpu", "pids"):
        directory = host.controller_dir(controller, cgroup)
        if directory is not None and directory.is_dir():
            return True
    unified = host.unified_dir(cgroup)
    return host.is_unified and unified is not None and unified.is_dir()


def _cpu_usage(host: CgroupHost, cgroup: str) -> int | None:
    if not host.is_unified and (cpuacct := host.controller_dir("cpuacct", cgroup)) is not None:
        return read_int(cpuacct / "cpuacct.usage")
    # cpu.stat's usage_usec is there in every cgroup2 cgroup, controller enabled or not.
    unified = host.unified_dir(cgroup)
    if unified is None:
        return None
    usage_usec = parse_flat_keyed(read_text(unified / "cpu.stat")).get("usage_usec")
    return usage_usec * 1000 if usage_usec is not None else None


@dataclass(frozen=True)
class _Memory:
    usage: int | None = None
    working_set: int | None = None
    available: int | None = None
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    swap_usage: int | None = None
    swap_available: int | None = None
    oom_kills: int | None = None


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """Usage less the inactive page cache the kernel can drop first (cAdvisor's definition)."""
    if usage is None:
        return None
    return max(usage - (inactive_file or 0), 0)


def _headroom(limit: int | None, used: int | None) -> int | None:
    """What is left below a limit; None without a limit or a usage."""
    if limit is None or used is None:
        return None
    return max(limit - used, 0)


def _memory_v1(directory: Path) -> _Memory:
    stat = parse_flat_keyed(read_text(directory / "memory.stat"))
    usage = read_int(directory / "memory.usage_in_bytes")
    working_set = _working_set(usage, stat.get("total_inactive_file"))
    limit = _finite(read_int(directory / "memory.limit_in_bytes"))
    memsw_limit = _finite(read_int(directory / "memory.memsw.limit_in_bytes"))
    swap = stat.get("total_swap")
    swap_available = None
    if swap is not None and usage is not None:
        swap_available = _headroom(memsw_limit, usage + swap)
    oom = parse_flat_keyed(read_text(directory / "memory.oom_control"))
    return _Memory(
        usage=usage,
        working_set=working_set,
        available=_headroom(limit, working_set),
        rss=stat.get("total_rss"),
        page_faults=stat.get("total_pgfault"),
        major_page_faults=stat.get("total_pgmajfault"),
        swap_usage=swap,
        swap_available=swap_available,
        oom_kills=oom.get("oom_kill"),
    )


def _memory_v2(directory: Path) -> _Memory:
    stat = parse_flat_keyed(read_text(directory / "memory.stat"))
    usage = read_int(directory / "memory.current")
    working_set = _working_set(usage, stat.get("inactive_file"))
    limit = _finite(read_int(directory / "memory.max"))
    swap = read_int(directory / "memory.swap.current")
    swap_limit = _finite(read_int(directory / "memory.swap.max"))
    events = parse_flat_keyed(read_text(directory / "memory.events"))
    return _Memory(
        usage=usage,
        working_set=working_set,
        available=_headroom(limit, working_set),
        rss=stat.get("anon"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        swap_usage=swap,
        swap_available=_headroom(swap_limit, swap),
        oom_kills=events.get("oom_kill"),
    )


def _memory(host: CgroupHost, cgroup: str) -> _Memory:
    directory = host.controller_dir("memory", cgroup)
    if directory is None:
        return _Memory()
    if host.is_unified:
        return _memory_v2(directory)
    return _memory_v1(directory)


def _process_count(host: CgroupHost, cgroup: str) -> int | None:
    """Processes (not threads) in the cgroup and all below it, from cgroup.procs.

    pids.current is not used: it counts threads, and on some kernels keeps charges of
    killed tasks in the parent after their cgroup is gone.
    """
    for controller in ("pids", "memory", "cpu"):
        directory = host.controller_dir(controller, cgroup)
        if directory is not None and directory.is_dir():
            break
    else:
        return None
    return sum(len((read_text(procs) or "").split()) for procs in procs_files(directory))


def read_stats(host: CgroupHost, cgroup: str, processes: bool = True) -> ContainerCgroupStats:
    """One reading of the cgroup at absolute path ``cgroup`` (blocking; see module doc).

    Works for containers and pod cgroups alike (v1 and v2 counters are hierarchical).
    ``processes`` False leaves ``process_count`` unset: counting walks the cgroup tree, and
    CRI's container stats do not carry it (only pods' do, and the metrics).
    Raises NotFound when the cgroup does not exist.
    """
    if not _exists(host, cgroup):
        raise NotFound(f"cgroup {cgroup} does not exist on this host")
    with gone_as_not_found(cgroup):
        return _read_stats(host, cgroup, processes)


def _read_stats(host: CgroupHost, cgroup: str, processes: bool) -> ContainerCgroupStats:
    timestamp_ns = time.time_ns()
    monotonic_ns = time.monotonic_ns()
    cpu = _cpu_usage(host, cgroup)
    memory = _memory(host, cgroup)
    return ContainerCgroupStats(
        timestamp_ns=timestamp_ns,
        monotonic_ns=monotonic_ns,
        cpu_usage_core_ns=cpu,
        memory_usage_bytes=memory.usage,
        memory_working_set_bytes=memory.working_set,
        memory_available_bytes=memory.available,
        memory_rss_bytes=memory.rss,
        page_faults=memory.page_faults,
        major_page_faults=memory.major_page_faults,
        swap_usage_bytes=memory.swap_usage,
        swap_available_bytes=memory.swap_available,
        process_count=_process_count(host, cgroup) if processes else None,
        oom_kills=memory.oom_kills,
    )


def _read_many(host: CgroupHost, cgroups: list[str],
               processes: bool) -> dict[str, ContainerCgroupStats]:
    result: dict[str, ContainerCgroupStats] = {}
    for cgroup in cgroups:
        try:
            result[cgroup] = read_stats(host, cgroup, processes)
        except NotFound:
            continue  # gone between listing and reading: the caller reports it as absent
    return result


async def read_stats_async(host: CgroupHost, cgroup: str) -> ContainerCgroupStats:
    """`read_stats` off the event loop."""
    return await asyncio.to_thread(read_stats, host, cgroup)


async def read_stats_many(
    host: CgroupHost, cgroups: Iterable[str], processes: bool = True
) -> dict[str, ContainerCgroupStats]:
    """Readings of many cgroups in one worker thread; cgroups that are gone are left out."""
    return await asyncio.to_thread(_read_many, host, list(cgroups), processes)


@dataclass(frozen=True)
class _Sample:
    monotonic_ns: int
    usage_core_ns: int
    nano_cores: int | None


class CpuRateTracker:
    """CPU usage in nano-cores from the difference between two readings of one container.

    Keeps the last reading per key. Readings closer together than ``min_interval_ns`` (two
    clients asking at once) return the rate already known instead of a noisy one, and keep
    the older reading as the base. Call `forget` when a container is removed.
    """

    def __init__(self, min_interval_ns: int = 500_000_000) -> None:
        self._min_interval_ns = min_interval_ns
        self._samples: dict[str, _Sample] = {}

    def update(self, key: str, stats: ContainerCgroupStats) -> int | None:
        """The nano-cores used since the last reading of ``key``, None on the first."""
        if stats.cpu_usage_core_ns is None:
            return None
        return self.observe(key, stats.cpu_usage_core_ns, stats.monotonic_ns)

    def observe(self, key: str, usage_core_ns: int, monotonic_ns: int) -> int | None:
        """Like `update`, from a raw cumulative usage and a monotonic timestamp."""
        previous = self._samples.get(key)
        if previous is not None:
            elapsed = monotonic_ns - previous.monotonic_ns
            if 0 <= elapsed < self._min_interval_ns:
                return previous.nano_cores
            if elapsed > 0 and usage_core_ns >= previous.usage_core_ns:
                rate = (usage_core_ns - previous.usage_core_ns) * 1_000_000_000 // elapsed
                self._samples[key] = _Sample(monotonic_ns, usage_core_ns, rate)
                return rate
        # First reading, or the counter went back (a new cgroup under the same key).
        self._samples[key] = _Sample(monotonic_ns, usage_core_ns, None)
        return None

    def forget(self, key: str) -> None:
        """Drop the reading kept for ``key``."""
        self._samples.pop(key, None)

    def keys(self) -> set[str]:
        """The keys a reading is kept for (to prune containers that no longer exist)."""
        return set(self._samples)
