"""Cgroup drivers: how a pod's cgroup parent and a container id become an OCI cgroupsPath.

The kubelet names the pod cgroup in the form of the driver it was configured with: cgroupfs
sends a path ("/kubepods/burstable/pod<uid>"), systemd a slice unit name
("kubepods-burstable-pod<uid>.slice"). crisp must use the same driver, turn that parent into
the ``linux.cgroupsPath`` runc expects, and know where the result lands in the hierarchy so
that stats can be read from it. Everything here is pure string work.
"""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from typing import Literal

from crisp.errors import InvalidArgument

CONTAINER_PREFIX = "crisp"
"""Names crisp's container cgroups ("crisp-<id>", "crisp-<id>.scope") apart from others."""

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SLICE_COMPONENT = re.compile(r"^[A-Za-z0-9_.:\\]+$")


def _check_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.match(container_id):
        raise InvalidArgument(
            f"container id {container_id!r} cannot name a cgroup: use letters, digits, "
            "'_', '.' and '-' (at most 128), starting with a letter or digit"
        )


class CgroupDriver(ABC):
    """Maps pod cgroup parents and container ids to runc's cgroupsPath and back."""

    name: Literal["cgroupfs", "systemd"]

    @abstractmethod
    def default_parent(self) -> str:
        """The parent of pods whose PodSandboxConfig names none (crictl without a kubelet)."""

    @abstractmethod
    def sandbox_default_parent(self, sandbox_id: str) -> str:
        """A pod cgroup of crisp's own, below `default_parent`, for a pod that names none;
        so that every pod still has a cgroup of its own to read pod stats from."""

    @abstractmethod
    def validate_parent(self, cgroup_parent: str) -> str:
        """The parent in canonical form; InvalidArgument if this driver cannot use it."""

    @abstractmethod
    def container_cgroups_path(self, cgroup_parent: str, container_id: str) -> str:
        """The OCI ``linux.cgroupsPath`` of a container of the pod with this parent."""

    @abstractmethod
    def parent_cgroup(self, cgroup_parent: str) -> str:
        """Where the pod cgroup is in the hierarchy: an absolute cgroup path such as
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"."""

    @abstractmethod
    def container_cgroup(self, cgroups_path: str) -> str:
        """Where a container with this OCI cgroupsPath is in the hierarchy (absolute)."""

    def resolve_parent(self, cgroup_parent: str) -> str:
        """The validated parent, or the default one when the pod names none."""
        return self.validate_parent(cgroup_parent) if cgroup_parent else self.default_parent()

    def sandbox_parent(self, cgroup_parent: str, sandbox_id: str) -> str:
        """The parent a new pod's containers go below: the kubelet's, or one of crisp's own.

        Call once at RunPodSandbox and store the result with the sandbox.
        """
        if cgroup_parent:
            return self.validate_parent(cgroup_parent)
        _check_container_id(sandbox_id)
        return self.sandbox_default_parent(sandbox_id)

    @abstractmethod
    def owns_parent(self, cgroup_parent: str) -> bool:
        """True for parents crisp made up (`sandbox_default_parent`), which crisp removes."""


class CgroupfsDriver(CgroupDriver):
    """Plain directories: runc creates "<parent>/crisp-<id>" in every hierarchy."""

    name: Literal["cgroupfs", "systemd"] = "cgroupfs"

    def default_parent(self) -> str:
        return "/crisp"

    def sandbox_default_parent(self, sandbox_id: str) -> str:
        return f"/crisp/pod-{sandbox_id}"

    def owns_parent(self, cgroup_parent: str) -> bool:
        return cgroup_parent.startswith("/crisp/pod-")

    def validate_parent(self, cgroup_parent: str) -> str:
        if cgroup_parent.endswith(".slice") and "/" not in cgroup_parent:
            raise InvalidArgument(
                f"cgroup parent {cgroup_parent!r} is a systemd slice, but crisp uses the "
                'cgroupfs driver: set cgroup_manager = "systemd" in crisp\'s config, or run '
                "the kubelet with --cgroup-driver=cgroupfs"
            )
        parts = [part for part in cgroup_parent.split("/") if part]
        if any(part in (".", "..") for part in parts) or "\x00" in cgroup_parent:
            raise InvalidArgument(
                f"cgroup parent {cgroup_parent!r} must be a plain path such as "
                '"/kubepods/burstable/pod<uid>", without "." or ".." components'
            )
        return "/" + "/".join(parts)

    def container_cgroups_path(self, cgroup_parent: str, container_id: str) -> str:
        _check_container_id(container_id)
        parent = self.resolve_parent(cgroup_parent)
        return posixpath.join(parent, f"{CONTAINER_PREFIX}-{container_id}")

    def parent_cgroup(self, cgroup_parent: str) -> str:
        return self.resolve_parent(cgroup_parent)

    def container_cgroup(self, cgroups_path: str) -> str:
        if not cgroups_path.startswith("/"):
            raise InvalidArgument(
                f"cgroupsPath {cgroups_path!r} is not a cgroupfs path (it must be absolute)"
            )
        return self.validate_parent(cgroups_path)


def expand_slice(slice_name: str) -> str:
    """A systemd slice's place in the hierarchy: "a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice".

    Dashes in a slice name mean nesting (systemd.slice(5)); "-.slice" is the root slice.
    """
    if not slice_name.endswith(".slice") or "/" in slice_name:
        raise InvalidArgument(
            f"{slice_name!r} is not a systemd slice name: it must end in \".slice\" and "
            'contain no "/", such as "kubepods-burstable-pod<uid>.slice"'
        )
    stem = slice_name.removesuffix(".slice")
    if stem == "-":
        return "/"
    components = stem.split("-")
    if any(not part or not _SLICE_COMPONENT.match(part) for part in components):
        raise InvalidArgument(
            f"systemd slice name {slice_name!r} is malformed: dashes separate nesting levels, "
            "so it may not start or end with one or hold two in a row (escape the pod uid's "
            'dashes as "_", as the kubelet does)'
        )
    path = ""
    prefix = ""
    for part in components:
        prefix = f"{prefix}-{part}" if prefix else part
        path += f"/{prefix}.slice"
    return path


class SystemdDriver(CgroupDriver):
    """Transient scopes: runc asks systemd for scope "crisp-<id>.scope" in the pod's slice.

    The cgroupsPath has runc's "slice:prefix:name" form; systemd must run as init for runc to
    use it, which crisp's daemon checks before choosing this driver.
    """

    name: Literal["cgroupfs", "systemd"] = "systemd"

    def default_parent(self) -> str:
        return "system.slice"

    def sandbox_default_parent(self, sandbox_id: str) -> str:
        # Dashes nest slices, so the id's own dashes are escaped as the kubelet does.
        return f"crisp-pod{sandbox_id.replace('-', '_')}.slice"

    def owns_parent(self, cgroup_parent: str) -> bool:
        return cgroup_parent.startswith("crisp-pod") and cgroup_parent.endswith(".slice")

    def validate_parent(self, cgroup_parent: str) -> str:
        if cgroup_parent.startswith("/"):
            raise InvalidArgument(
                f"cgroup parent {cgroup_parent!r} is a cgroupfs path, but crisp uses the "
                "systemd driver: send a slice name such as \"kubepods-burstable-pod<uid>.slice\" "
                '(kubelet --cgroup-driver=systemd), or set cgroup_manager = "cgroupfs"'
            )
        expand_slice(cgroup_parent)
        return cgroup_parent

    def container_cgroups_path(self, cgroup_parent: str, container_id: str) -> str:
        _check_container_id(container_id)
        return f"{self.resolve_parent(cgroup_parent)}:{CONTAINER_PREFIX}:{container_id}"

    def parent_cgroup(self, cgroup_parent: str) -> str:
        return expand_slice(self.resolve_parent(cgroup_parent))

    def container_cgroup(self, cgroups_path: str) -> str:
        parts = cgroups_path.split(":")
        if len(parts) != 3 or not all(parts):
            raise InvalidArgument(
                f"cgroupsPath {cgroups_path!r} is not in the systemd driver's "
                '"slice:prefix:name" form'
            )
        slice_name, prefix, name = parts
        return posixpath.join(expand_slice(slice_name), f"{prefix}-{name}.scope")


def driver_for(manager: str) -> CgroupDriver:
    """The driver config's ``cgroup_manager`` names."""
    if manager == "cgroupfs":
        return CgroupfsDriver()
    if manager == "systemd":
        return SystemdDriver()
    raise InvalidArgument(f'cgroup_manager {manager!r} is unknown: use "cgroupfs" or "systemd"')


def cgroups_path(driver: CgroupDriver, cgroup_parent: str, container_id: str) -> str:
    """The OCI ``linux.cgroupsPath`` for a container; the spec builder's one call."""
    return driver.container_cgroups_path(cgroup_parent, container_id)
