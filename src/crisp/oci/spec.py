"""The OCI runtime spec (config.json) of a container, built from its CRI config and image.

The spec is assembled by small functions, one per concern (process, mounts, namespaces,
devices, resources, security), each taking the :class:`SpecInputs` and filling its part of
the document, so that a later concern (seccomp, cgroup drivers) is one more step in
:data:`SPEC_STEPS` rather than a branch in every other one.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crisp.cgroups import CgroupHost, CgroupMode, LinuxResources, oci_resources
from crisp.errors import InvalidArgument
from crisp.oci.model import (
    BindMount,
    ContainerRequest,
    IDMapping,
    ImageDefaults,
    NamespaceMode,
    ProcessUser,
    Propagation,
)
from crisp.oci.security import (
    DEFAULT_CAPABILITIES as DEFAULT_CAPABILITIES,  # re-exported: spec tests check it
)
from crisp.oci.security import (
    SecurityPlan,
    container_capabilities,
    masked_and_readonly_paths,
)

Spec = dict[str, Any]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PROPAGATION = {
    Propagation.PRIVATE: "rprivate",
    Propagation.HOST_TO_CONTAINER: "rslave",
    Propagation.BIDIRECTIONAL: "rshared",
}


@dataclass(frozen=True)
class PodPaths:
    """What a container takes from its pod: namespace files and the pod's own files."""

    network_ns: str = ""
    ipc_ns: str = ""
    uts_ns: str = ""
    pid_ns: str = ""
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    hostname_file: str = ""
    hosts_file: str = ""
    resolv_conf: str = ""
    shm: str = ""
    hostname: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    # The pod's user namespace (POD mode): its pinned file and mappings; "" is the host's.
    user_ns: str = ""
    uid_mappings: list[IDMapping] = field(default_factory=list)
    gid_mappings: list[IDMapping] = field(default_factory=list)


@dataclass(frozen=True)
class SpecInputs:
    """Everything the spec of one container depends on."""

    config: ContainerRequest
    image: ImageDefaults
    rootfs: str
    user: ProcessUser
    pod: PodPaths
    cgroups_path: str
    min_oom_score_adj: int = -1000
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_v2: bool = False
    # The host's cgroup layout, which decides what resources it can take (swap, hugepages,
    # unified keys); None checks against PORTABLE_HOST.
    cgroup_host: CgroupHost | None = None
    # What the security steps need decided beforehand (seccomp filter, LSM labels, host
    # devices): crisp.oci.security.plan_security.
    security: SecurityPlan = field(default_factory=SecurityPlan)


SpecStep = Callable[[Spec, SpecInputs], None]


def process_args(config: ContainerRequest, image: ImageDefaults) -> list[str]:
    """argv as the kubelet expects: command replaces the entrypoint and drops the image's cmd."""
    if config.command:
        argv = [*config.command, *config.args]
    else:
        argv = [*image.entrypoint, *(config.args or image.cmd)]
    if not argv:
        raise InvalidArgument(
            f"container {config.name!r}: neither the config nor image "
            f"{image.reference!r} gives a command to run"
        )
    return argv


def merge_env(image_env: list[str], config_env: list[tuple[str, str]]) -> list[str]:
    """The image's environment, overridden and extended by the config's, order kept."""
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in config_env:
        if not key or "=" in key:
            raise InvalidArgument(f"environment variable name {key!r} is not valid")
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    return [f"{key}={value}" for key, value in merged.items()]


def _base(spec: Spec, inputs: SpecInputs) -> None:
    spec["ociVersion"] = OCI_VERSION
    spec["root"] = {"path": inputs.rootfs, "readonly": inputs.config.security.readonly_rootfs}
    spec["annotations"] = {**inputs.config.annotations, **inputs.annotations}
    spec.setdefault("linux", {})


def _process(spec: Spec, inputs: SpecInputs) -> None:
    config = inputs.config
    env = merge_env(inputs.image.env, config.env)
    if inputs.pod.hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={inputs.pod.hostname}")
    cwd = config.working_dir or inputs.image.working_dir or "/"
    if not posixpath.isabs(cwd):
        raise InvalidArgument(f"working_dir {cwd!r} must be an absolute path")
    user: dict[str, Any] = {"uid": inputs.user.uid, "gid": inputs.user.gid}
    if inputs.user.additional_gids:
        user["additionalGids"] = list(inputs.user.additional_gids)
    requested = config.resources.oom_score_adj
    spec["process"] = {
        "terminal": config.tty,
        "user": user,
        "args": process_args(config, inputs.image),
        "env": env,
        "cwd": cwd,
        "noNewPrivileges": config.security.no_new_privs,
        # Lowering oom_score_adj needs CAP_SYS_RESOURCE: never ask below crisp's own value.
        "oomScoreAdj": max(requested, inputs.min_oom_score_adj),
    }


def _security(spec: Spec, inputs: SpecInputs) -> None:
    """Capabilities, masked and read-only paths, seccomp and LSM labels."""
    security = inputs.config.security
    caps = container_capabilities(security.privileged, security.add_capabilities,
                                  security.drop_capabilities)
    spec["process"]["capabilities"] = {
        "bounding": caps, "effective": caps, "permitted": caps,
    }
    plan = inputs.security
    if plan.apparmor_profile:
        spec["process"]["apparmorProfile"] = plan.apparmor_profile
    if plan.selinux_label:
        spec["process"]["selinuxLabel"] = plan.selinux_label
    linux = spec["linux"]
    linux["maskedPaths"], linux["readonlyPaths"] = masked_and_readonly_paths(security)
    if plan.seccomp is not None:
        linux["seccomp"] = plan.seccomp


def _namespaces(spec: Spec, inputs: SpecInputs) -> None:
    pod = inputs.pod
    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    if pod.user_ns:
        # Joined by path; runc 1.1 still wants the mappings (it chowns /dev by them).
        namespaces.append({"type": "user", "path": pod.user_ns})
        spec["linux"]["uidMappings"] = _oci_mappings(pod.uid_mappings)
        spec["linux"]["gidMappings"] = _oci_mappings(pod.gid_mappings)
    for kind, path in (("network", pod.network_ns), ("ipc", pod.ipc_ns), ("uts", pod.uts_ns)):
        if path:
            namespaces.append({"type": kind, "path": path})
    if pod.pid_mode == NamespaceMode.CONTAINER:
        namespaces.append({"type": "pid"})
    elif pod.pid_mode in (NamespaceMode.POD, NamespaceMode.TARGET):
        if not pod.pid_ns:
            raise InvalidArgument("the container shares a PID namespace that has no process")
        namespaces.append({"type": "pid", "path": pod.pid_ns})
    if inputs.cgroup_v2:
        namespaces.append({"type": "cgroup"})
    spec["linux"]["namespaces"] = namespaces


def _oci_mappings(mappings: list[IDMapping]) -> list[dict[str, int]]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length}
            for m in mappings]


def _default_mounts(spec: Spec, inputs: SpecInputs) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev", "ro"]
    host_network = not inputs.pod.network_ns
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        # A container in the host's network namespace may not mount a fresh sysfs.
        {"destination": "/sys", "type": "bind" if host_network else "sysfs",
         "source": "/sys" if host_network else "sysfs",
         "options": [*sys_options, "rbind"] if host_network else sys_options},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    if inputs.config.security.privileged:
        mounts[4]["options"] = [o for o in mounts[4]["options"] if o != "ro"]
        mounts[5]["options"] = [o for o in mounts[5]["options"] if o != "ro"]
    pod = inputs.pod
    shm = pod.shm or "/dev/shm"
    mounts.append({"destination": "/dev/shm", "type": "bind", "source": shm,
                   "options": ["rbind", "nosuid", "noexec", "nodev"]})
    for destination, source in (("/etc/hostname", pod.hostname_file),
                                ("/etc/hosts", pod.hosts_file),
                                ("/etc/resolv.conf", pod.resolv_conf)):
        if source:
            mounts.append({"destination": destination, "type": "bind", "source": source,
                           "options": ["rbind", "rprivate",
                                       "ro" if inputs.config.security.readonly_rootfs else "rw"]})
    return mounts


def _mounts(spec: Spec, inputs: SpecInputs) -> None:
    requested = inputs.config.mounts
    wanted = {posixpath.normpath(m.container_path) for m in requested}
    mounts = [m for m in _default_mounts(spec, inputs) if m["destination"] not in wanted]
    rootfs_propagation = ""
    # Parents before children, so a mount at /a/b is not hidden by one at /a.
    for mount in sorted(requested, key=lambda m: posixpath.normpath(m.container_path).count("/")):
        if not posixpath.isabs(mount.container_path):
            raise InvalidArgument(f"mount path {mount.container_path!r} must be absolute")
        if not mount.host_path:
            raise InvalidArgument(f"mount at {mount.container_path!r} has no host_path")
        options = ["rbind", _PROPAGATION[mount.propagation], "ro" if mount.readonly else "rw"]
        if mount.recursive_read_only:
            _check_recursive_read_only(mount)
            options.append("rro")
        if mount.propagation == Propagation.BIDIRECTIONAL:
            rootfs_propagation = "rshared"
        elif mount.propagation == Propagation.HOST_TO_CONTAINER and not rootfs_propagation:
            rootfs_propagation = "rslave"
        mounts.append({"destination": posixpath.normpath(mount.container_path), "type": "bind",
                       "source": mount.host_path, "options": options})
    spec["mounts"] = mounts
    if rootfs_propagation:
        spec["linux"]["rootfsPropagation"] = rootfs_propagation


def _check_recursive_read_only(mount: BindMount) -> None:
    """CRI's rules for recursive read-only: a read-only, private mount (submounts that
    propagate in later could not be made read-only)."""
    if not mount.readonly:
        raise InvalidArgument(
            f"mount at {mount.container_path!r}: recursive_read_only needs readonly too"
        )
    if mount.propagation != Propagation.PRIVATE:
        raise InvalidArgument(
            f"mount at {mount.container_path!r}: recursive_read_only needs private "
            "propagation (PROPAGATION_PRIVATE)"
        )


def _devices(spec: Spec, inputs: SpecInputs) -> None:
    devices: list[dict[str, Any]] = []
    allow: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for device in inputs.config.devices:
        if not set(device.permissions) <= set("rwm") or not device.permissions:
            raise InvalidArgument(
                f"device {device.host_path!r}: permissions {device.permissions!r} must be "
                "made of r, w and m"
            )
        try:
            info = os.stat(device.host_path)
        except FileNotFoundError:
            raise InvalidArgument(
                f"device {device.host_path!r} does not exist on the host"
            ) from None
        if stat.S_ISCHR(info.st_mode):
            kind = "c"
        elif stat.S_ISBLK(info.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{device.host_path!r} is not a character or block device")
        major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
        devices.append({"path": device.container_path or device.host_path, "type": kind,
                        "major": major, "minor": minor, "fileMode": stat.S_IMODE(info.st_mode),
                        "uid": 0, "gid": 0})
        allow.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": device.permissions})
    if inputs.security.all_devices_allowed:
        # A privileged container: every host device, as on the host itself.
        requested = {d["path"] for d in devices}
        devices = [*devices, *(d for d in inputs.security.host_devices
                               if d["path"] not in requested)]
        allow = [{"allow": True, "access": "rwm"}]
    spec["linux"]["devices"] = devices
    spec["linux"].setdefault("resources", {})["devices"] = allow


PORTABLE_HOST = CgroupHost(mode=CgroupMode.LEGACY)
"""The host resources are checked against when none is given: cgroup v1 without swap
accounting or hugepages, so only cpu and memory limits pass (unit tests, tools)."""


def linux_resources(wanted: LinuxResources, host: CgroupHost | None = None) -> dict[str, Any]:
    """OCI ``linux.resources`` (without devices) for CRI's settings, validated for ``host``.

    The same dict serves config.json and ``runc update --resources``.
    """
    return oci_resources(wanted, host or PORTABLE_HOST)


def _resources(spec: Spec, inputs: SpecInputs) -> None:
    spec["linux"].setdefault("resources", {}).update(
        linux_resources(inputs.config.resources, inputs.cgroup_host))
    spec["linux"]["cgroupsPath"] = inputs.cgroups_path


def _sysctls(spec: Spec, inputs: SpecInputs) -> None:
    """The pod's sysctls; runc refuses those the container's namespaces do not isolate."""
    if inputs.pod.sysctls:
        spec["linux"]["sysctl"] = dict(inputs.pod.sysctls)


SPEC_STEPS: list[SpecStep] = [_base, _process, _security, _namespaces, _mounts, _devices,
                              _resources, _sysctls]


def build_spec(inputs: SpecInputs, steps: list[SpecStep] | None = None) -> Spec:
    """The complete config.json document for one container."""
    spec: Spec = {}
    for step in steps if steps is not None else SPEC_STEPS:
        step(spec, inputs)
    return spec
