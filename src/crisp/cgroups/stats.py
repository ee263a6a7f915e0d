"""Container and pod usage read from cgroup v1 and v2 files.

One reading is a handful of small pseudo-files (cpuacct.usage or cpu.stat, memory.stat and a
few counters). That is cheap, but ListContainerStats reads every container at once, so the
async entry points run the whole batch in one worker thread rather than on the event loop.
CPU usage is cumulative; the rate in nano-cores needs two readings, which `CpuRateTracker`
keeps per container.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from crisp.cgroups.files import gone_as_not_found, procs_files, read_bytes, read_text, vanished
from crisp.cgroups.host import CgroupHost, relative_cgroup
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


def _number(data: bytes | None) -> int | None:
    """A one-value file: None when absent, empty (a cgroup being torn down) or "max"."""
    if not data:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _pairs(data: bytes | None) -> dict[bytes, bytes]:
    """A flat-keyed file ("key value" lines) as raw bytes, converted only where asked."""
    if not data:
        return {}
    fields = data.split()
    if len(fields) % 2:  # not the kernel's two fields a line: take the lines that are
        return {key: value for key, _, value in (line.partition(b" ")
                                                 for line in data.splitlines()) if value}
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _field(pairs: dict[bytes, bytes], key: bytes) -> int | None:
    value = pairs.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Layout:
    """Where one host keeps what a reading needs, as strings: a batch joins paths with
    f-strings rather than building Path objects for each of thousands of files."""

    cpuacct: str | None  # v1 cpuacct mount: cpuacct.usage
    unified: str | None  # cgroup2 mount: cpu.stat's usage_usec (any cgroup2 cgroup has it)
    memory: str | None
    memory_v2: bool
    procs: tuple[str, ...]  # where cgroup.procs is looked for, in order

    @classmethod
    def of(cls, host: CgroupHost) -> _Layout:
        def root(controller: str) -> str | None:
            directory = host.controller_dir(controller, "/")
            return None if directory is None else str(directory).rstrip("/")
        return cls(
            cpuacct=None if host.is_unified else root("cpuacct"),
            unified=None if host.unified_mount is None else host.unified_mount.rstrip("/"),
            memory=root("memory"),
            memory_v2=host.is_unified,
            procs=tuple(r for c in ("pids", "memory", "cpu") if (r := root(c)) is not None),
        )


def _exists(host: CgroupHost, cgroup: str) -> bool:
    for controller in ("memory", "cpuacct", "cpu", "pids"):
        directory = host.controller_dir(controller, cgroup)
        if directory is not None and directory.is_dir():
            return True
    unified = host.unified_dir(cgroup)
    return host.is_unified and unified is not None and unified.is_dir()


def _cpu_usage(layout: _Layout, relative: str) -> int | None:
    if layout.cpuacct is not None:
        return _number(read_bytes(f"{layout.cpuacct}/{relative}/cpuacct.usage"))
    if layout.unified is None:
        return None
    usage_usec = _field(_pairs(read_bytes(f"{layout.unified}/{relative}/cpu.stat")),
                        b"usage_usec")
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
    found: bool = False  # whether any of the files was there


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


def _memory_v1(directory: str, oom_kills: bool) -> _Memory:
    raw_stat = read_bytes(f"{directory}/memory.stat")
    raw_usage = read_bytes(f"{directory}/memory.usage_in_bytes")
    stat = _pairs(raw_stat)
    usage = _number(raw_usage)
    working_set = _working_set(usage, _field(stat, b"total_inactive_file"))
    limit = _finite(_number(read_bytes(f"{directory}/memory.limit_in_bytes")))
    memsw_limit = _finite(_number(read_bytes(f"{directory}/memory.memsw.limit_in_bytes")))
    swap = _field(stat, b"total_swap")
    swap_available = None
    if swap is not None and usage is not None:
        swap_available = _headroom(memsw_limit, usage + swap)
    oom = None
    if oom_kills:
        oom = _field(_pairs(read_bytes(f"{directory}/memory.oom_control")), b"oom_kill")
    return _Memory(
        usage=usage,
        working_set=working_set,
        available=_headroom(limit, working_set),
        rss=_field(stat, b"total_rss"),
        page_faults=_field(stat, b"total_pgfault"),
        major_page_faults=_field(stat, b"total_pgmajfault"),
        swap_usage=swap,
        swap_available=swap_available,
        oom_kills=oom,
        found=raw_stat is not None or raw_usage is not None,
    )


def _memory_v2(directory: str, oom_kills: bool) -> _Memory:
    raw_stat = read_bytes(f"{directory}/memory.stat")
    raw_usage = read_bytes(f"{directory}/memory.current")
    stat = _pairs(raw_stat)
    usage = _number(raw_usage)
    working_set = _working_set(usage, _field(stat, b"inactive_file"))
    limit = _finite(_number(read_bytes(f"{directory}/memory.max")))
    swap = _number(read_bytes(f"{directory}/memory.swap.current"))
    swap_limit = _finite(_number(read_bytes(f"{directory}/memory.swap.max")))
    oom = None
    if oom_kills:
        oom = _field(_pairs(read_bytes(f"{directory}/memory.events")), b"oom_kill")
    return _Memory(
        usage=usage,
        working_set=working_set,
        available=_headroom(limit, working_set),
        rss=_field(stat, b"anon"),
        page_faults=_field(stat, b"pgfault"),
        major_page_faults=_field(stat, b"pgmajfault"),
        swap_usage=swap,
        swap_available=_headroom(swap_limit, swap),
        oom_kills=oom,
        found=raw_stat is not None or raw_usage is not None,
    )


_NO_MEMORY = _Memory()


def _memory(layout: _Layout, relative: str, oom_kills: bool) -> _Memory:
    if layout.memory is None:
        return _NO_MEMORY
    directory = f"{layout.memory}/{relative}"
    return _memory_v2(directory, oom_kills) if layout.memory_v2 else _memory_v1(directory,
                                                                                 oom_kills)


def _subtree_processes(directory: str, procs: bytes) -> int:
    """Processes listed in ``procs`` (``directory``'s cgroup.procs) and in every cgroup below.

    A cgroup directory's link count is 2 plus its subdirectories (kernfs, like ext4 and
    tmpfs), so a leaf, which is what a container's cgroup nearly always is, costs one stat
    rather than a listing of its thirty-odd files. Subtrees removed meanwhile count nothing.
    """
    count = len(procs.split())
    try:
        if os.stat(directory).st_nlink == 2:
            return count
        entries = list(os.scandir(directory))
    except OSError as error:
        if vanished(error):
            return count
        raise
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            below = read_bytes(f"{entry.path}/cgroup.procs")
            if below is not None:
                count += _subtree_processes(entry.path, below)
    return count


def _process_count(layout: _Layout, host: CgroupHost, cgroup: str, relative: str) -> int | None:
    """Processes (not threads) in the cgroup and all below it, from cgroup.procs.

    pids.current is not used: it counts threads, and on some kernels keeps charges of
    killed tasks in the parent after their cgroup is gone.
    """
    for root in layout.procs:
        directory = f"{root}/{relative}"
        procs = read_bytes(f"{directory}/cgroup.procs")
        if procs is not None:
            return _subtree_processes(directory, procs)
    # No cgroup.procs where one is looked for: count what the first directory there holds.
    for controller in ("pids", "memory", "cpu"):
        path = host.controller_dir(controller, cgroup)
        if path is not None and path.is_dir():
            return sum(len((read_text(procs) or "").split()) for procs in procs_files(path))
    return None


def read_stats(host: CgroupHost, cgroup: str, processes: bool = True,
               oom_kills: bool = True) -> ContainerCgroupStats:
    """One reading of the cgroup at absolute path ``cgroup`` (blocking; see module doc).

    Works for containers and pod cgroups alike (v1 and v2 counters are hierarchical).
    ``processes`` False leaves ``process_count`` unset: counting walks the cgroup tree, and
    CRI's container stats do not carry it (only pods' do, and the metrics). ``oom_kills``
    False leaves ``oom_kills`` unset, one file fewer: only the metrics report it.
    Raises NotFound when the cgroup does not exist.
    """
    return _read_stats(_Layout.of(host), host, cgroup, processes, oom_kills)


def _read_stats(layout: _Layout, host: CgroupHost, cgroup: str, processes: bool,
                oom_kills: bool) -> ContainerCgroupStats:
    # No stat first: a cgroup that is gone shows as files that are not there, and only a
    # reading that found nothing at all asks whether the cgroup exists.
    relative = relative_cgroup(cgroup)
    with gone_as_not_found(cgroup):
        timestamp_ns = time.time_ns()
        monotonic_ns = time.monotonic_ns()
        cpu = _cpu_usage(layout, relative)
        memory = _memory(layout, relative, oom_kills)
        count = _process_count(layout, host, cgroup, relative) if processes else None
    if cpu is None and not memory.found and count is None and not _exists(host, cgroup):
        raise NotFound(f"cgroup {cgroup} does not exist on this host")
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
        process_count=count,
        oom_kills=memory.oom_kills,
    )


def read_stats_batch(host: CgroupHost, cgroups: list[str], processes: bool = True,
                     oom_kills: bool = True) -> dict[str, ContainerCgroupStats]:
    """Readings of many cgroups (blocking); cgroups that are gone are left out."""
    layout = _Layout.of(host)
    result: dict[str, ContainerCgroupStats] = {}
    for cgroup in cgroups:
        try:
            result[cgroup] = _read_stats(layout, host, cgroup, processes, oom_kills)
        except NotFound:
            continue  # gone between listing and reading: the caller reports it as absent
    return result


async def read_stats_async(host: CgroupHost, cgroup: str) -> ContainerCgroupStats:
    """`read_stats` off the event loop."""
    return await asyncio.to_thread(read_stats, host, cgroup)


async def read_stats_many(
    host: CgroupHost, cgroups: Iterable[str], processes: bool = True, oom_kills: bool = True
) -> dict[str, ContainerCgroupStats]:
    """Readings of many cgroups in one worker thread; cgroups that are gone are left out."""
    return await asyncio.to_thread(read_stats_batch, host, list(cgroups), processes, oom_kills)


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
