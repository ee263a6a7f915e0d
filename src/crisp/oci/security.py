"""The security parts of a container's OCI spec, decided from its CRI security context.

Pure rules (capability sets, masked and read-only paths, sysctl namespacing, privileged
containers' devices) plus the few host facts they depend on (is AppArmor or SELinux enabled, can
the kernel and runtime give a pod its own user namespace), read once per call from /sys and
/proc so tests can hand in their own. The semantics follow containerd's CRI plugin: a request
crisp cannot honour on this host fails with a message naming what is missing, never silently.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.handlers import runtime_features
from crisp.oci.model import (
    NamespaceMode,
    ProfileKind,
    SecurityProfile,
    SecurityRequest,
    SELinuxOptions,
    UserNamespace,
)
from crisp.oci.seccomp import SeccompKind, parse_legacy_profile_path, seccomp_for_container

# The capabilities a container gets unless its security context adds or drops some
# (the set Docker, containerd and CRI-O agree on).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
ALL_CAPABILITIES = [  # in bit order: CAP_CHOWN is bit 0
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
DEFAULT_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]

# Capabilities ---------------------------------------------------------------------------------


def capability_name(name: str) -> str:
    """"net_raw", "NET_RAW" and "CAP_NET_RAW" all name CAP_NET_RAW; "ALL" stays "ALL"."""
    upper = name.strip().upper()
    if upper in ("ALL", "CAP_ALL"):
        return "ALL"
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(
            f"capability {name!r} is unknown; use a Linux capability name such as NET_ADMIN "
            "or ALL"
        )
    return full


def capabilities_of_mask(mask: int) -> list[str]:
    """The capability names whose bits are set in ``mask`` (as /proc/<pid>/status shows it)."""
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if mask & (1 << bit)]


@cache
def own_capabilities() -> frozenset[str]:
    """crisp's own bounding set: no container can hold more (read once; it never grows)."""
    for line in _read(Path("/proc/self/status")).splitlines():
        if line.startswith("CapBnd:"):
            return frozenset(capabilities_of_mask(int(line.split()[1], 16)))
    return frozenset(ALL_CAPABILITIES)


def container_capabilities(privileged: bool, add: Iterable[str], drop: Iterable[str],
                           available: frozenset[str] | None = None) -> list[str]:
    """The capability set of a container, in containerd's order of application.

    ALL in add grants every capability and ALL in drop removes every one, first; then the
    individual names are added and dropped, so "drop ALL, add NET_BIND_SERVICE" leaves exactly
    that one and "add ALL, drop CHOWN" leaves all but CHOWN. "Every" is every one crisp itself
    holds (``available``, its bounding set), as containerd does; naming one it lacks is an
    error rather than a container runc cannot start.
    """
    if available is None:
        available = own_capabilities()
    everything = [c for c in ALL_CAPABILITIES if c in available]
    if privileged:
        return everything
    added = [capability_name(c) for c in add]
    dropped = [capability_name(c) for c in drop]
    caps = [c for c in DEFAULT_CAPABILITIES if c in available]
    if "ALL" in added:
        caps = list(everything)
    if "ALL" in dropped:
        caps = []
    for cap in added:
        if cap == "ALL" or cap in caps:
            continue
        if cap not in available:
            raise FailedPrecondition(
                f"capability {cap} cannot be added: crisp itself does not hold it (it is not in "
                "the daemon's bounding set on this node), so no container can"
            )
        caps.append(cap)
    return [c for c in caps if c not in dropped]


def masked_and_readonly_paths(security: SecurityRequest) -> tuple[list[str], list[str]]:
    """CRI's own lists when it gives them (the kubelet sends both or neither), the defaults
    otherwise; a privileged container has neither."""
    if security.privileged:
        return [], []
    masked = security.masked_paths
    readonly = security.readonly_paths
    return (list(DEFAULT_MASKED_PATHS if masked is None else masked),
            list(DEFAULT_READONLY_PATHS if readonly is None else readonly))


# Sysctls --------------------------------------------------------------------------------------

_IPC_SYSCTLS = frozenset({"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                          "kernel.shm_rmid_forced", "kernel.msgmax", "kernel.msgmni",
                          "kernel.msgmnb"})
_IPC_PREFIXES = ("fs.mqueue.",)
_NET_PREFIX = "net."


def normalize_sysctl(name: str) -> str:
    """The dotted form of a sysctl; Kubernetes also accepts "net/ipv4/ip_forward" style names,
    where a dot inside a path part stays a dot (net/ipv4/conf/eth0.100/forwarding)."""
    if "/" not in name:
        return name
    first_slash = name.find("/")
    first_dot = name.find(".")
    if first_dot != -1 and first_dot < first_slash:
        return name
    return ".".join(part.replace(".", "/") for part in name.split("/"))


def validate_sysctls(sysctls: Mapping[str, str], *, host_network: bool,
                     host_ipc: bool) -> dict[str, str]:
    """The pod's sysctls in dotted form; InvalidArgument for one its namespaces do not isolate.

    Only sysctls that belong to a namespace the pod owns may be set: net.* with a pod network
    namespace, the System V IPC and mqueue ones with a pod IPC namespace. Anything else would
    change the node for every pod.
    """
    result: dict[str, str] = {}
    for raw, value in sysctls.items():
        name = normalize_sysctl(raw.strip())
        parts = name.split(".")
        if len(parts) < 2 or not all(parts) or any(c.isspace() or c == "\0" for c in name):
            raise InvalidArgument(f"sysctl {raw!r} is not a valid sysctl name")
        if not value or "\n" in value or "\0" in value:
            raise InvalidArgument(f"sysctl {raw!r}: value {value!r} is empty or has a newline")
        if name.startswith(_NET_PREFIX):
            if host_network:
                raise InvalidArgument(
                    f"sysctl {name!r} cannot be set in a pod that uses the host's network "
                    "namespace: it would change the node's network settings"
                )
        elif name in _IPC_SYSCTLS or name.startswith(_IPC_PREFIXES):
            if host_ipc:
                raise InvalidArgument(
                    f"sysctl {name!r} cannot be set in a pod that uses the host's IPC "
                    "namespace: it would change the node's IPC limits"
                )
        else:
            raise InvalidArgument(
                f"sysctl {name!r} is not namespaced (only net.*, kernel.shm*, kernel.msg*, "
                "kernel.sem and fs.mqueue.* are) and would change the whole node"
            )
        result[name] = value
    return result


# Linux security modules -----------------------------------------------------------------------


@dataclass(frozen=True)
class HostSecurity:
    """What this host offers: the security modules and the user namespace support."""

    apparmor: bool = False
    apparmor_profiles: frozenset[str] = frozenset()
    selinux: bool = False
    selinux_default_process_label: str = ""
    max_user_namespaces: int = 0
    overlay_metacopy: bool = False


APPARMOR_DEFAULT_PROFILE = "crisp-default"
"""The AppArmor profile RuntimeDefault names on an AppArmor host; the admin loads it."""


def detect_host_security(sys_root: Path = Path("/sys"),
                         proc_root: Path = Path("/proc"),
                         etc_root: Path = Path("/etc")) -> HostSecurity:
    """Read the host's security module and user namespace state (blocking: reads files)."""
    apparmor = _read(sys_root / "module/apparmor/parameters/enabled").strip() == "Y"
    profiles: set[str] = set()
    if apparmor:
        for line in _read(sys_root / "kernel/security/apparmor/profiles").splitlines():
            name, _, _mode = line.rpartition(" (")
            if name:
                profiles.add(name)
    selinux = (sys_root / "fs/selinux/enforce").exists()
    label = _selinux_process_label(etc_root) if selinux else ""
    try:
        max_userns = int(_read(proc_root / "sys/user/max_user_namespaces").strip() or 0)
    except ValueError:
        max_userns = 0
    return HostSecurity(apparmor=apparmor, apparmor_profiles=frozenset(profiles),
                        selinux=selinux, selinux_default_process_label=label,
                        max_user_namespaces=max_userns,
                        overlay_metacopy=(sys_root / "module/overlay/parameters/metacopy")
                        .exists())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _selinux_process_label(etc_root: Path) -> str:
    """The container process context of the loaded policy (lxc_contexts' ``process``)."""
    policy = ""
    for line in _read(etc_root / "selinux/config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SELINUXTYPE":
            policy = value.strip()
    for line in _read(etc_root / f"selinux/{policy or 'targeted'}/contexts/lxc_contexts") \
            .splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "process":
            return value.strip().strip('"')
    return ""


def apparmor_profile(profile: SecurityProfile | None, host: HostSecurity, *,
                     privileged: bool) -> str:
    """The ``process.apparmorProfile`` of a container ("" for none).

    Where AppArmor is not enabled, RuntimeDefault and Unconfined mean nothing and are accepted,
    as containerd does; a Localhost profile is refused with FailedPrecondition: the request is
    valid, this node cannot honour it, and a node with AppArmor could.
    """
    if profile is None or profile.kind == ProfileKind.UNCONFINED:
        return ""
    if profile.kind == ProfileKind.LOCALHOST:
        name = profile.localhost_ref.removeprefix("localhost/")
        if not name:
            raise InvalidArgument("AppArmor profile type Localhost needs a localhost_ref")
        if not host.apparmor:
            raise FailedPrecondition(
                f"AppArmor profile {name!r} was requested but AppArmor is not enabled on this "
                "node (/sys/module/apparmor/parameters/enabled is not Y); run the pod on a "
                "node with AppArmor or drop the profile"
            )
        if name not in host.apparmor_profiles:
            raise FailedPrecondition(
                f"AppArmor profile {name!r} is not loaded on this node; load it with "
                "apparmor_parser first"
            )
        return name
    # RuntimeDefault
    if not host.apparmor or privileged:
        return ""
    if APPARMOR_DEFAULT_PROFILE not in host.apparmor_profiles:
        raise FailedPrecondition(
            f"AppArmor RuntimeDefault needs the profile {APPARMOR_DEFAULT_PROFILE!r} loaded on "
            "this node (see docs/security.md); load it with apparmor_parser"
        )
    return APPARMOR_DEFAULT_PROFILE


def parse_legacy_apparmor(value: str) -> SecurityProfile | None:
    """The deprecated string form: "runtime/default", "unconfined", "localhost/<name>"."""
    if not value:
        return None
    if value == "runtime/default":
        return SecurityProfile(ProfileKind.RUNTIME_DEFAULT)
    if value == "unconfined":
        return SecurityProfile(ProfileKind.UNCONFINED)
    if value.startswith("localhost/"):
        return SecurityProfile(ProfileKind.LOCALHOST, value.removeprefix("localhost/"))
    raise InvalidArgument(
        f'AppArmor profile {value!r} is unknown: use "runtime/default", "unconfined" or '
        '"localhost/<profile name>"'
    )


def selinux_label(options: SELinuxOptions | None, host: HostSecurity) -> str:
    """The ``process.selinuxLabel`` ("" for none); FailedPrecondition where SELinux is off.

    Parts the options leave empty come from the policy's default container context.
    """
    if options is None or not any((options.user, options.role, options.type, options.level)):
        return ""
    if not host.selinux:
        raise FailedPrecondition(
            "SELinux options were requested (user/role/type/level) but SELinux is not enabled "
            "on this node (no /sys/fs/selinux); run the pod on an SELinux node or drop "
            "selinux_options"
        )
    defaults = host.selinux_default_process_label.split(":", 3)
    if len(defaults) != 4:
        if not all((options.user, options.role, options.type, options.level)):
            raise FailedPrecondition(
                "SELinux options are partial and the policy names no default container "
                "context (lxc_contexts): give user, role, type and level"
            )
        defaults = ["", "", "", ""]
    parts = [options.user or defaults[0], options.role or defaults[1],
             options.type or defaults[2], options.level or defaults[3]]
    return ":".join(parts)


# User namespaces ------------------------------------------------------------------------------


MAX_ID = 2**32 - 1
"""uid_map(5) ids are 32-bit; (uid_t)-1 itself is never a valid id."""


def check_userns(userns: UserNamespace | None) -> None:
    """Refuse a user namespace request crisp cannot honour, with what to change.

    NODE (or none) is the host's user namespace. POD is the pod's own, which needs exactly
    one uid and one gid mapping (the kubelet allocates them), each mapping container root:
    crisp has no idmapped mounts to fall back on, so it shifts the owners of the rootfs by
    that one range. CONTAINER and TARGET are not defined for user namespaces.
    """
    if userns is None:
        return
    mode = NamespaceMode(userns.mode)
    if mode == NamespaceMode.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(
                "user namespace mode NODE takes no uid/gid mappings (the host's are used); "
                "drop the mappings or use mode POD")
        return
    if mode != NamespaceMode.POD:
        raise InvalidArgument(
            f"user namespace mode {mode.name} is not supported: a pod's containers share one "
            "user namespace; use POD (hostUsers: false) or NODE (the host's)")
    for kind, mappings in (("uid", userns.uids), ("gid", userns.gids)):
        if len(mappings) != 1:
            raise InvalidArgument(
                f"user namespace mode POD needs exactly one {kind} mapping, got "
                f"{len(mappings)}; give one range that maps container id 0 (as the kubelet "
                "does)")
        mapping = mappings[0]
        if mapping.length <= 0:
            raise InvalidArgument(f"the {kind} mapping has length {mapping.length}; it must "
                                  "be at least 1")
        if mapping.container_id != 0:
            raise InvalidArgument(
                f"the {kind} mapping starts at container id {mapping.container_id}, so "
                "container root (id 0) is unmapped; start it at container id 0")
        if mapping.host_id == 0:
            raise InvalidArgument(
                f"the {kind} mapping maps container root onto host id 0; a pod user "
                "namespace must use host ids above 0 (or use mode NODE)")
        if mapping.host_id + mapping.length - 1 > MAX_ID - 1 or mapping.length > MAX_ID:
            raise InvalidArgument(
                f"the {kind} mapping {mapping.host_id}+{mapping.length} runs past the largest "
                f"id {MAX_ID - 1}")


def check_userns_support(host: HostSecurity) -> None:
    """Refuse a POD user namespace on a host that cannot give one (FailedPrecondition)."""
    if host.max_user_namespaces <= 0:
        raise FailedPrecondition(
            "pod user namespaces need kernel support: /proc/sys/user/max_user_namespaces is "
            "0 or missing; raise it (sysctl user.max_user_namespaces) or use mode NODE")
    if not host.overlay_metacopy:
        raise FailedPrecondition(
            "pod user namespaces need overlayfs metacopy (CONFIG_OVERLAY_FS_METACOPY) to "
            "shift the rootfs owners without copying file data; this kernel lacks it, so use "
            "mode NODE")


def runs_in_pod_userns(userns: UserNamespace | None) -> bool:
    return userns is not None and userns.mode == NamespaceMode.POD


async def check_runtime_userns(runtime_path: str) -> None:
    """Refuse a POD user namespace when the handler's runtime does not list the ``user``
    namespace in ``<runtime> features`` (Status then reports user_namespaces false too)."""
    features = await runtime_features(runtime_path)
    if "user" not in ((features.get("linux") or {}).get("namespaces") or []):
        raise FailedPrecondition(
            f"pod user namespaces need an OCI runtime that reports the user namespace in "
            f"`{runtime_path} features`; this handler's does not: pick a handler whose "
            "RuntimeStatus reports user_namespaces, or use mode NODE")


# Privileged containers' devices ---------------------------------------------------------------

_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(dev: Path = Path("/dev")) -> list[dict[str, Any]]:
    """Every character and block device under /dev as OCI ``linux.devices`` entries (blocking).

    What a privileged container sees, as with Docker and containerd; the container's own pts,
    shm and mqueue mounts and /dev/console (conmon's terminal) are left out.
    """
    found: list[dict[str, Any]] = []
    for root, dirs, files in os.walk(dev):
        dirs[:] = [d for d in dirs if not (root == str(dev) and d in _SKIPPED_DEV_DIRS)]
        for name in sorted(files):
            path = os.path.join(root, name)
            if path == os.path.join(str(dev), "console"):
                continue
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(info.st_mode):
                kind = "c"
            elif stat.S_ISBLK(info.st_mode):
                kind = "b"
            else:
                continue
            found.append({"path": path, "type": kind, "major": os.major(info.st_rdev),
                          "minor": os.minor(info.st_rdev),
                          "fileMode": stat.S_IMODE(info.st_mode),
                          "uid": info.st_uid, "gid": info.st_gid})
    return found


# The plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityPlan:
    """What the spec's security steps need that takes a file read or a host fact to decide:
    the resolved seccomp filter, LSM labels and, for a privileged container, host devices."""

    seccomp: dict[str, Any] | None = None
    apparmor_profile: str = ""
    selinux_label: str = ""
    host_devices: list[dict[str, Any]] = field(default_factory=list)
    all_devices_allowed: bool = False


def seccomp_request(security: SecurityRequest) -> tuple[SeccompKind, str]:
    """The seccomp kind and Localhost path a security context asks for."""
    profile = security.seccomp
    if profile is None:
        return parse_legacy_profile_path(security.seccomp_profile_path)
    kind = {ProfileKind.RUNTIME_DEFAULT: SeccompKind.RUNTIME_DEFAULT,
            ProfileKind.UNCONFINED: SeccompKind.UNCONFINED,
            ProfileKind.LOCALHOST: SeccompKind.LOCALHOST}[ProfileKind(profile.kind)]
    ref = profile.localhost_ref.removeprefix("localhost/")
    if kind is SeccompKind.LOCALHOST and not ref:
        raise InvalidArgument("seccomp profile type Localhost needs a localhost_ref")
    return kind, ref


async def plan_security(security: SecurityRequest, *, sandbox_privileged: bool,
                        without_host_devices: bool, runtime_path: str = "",
                        host: HostSecurity | None = None) -> SecurityPlan:
    """Decide a container's seccomp, LSM labels and devices; errors name what to change."""
    if security.privileged and not sandbox_privileged:
        raise FailedPrecondition(
            "a privileged container needs a privileged pod sandbox: set "
            "securityContext.privileged in the pod's (sandbox) security context too"
        )
    if host is None:
        host = await asyncio.to_thread(detect_host_security)
    check_userns(security.userns)
    if runs_in_pod_userns(security.userns):
        check_userns_support(host)
    caps = container_capabilities(security.privileged, security.add_capabilities,
                                  security.drop_capabilities)
    kind, ref = seccomp_request(security)
    seccomp = await seccomp_for_container(kind, ref, caps, privileged=security.privileged)
    apparmor = apparmor_profile(security.apparmor, host, privileged=security.privileged)
    label = selinux_label(security.selinux, host)
    devices: list[dict[str, Any]] = []
    allow_all = security.privileged and not without_host_devices
    if allow_all:
        devices = await asyncio.to_thread(host_devices)
    return SecurityPlan(seccomp=seccomp, apparmor_profile=apparmor, selinux_label=label,
                        host_devices=devices, all_devices_allowed=allow_all)


async def check_sandbox_security(*, sysctls: Mapping[str, str], host_network: bool,
                                 host_ipc: bool, userns: UserNamespace | None,
                                 selinux: SELinuxOptions | None,
                                 runtime_path: str) -> dict[str, str]:
    """Refuse at RunPodSandbox what no container of the pod could get; the pod's sysctls in
    dotted form. Invalid sysctls are InvalidArgument, what this node lacks FailedPrecondition."""
    checked = validate_sysctls(sysctls, host_network=host_network, host_ipc=host_ipc)
    check_userns(userns)
    asks_userns = runs_in_pod_userns(userns)
    if not asks_userns and selinux is None:
        return checked
    host = await asyncio.to_thread(detect_host_security)
    if asks_userns:
        check_userns_support(host)
        await check_runtime_userns(runtime_path)
    selinux_label(selinux, host)
    return checked
