"""What crisp's OCI layer is asked to build, in its own types.

``oci/`` sits below ``pods/``, so it cannot take the pod model's records. Two kinds of types
live here instead:

* small values both layers mean the same way (namespace modes, id mappings, security
  profiles, SELinux options, mount propagation, the resolved process user); ``pods.model``
  re-exports them, so the CRI model and the OCI layer share one definition;
* the requests spec building reads (:class:`ContainerRequest`, :class:`SecurityRequest`,
  :class:`UserRequest`, :class:`ImageDefaults`): only the fields it uses, which
  ``pods.oci_inputs`` fills from a container's config and image.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from crisp.cgroups.resources import LinuxResources

# Shared values ---------------------------------------------------------------------------------


class NamespaceMode(enum.IntEnum):
    """Scope of a Linux namespace, numbered as CRI numbers them."""

    POD = 0
    CONTAINER = 1
    NODE = 2
    TARGET = 3


@dataclass(frozen=True)
class IDMapping:
    """A range of ids: container_id.. maps to host_id.. for ``length`` ids."""

    host_id: int
    container_id: int
    length: int


@dataclass(frozen=True)
class UserNamespace:
    """CRI's userns_options: NODE is the host's user namespace, POD one of the pod's own."""

    mode: NamespaceMode = NamespaceMode.NODE
    uids: list[IDMapping] = field(default_factory=list)
    gids: list[IDMapping] = field(default_factory=list)


class ProfileKind(enum.StrEnum):
    """CRI's SecurityProfile.ProfileType, for seccomp and AppArmor."""

    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


@dataclass(frozen=True)
class SecurityProfile:
    kind: ProfileKind = ProfileKind.UNCONFINED
    localhost_ref: str = ""


@dataclass(frozen=True)
class SELinuxOptions:
    user: str = ""
    role: str = ""
    type: str = ""
    level: str = ""


class Propagation(enum.IntEnum):
    """Mount propagation, numbered as CRI numbers it."""

    PRIVATE = 0
    HOST_TO_CONTAINER = 1
    BIDIRECTIONAL = 2


class SupplementalGroupsPolicy(enum.IntEnum):
    """Which groups join the requested ones, numbered as CRI numbers it."""

    MERGE = 0  # the image's /etc/group memberships of the primary user, too
    STRICT = 1  # only the requested groups (and the primary group)


@dataclass(frozen=True)
class ProcessUser:
    """Who the container's first process runs as, resolved against the image's files."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)


# Requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRequest:
    """Who a container asks to run as; what it leaves unset comes from the image's USER."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE


@dataclass(frozen=True)
class SecurityRequest:
    """What confines a container's process.

    ``seccomp`` None means no profile was given, so ``seccomp_profile_path`` (the deprecated
    string form, "" being Unconfined) decides; ``apparmor`` None is "not asked";
    ``masked_paths``/``readonly_paths`` None are the defaults.
    """

    privileged: bool = False
    userns: UserNamespace | None = None
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    add_capabilities: list[str] = field(default_factory=list)
    drop_capabilities: list[str] = field(default_factory=list)
    seccomp: SecurityProfile | None = None
    seccomp_profile_path: str = ""
    apparmor: SecurityProfile | None = None
    selinux: SELinuxOptions | None = None


@dataclass(frozen=True)
class BindMount:
    """A host path bound into the container."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: Propagation = Propagation.PRIVATE
    # Read-only all the way down (submounts too): runc's "rro", kernel 5.12 and later.
    recursive_read_only: bool = False


@dataclass(frozen=True)
class DeviceRequest:
    """A host device node made available in the container."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class ContainerRequest:
    """What one container asks of its config.json (its pod's part is ``spec.PodPaths``)."""

    name: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    env: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[BindMount] = field(default_factory=list)
    devices: list[DeviceRequest] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    tty: bool = False
    resources: LinuxResources = field(default_factory=LinuxResources)
    security: SecurityRequest = field(default_factory=SecurityRequest)


@dataclass(frozen=True)
class ImageDefaults:
    """What a container's image config supplies where the request leaves a gap."""

    reference: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
