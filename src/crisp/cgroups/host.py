"""Which cgroup hierarchies the host mounts, and where each controller lives.

A host is one of three kinds: cgroup v1 only, hybrid (v1 controllers plus a cgroup2 hierarchy
beside them, usually at /sys/fs/cgroup/unified) or unified (one cgroup2 hierarchy). Resource
conversion and stats reading both depend on which hierarchy a controller is in, so this is
detected once, from /proc/self/mountinfo, and passed down as a `CgroupHost`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from crisp.errors import FailedPrecondition

MOUNTINFO = "/proc/self/mountinfo"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"


class CgroupMode(enum.Enum):
    """How the host mounts cgroups."""

    LEGACY = "v1"
    HYBRID = "hybrid"
    UNIFIED = "v2"


@dataclass(frozen=True)
class CgroupHost:
    """The cgroup layout of one host: mount points by controller, and what the kernel offers.

    ``v1_mounts`` maps each v1 controller (and named hierarchies such as ``name=systemd``) to
    its mount point; ``unified_mount`` is the cgroup2 mount point, if any, and
    ``unified_controllers`` the controllers its root offers. ``hugepage_sizes`` are the page
    sizes the kernel supports, in the "2MB" / "1GB" form OCI and CRI use.
    ``swap_accounting`` says whether the kernel accounts swap per cgroup, so that a swap
    limit can be set at all.
    """

    mode: CgroupMode
    v1_mounts: dict[str, str] = field(default_factory=dict)
    unified_mount: str | None = None
    unified_controllers: frozenset[str] = frozenset()
    hugepage_sizes: tuple[str, ...] = ()
    swap_accounting: bool = False

    @property
    def is_unified(self) -> bool:
        """True where runc drives cgroup v2 (so resources take v2 semantics)."""
        return self.mode is CgroupMode.UNIFIED

    def controller_dir(self, controller: str, cgroup: str) -> Path | None:
        """The directory of ``cgroup`` (absolute cgroup path) for ``controller``, or None.

        v1 mounts win on hybrid hosts: runc puts limits there, and the cgroup2 hierarchy
        beside them usually has no controllers enabled.
        """
        relative = relative_cgroup(cgroup)
        if controller in self.v1_mounts:
            return Path(self.v1_mounts[controller], relative)
        if self.unified_mount is not None and (
            self.is_unified or controller in self.unified_controllers
        ):
            return Path(self.unified_mount, relative)
        return None

    def unified_dir(self, cgroup: str) -> Path | None:
        """The directory of ``cgroup`` in the cgroup2 hierarchy, if the host has one."""
        if self.unified_mount is None:
            return None
        return Path(self.unified_mount, relative_cgroup(cgroup))

    def has_controller(self, controller: str) -> bool:
        """True if runc can set limits of ``controller`` on this host."""
        if self.is_unified:
            return controller in self.unified_controllers
        return controller in self.v1_mounts


def relative_cgroup(cgroup: str) -> str:
    """``cgroup`` (an absolute cgroup path) relative to a hierarchy's mount point."""
    if not cgroup.startswith("/"):
        raise ValueError(f"cgroup path {cgroup!r} must be absolute")
    return cgroup.lstrip("/")


def detect_swap_accounting(host: CgroupHost, cmdline_path: str = "/proc/cmdline") -> bool:
    """True if the kernel accounts swap per cgroup (blocking; two small reads)."""
    if host.is_unified:
        # The root has no memory.swap.max to look at; with the memory controller the kernel
        # accounts swap unless switched off at boot.
        if "memory" not in host.unified_controllers:
            return False
        try:
            cmdline = Path(cmdline_path).read_text()
        except OSError:
            return True
        return "swapaccount=0" not in cmdline.split()
    memory = host.v1_mounts.get("memory")
    return memory is not None and Path(memory, "memory.memsw.limit_in_bytes").exists()


@dataclass(frozen=True)
class Mount:
    """One cgroup line of mountinfo: where it is mounted, its fs type and super options."""

    mount_point: str
    fs_type: str
    super_options: tuple[str, ...]


def parse_cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in a mountinfo text (see proc(5))."""
    mounts: list[Mount] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        if len(fields) < separator + 4 or separator < 5:
            continue
        fs_type = fields[separator + 1]
        if fs_type not in ("cgroup", "cgroup2"):
            continue
        mount_point = _unescape(fields[4])
        mounts.append(Mount(mount_point, fs_type, tuple(fields[separator + 3].split(","))))
    return mounts


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space and so on)."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        digits = path[i + 1 : i + 4]
        if path[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


_V1_NON_CONTROLLER_OPTIONS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec",
                              "clone_children", "noprefix", "xattr", "cpuset_v2_mode"}


def host_from_mounts(
    mounts: list[Mount], unified_controllers: frozenset[str], hugepage_sizes: tuple[str, ...]
) -> CgroupHost:
    """Classify a host from its cgroup mounts (pure, so every layout can be unit-tested)."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for mount in mounts:
        if mount.fs_type == "cgroup2":
            # The first cgroup2 mount wins; bind mounts of it elsewhere change nothing.
            unified = unified or mount.mount_point
            continue
        for option in mount.super_options:
            if option in _V1_NON_CONTROLLER_OPTIONS or option.startswith("release_agent="):
                continue
            v1.setdefault(option, mount.mount_point)
    controllers = {name for name in v1 if not name.startswith("name=")}
    if not controllers and unified is not None:
        mode = CgroupMode.UNIFIED
    elif controllers and unified is not None:
        mode = CgroupMode.HYBRID
    elif controllers:
        mode = CgroupMode.LEGACY
    else:
        raise FailedPrecondition(
            "no cgroup hierarchy is mounted: mount cgroup2 on /sys/fs/cgroup "
            "(or the v1 controllers under it) before starting crisp"
        )
    return CgroupHost(
        mode=mode,
        v1_mounts=v1,
        unified_mount=unified,
        unified_controllers=unified_controllers if unified is not None else frozenset(),
        hugepage_sizes=hugepage_sizes,
    )


def hugepage_size_name(kib: int) -> str:
    """A kernel hugepage size in kB as OCI names it: 2048 -> "2MB", 1048576 -> "1GB"."""
    for unit, scale in (("GB", 1 << 20), ("MB", 1 << 10)):
        if kib >= scale and kib % scale == 0:
            return f"{kib // scale}{unit}"
    return f"{kib}KB"


def read_hugepage_sizes(directory: str = HUGEPAGES_DIR) -> tuple[str, ...]:
    """The hugepage sizes the kernel supports, smallest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return ()
    sizes = sorted(
        int(name.removeprefix("hugepages-").removesuffix("kB"))
        for name in names
        if name.startswith("hugepages-") and name.endswith("kB")
    )
    return tuple(hugepage_size_name(kib) for kib in sizes)


def detect_host(mountinfo_path: str = MOUNTINFO) -> CgroupHost:
    """Read this host's cgroup layout; blocking, meant for start-up (a few small files)."""
    mounts = parse_cgroup_mounts(Path(mountinfo_path).read_text())
    unified_controllers: frozenset[str] = frozenset()
    for mount in mounts:
        if mount.fs_type == "cgroup2":
            try:
                text = Path(mount.mount_point, "cgroup.controllers").read_text()
            except OSError:
                text = ""
            unified_controllers = frozenset(text.split())
            break
    host = host_from_mounts(mounts, unified_controllers, read_hugepage_sizes())
    return dataclasses.replace(host, swap_accounting=detect_swap_accounting(host))
