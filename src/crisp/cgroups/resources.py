"""CRI container resources to OCI ``linux.resources``, and read back from a live cgroup.

`LinuxResources` mirrors CRI's LinuxContainerResources (0 or "" means "not specified").
`oci_resources` validates it and produces the dict runc takes, both in config.json and in
``runc update --resources``. OCI keeps v1 semantics where the versions differ (cpu shares,
memory.swap as memory+swap) and runc converts for v2 itself, so the conversion here is mostly
about what a host can do: unified keys only on cgroup v2, swap limits only with swap
accounting, hugepage limits only for page sizes and controllers the host has.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crisp.cgroups.files import read_text
from crisp.cgroups.host import CgroupHost
from crisp.errors import FailedPrecondition, InvalidArgument, NotFound

MIN_CPU_PERIOD_US = 1_000
MAX_CPU_PERIOD_US = 1_000_000
MIN_CPU_QUOTA_US = 1_000
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262_144
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
UNLIMITED_THRESHOLD = 1 << 62
"""Kernel "no limit" values (page-rounded LONG_MAX) are above this."""

_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^([1-9]\d*)(KB|MB|GB)$")
_UNIFIED_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$")


@dataclass(frozen=True)
class HugepageLimit:
    """A hugetlb limit: ``page_size`` such as "2MB" or "1GB", ``limit`` in bytes."""

    page_size: str
    limit: int


@dataclass(frozen=True)
class LinuxResources:
    """A container's resource settings as CRI gives them; 0 and "" mean "not specified".

    ``cpu_quota`` and ``memory_limit_in_bytes`` may also be -1 (no limit), which is how an
    update lifts a limit. ``memory_swap_limit_in_bytes`` is memory plus swap, as in CRI and
    cgroup v1; -1 allows unlimited swap.
    """

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: dict[str, str] = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0


def validate_cpu_list(value: str, what: str) -> str:
    """A cpuset list ("0-3,6") unchanged, or InvalidArgument naming ``what`` it was for."""
    if value == "":
        return value
    if not _CPU_LIST.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is not a list of numbers and ranges such as \"0-3,6\""
        )
    for part in value.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise InvalidArgument(f"{what} {value!r} has a range that runs backwards: {part}")
    return value


def _cpu(resources: LinuxResources) -> dict[str, Any]:
    cpu: dict[str, Any] = {}
    if resources.cpu_shares:
        if not MIN_CPU_SHARES <= resources.cpu_shares <= MAX_CPU_SHARES:
            raise InvalidArgument(
                f"cpu_shares {resources.cpu_shares} is out of range: use 0 (unset) or "
                f"{MIN_CPU_SHARES}..{MAX_CPU_SHARES}"
            )
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        if resources.cpu_quota != -1 and resources.cpu_quota < MIN_CPU_QUOTA_US:
            raise InvalidArgument(
                f"cpu_quota {resources.cpu_quota}us is out of range: use 0 (unset), -1 (no "
                f"limit) or at least {MIN_CPU_QUOTA_US}us"
            )
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        if not MIN_CPU_PERIOD_US <= resources.cpu_period <= MAX_CPU_PERIOD_US:
            raise InvalidArgument(
                f"cpu_period {resources.cpu_period}us is out of range: use 0 (unset) or "
                f"{MIN_CPU_PERIOD_US}..{MAX_CPU_PERIOD_US}us"
            )
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = validate_cpu_list(resources.cpuset_cpus, "cpuset_cpus")
    if resources.cpuset_mems:
        cpu["mems"] = validate_cpu_list(resources.cpuset_mems, "cpuset_mems")
    return cpu


def _memory(resources: LinuxResources, host: CgroupHost) -> dict[str, Any]:
    limit = resources.memory_limit_in_bytes
    swap = resources.memory_swap_limit_in_bytes
    if limit < -1:
        raise InvalidArgument(
            f"memory_limit_in_bytes {limit} is negative: use 0 (unset), -1 (no limit) or bytes"
        )
    if swap < -1:
        raise InvalidArgument(
            f"memory_swap_limit_in_bytes {swap} is negative: use 0 (unset), -1 (unlimited "
            "swap) or bytes of memory plus swap"
        )
    memory: dict[str, Any] = {}
    if limit:
        memory["limit"] = limit
    if not host.swap_accounting:
        # Like containerd: without swap accounting the kernel cannot limit swap per cgroup,
        # and refusing would fail every pod the kubelet starts with "no swap" (swap == limit).
        return memory
    if swap > 0:
        if limit <= 0:
            raise InvalidArgument(
                f"memory_swap_limit_in_bytes {swap} needs a memory limit: it counts memory "
                "plus swap, so set memory_limit_in_bytes too"
            )
        if swap < limit:
            raise InvalidArgument(
                f"memory_swap_limit_in_bytes {swap} is below memory_limit_in_bytes {limit}: "
                "it counts memory plus swap, so it must be at least the memory limit"
            )
        memory["swap"] = swap
    elif swap == -1 or limit == -1:
        # Lifting the memory limit lifts memory+swap too: v1 refuses a memory limit above
        # the memory+swap one, and runc update keeps what it is not given.
        memory["swap"] = -1
    elif limit > 0:
        # No swap asked for: memory+swap equal to memory keeps the container off swap.
        memory["swap"] = limit
    return memory


def _hugepages(resources: LinuxResources, host: CgroupHost) -> list[dict[str, Any]]:
    limits: list[dict[str, Any]] = []
    seen: set[str] = set()
    for hugepage in resources.hugepage_limits:
        if not _PAGE_SIZE.match(hugepage.page_size):
            raise InvalidArgument(
                f"hugepage page_size {hugepage.page_size!r} is malformed: use a size such as "
                '"2MB" or "1GB"'
            )
        if hugepage.limit < 0:
            raise InvalidArgument(
                f"hugepage limit {hugepage.limit} for {hugepage.page_size} is negative"
            )
        if hugepage.page_size in seen:
            raise InvalidArgument(f"hugepage page_size {hugepage.page_size} is given twice")
        seen.add(hugepage.page_size)
        usable = host.has_controller("hugetlb") and hugepage.page_size in host.hugepage_sizes
        if not usable:
            # The kubelet sends a zero limit for every size the node has; a zero limit on a
            # host that cannot hand out such pages at all asks for nothing to be enforced.
            if hugepage.limit == 0:
                continue
            if hugepage.page_size not in host.hugepage_sizes:
                supported = ", ".join(host.hugepage_sizes) or "none"
                raise InvalidArgument(
                    f"hugepage size {hugepage.page_size} is not supported by this host's "
                    f"kernel (supported: {supported})"
                )
            raise FailedPrecondition(
                f"cannot limit {hugepage.page_size} hugepages: the hugetlb cgroup controller "
                "is not available to runc on this host (mount it, or on cgroup v2 enable it)"
            )
        limits.append({"pageSize": hugepage.page_size, "limit": hugepage.limit})
    return limits


def _unified(resources: LinuxResources, host: CgroupHost) -> dict[str, str]:
    if not resources.unified:
        return {}
    if not host.is_unified:
        raise InvalidArgument(
            "unified (cgroup v2) resource keys "
            f"{sorted(resources.unified)} cannot be applied: this host runs cgroup "
            f"{host.mode.value} and runc applies unified keys only on a pure cgroup v2 host"
        )
    for key, value in resources.unified.items():
        if not _UNIFIED_KEY.match(key) or ".." in key:
            raise InvalidArgument(
                f"unified key {key!r} is not a cgroup v2 file name such as \"memory.high\""
            )
        if "\n" in value:
            raise InvalidArgument(f"unified value for {key!r} may not contain a newline")
    return dict(resources.unified)


def oci_resources(resources: LinuxResources, host: CgroupHost) -> dict[str, Any]:
    """The OCI runtime-spec ``linux.resources`` for these settings on this host.

    Only cpu, memory, hugepageLimits and unified are produced; the spec builder adds
    devices. oom_score_adj is a process setting (``process.oomScoreAdj``): see
    `clamp_oom_score_adj`. The same dict serves ``runc update --resources -``.
    """
    result: dict[str, Any] = {}
    if cpu := _cpu(resources):
        result["cpu"] = cpu
    if memory := _memory(resources, host):
        result["memory"] = memory
    if hugepages := _hugepages(resources, host):
        result["hugepageLimits"] = hugepages
    if unified := _unified(resources, host):
        result["unified"] = unified
    return result


def clamp_oom_score_adj(requested: int, floor: int) -> int:
    """The oom_score_adj a container can really get: at least ``floor``.

    Without CAP_SYS_RESOURCE no process can go below its parent's value, and runc would fail
    the whole start; so negatives below crisp's own value (`current_oom_score_adj`) are raised
    to it, as the kubelet's guaranteed pods still get the lowest score crisp can give.
    """
    low, high = OOM_SCORE_ADJ_RANGE
    if not low <= requested <= high:
        raise InvalidArgument(f"oom_score_adj {requested} is out of range {low}..{high}")
    return max(requested, floor)


def current_oom_score_adj(pid: int | str = "self") -> int:
    """The oom_score_adj of a process (crisp's own by default): one tiny /proc read."""
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


# Reading back -------------------------------------------------------------------------------


def _limit(text: str | None) -> int:
    """A limit file's value with "no limit" (max, -1, LONG_MAX) as CRI's 0."""
    if text is None or text == "max":
        return 0
    value = int(text)
    return 0 if value < 0 or value >= UNLIMITED_THRESHOLD else value


def weight_to_shares(weight: int) -> int:
    """cgroup v2 cpu.weight back to v1 shares, inverting runc's shares->weight mapping.

    runc maps shares s to weight 1 + (s - 2) * 9999 // 262142, which loses precision, so the
    shares read back are the smallest that map to this weight, not always the ones set.
    """
    if weight <= 1:
        return MIN_CPU_SHARES
    return MIN_CPU_SHARES + -(-(weight - 1) * 262142 // 9999)


def read_resources(host: CgroupHost, cgroup: str, pid: int | None = None) -> LinuxResources:
    """The resources in force for the cgroup at absolute path ``cgroup`` (blocking).

    Reads a dozen tiny pseudo-files; callers on the event loop use `read_resources_async`.
    ``pid`` (the container's init) supplies oom_score_adj; without it that field is 0.
    Raises NotFound when the cgroup does not exist (the container is gone).
    """
    memory_dir = host.controller_dir("memory", cgroup)
    cpu_dir = host.controller_dir("cpu", cgroup)
    if not any(d is not None and d.is_dir() for d in (memory_dir, cpu_dir)):
        raise NotFound(f"cgroup {cgroup} does not exist on this host")
    oom = 0
    if pid is not None:
        try:
            oom = current_oom_score_adj(pid)
        except (FileNotFoundError, ProcessLookupError):
            oom = 0  # the process exited; its cgroup limits are still worth reporting
    cpuset_dir = host.controller_dir("cpuset", cgroup)
    hugetlb_dir = host.controller_dir("hugetlb", cgroup)
    cpus = read_text(cpuset_dir / "cpuset.cpus" if cpuset_dir else None) or ""
    mems = read_text(cpuset_dir / "cpuset.mems" if cpuset_dir else None) or ""
    if host.is_unified:
        quota, period = 0, 0
        if (cpu_max := read_text(cpu_dir / "cpu.max" if cpu_dir else None)) is not None:
            quota_text, _, period_text = cpu_max.partition(" ")
            quota = _limit(quota_text)
            period = int(period_text) if period_text else 0
        weight = read_text(cpu_dir / "cpu.weight" if cpu_dir else None)
        shares = weight_to_shares(int(weight)) if weight is not None else 0
        limit = _limit(read_text(memory_dir / "memory.max" if memory_dir else None))
        swap_only = read_text(memory_dir / "memory.swap.max" if memory_dir else None)
        swap = limit + _limit(swap_only) if limit and swap_only not in (None, "max") else 0
        suffix = "max"
    else:
        quota = _limit(read_text(cpu_dir / "cpu.cfs_quota_us" if cpu_dir else None))
        period = int(read_text(cpu_dir / "cpu.cfs_period_us" if cpu_dir else None) or 0)
        shares = int(read_text(cpu_dir / "cpu.shares" if cpu_dir else None) or 0)
        limit = _limit(read_text(memory_dir / "memory.limit_in_bytes" if memory_dir else None))
        swap = _limit(read_text(memory_dir / "memory.memsw.limit_in_bytes" if memory_dir else None))
        suffix = "limit_in_bytes"
    hugepages: list[HugepageLimit] = []
    if hugetlb_dir is not None:
        for size in host.hugepage_sizes:
            value = _limit(read_text(hugetlb_dir / f"hugetlb.{size}.{suffix}"))
            if value:
                hugepages.append(HugepageLimit(size, value))
    return LinuxResources(
        cpu_period=period,
        cpu_quota=quota,
        cpu_shares=shares,
        memory_limit_in_bytes=limit,
        oom_score_adj=oom,
        cpuset_cpus=cpus,
        cpuset_mems=mems,
        hugepage_limits=tuple(hugepages),
        memory_swap_limit_in_bytes=swap,
    )


async def read_resources_async(
    host: CgroupHost, cgroup: str, pid: int | None = None
) -> LinuxResources:
    """`read_resources` off the event loop."""
    return await asyncio.to_thread(read_resources, host, cgroup, pid)


# Pod-level limits ----------------------------------------------------------------------------


def pod_resources(overhead: LinuxResources, resources: LinuxResources) -> LinuxResources:
    """The pod cgroup's limits: the containers' sum plus the pod overhead.

    Shares, quota and memory add up (a -1 in either lifts the limit); the period, cpusets and
    unified keys come from ``resources``, falling back to the overhead's.
    """
    def add(a: int, b: int) -> int:
        return -1 if -1 in (a, b) else a + b

    return LinuxResources(
        cpu_period=resources.cpu_period or overhead.cpu_period,
        cpu_quota=add(resources.cpu_quota, overhead.cpu_quota),
        cpu_shares=add(resources.cpu_shares, overhead.cpu_shares),
        memory_limit_in_bytes=add(resources.memory_limit_in_bytes,
                                  overhead.memory_limit_in_bytes),
        cpuset_cpus=resources.cpuset_cpus or overhead.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems or overhead.cpuset_mems,
        hugepage_limits=resources.hugepage_limits or overhead.hugepage_limits,
        unified={**overhead.unified, **resources.unified},
    )


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu shares as a v2 cpu.weight, the way runc converts them."""
    return 1 + (shares - 2) * 9999 // 262142


def _pod_writes(spec: dict[str, Any], host: CgroupHost) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write for an OCI resources dict, in a safe order."""
    cpu = spec.get("cpu", {})
    memory = spec.get("memory", {})
    writes: list[tuple[str, str, str]] = []
    if host.is_unified:
        if "shares" in cpu:
            writes.append(("cpu", "cpu.weight", str(shares_to_weight(cpu["shares"]))))
        if "quota" in cpu or "period" in cpu:
            quota = cpu.get("quota", -1)
            period = cpu.get("period", 100_000)
            writes.append(("cpu", "cpu.max", f"{'max' if quota == -1 else quota} {period}"))
        if "limit" in memory:
            limit = memory["limit"]
            writes.append(("memory", "memory.max", "max" if limit == -1 else str(limit)))
        for key, value in spec.get("unified", {}).items():
            writes.append((key.partition(".")[0], key, value))
    else:
        if "shares" in cpu:
            writes.append(("cpu", "cpu.shares", str(cpu["shares"])))
        if "period" in cpu:
            writes.append(("cpu", "cpu.cfs_period_us", str(cpu["period"])))
        if "quota" in cpu:
            writes.append(("cpu", "cpu.cfs_quota_us", str(cpu["quota"])))
        if "limit" in memory:
            writes.append(("memory", "memory.limit_in_bytes", str(memory["limit"])))
    if "cpus" in cpu:
        writes.append(("cpuset", "cpuset.cpus", cpu["cpus"]))
    if "mems" in cpu:
        writes.append(("cpuset", "cpuset.mems", cpu["mems"]))
    for hugepage in spec.get("hugepageLimits", []):
        suffix = "max" if host.is_unified else "limit_in_bytes"
        writes.append(("hugetlb", f"hugetlb.{hugepage['pageSize']}.{suffix}",
                       str(hugepage["limit"])))
    return writes


def _make_cgroup(directory: Path, cpuset_v1: bool) -> None:
    """Create a pod cgroup not made yet (a pod with no container so far has none).

    A new v1 cpuset cgroup starts with no cpus or mems, so each new level gets its parent's,
    as runc does for the levels it creates.
    """
    if directory.is_dir():
        return
    _make_cgroup(directory.parent, cpuset_v1)
    directory.mkdir(exist_ok=True)
    if cpuset_v1:
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (directory / name).read_text().strip():
                (directory / name).write_text((directory.parent / name).read_text())


def write_pod_resources(host: CgroupHost, cgroup: str, resources: LinuxResources) -> None:
    """Set a pod cgroup's limits by writing its files (blocking; the kubelet's resize path).

    Validates as for containers (`oci_resources`); swap is left alone, since memory+swap is
    a per-container choice. The pod cgroup is created when no container has made it yet.
    FailedPrecondition when the kernel refuses a value (such as a memory limit below
    current usage).
    """
    spec = oci_resources(replace(resources, memory_swap_limit_in_bytes=0), host)
    writes = _pod_writes(spec, host)
    if not writes:
        return
    for controller, name, value in writes:
        directory = host.controller_dir(controller, cgroup)
        if directory is None:
            raise FailedPrecondition(
                f"cannot set {name} on pod cgroup {cgroup}: this host has no {controller} "
                "cgroup controller"
            )
        try:
            _make_cgroup(directory, controller == "cpuset" and not host.is_unified)
            (directory / name).write_text(value)
        except OSError as error:
            raise FailedPrecondition(
                f"cannot set {name} = {value} on pod cgroup {cgroup}: {error.strerror}"
            ) from error
