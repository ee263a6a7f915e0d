"""The pod and container records crisp keeps, and the configs they are created from.

These mirror the CRI messages the kubelet sends, as plain dataclasses: ``crisp.server``
translates protobuf into them and nothing below the server sees a protobuf message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from crisp.cgroups.resources import LinuxResources
from crisp.oci import model as oci

# Values the OCI layer takes too: defined below both, in crisp.oci.model, and shared.
IDMapping = oci.IDMapping
NamespaceMode = oci.NamespaceMode
ProcessUser = oci.ProcessUser
ProfileKind = oci.ProfileKind
Propagation = oci.Propagation
SecurityProfile = oci.SecurityProfile
SELinuxOptions = oci.SELinuxOptions
SupplementalGroupsPolicy = oci.SupplementalGroupsPolicy
UserNamespace = oci.UserNamespace


class SandboxState(enum.StrEnum):
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NamespaceOptions:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.POD
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""
    userns: UserNamespace | None = None


@dataclass(frozen=True)
class DNSConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PortMapping:
    protocol: str = "tcp"
    container_port: int = 0
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxMetadata:
    name: str = ""
    uid: str = ""
    namespace: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class SandboxConfig:
    """What RunPodSandbox asks for."""

    metadata: SandboxMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig | None = None
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    privileged: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    seccomp: SecurityProfile | None = None
    seccomp_profile_path: str = ""
    selinux: SELinuxOptions | None = None
    # The pod-level security context applies to the infra process, when the pod has one.
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    readonly_rootfs: bool = False


# A container's cgroup settings are the cgroups package's own type: zero or empty means
# "not set", as in CRI.
Resources = LinuxResources


@dataclass(frozen=True)
class SecurityContext:
    """A container's security context: who its process runs as and what confines it.

    ``seccomp`` None means CRI gave no SecurityProfile, so ``seccomp_profile_path`` (the
    deprecated string form, "" being Unconfined) decides; ``apparmor`` None is "not asked".
    """

    privileged: bool = False
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
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
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: Propagation = Propagation.PRIVATE
    selinux_relabel: bool = False
    # Read-only all the way down (submounts too): runc's "rro", kernel 5.12 and later.
    recursive_read_only: bool = False
    # Image volume (KEP-4639): the pulled image whose root filesystem (or ``image_sub_path``
    # of it) is mounted read-only; then host_path is empty.
    image: str = ""
    image_sub_path: str = ""


@dataclass(frozen=True)
class ImageVolume:
    """An image volume as created: which image it resolved to and the snapshot it mounts."""

    container_path: str
    image: str
    image_id: str
    snapshot: str
    source: str


@dataclass(frozen=True)
class Device:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class ContainerMetadata:
    name: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class ContainerConfig:
    """What CreateContainer asks for."""

    metadata: ContainerMetadata
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    env: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources = field(default_factory=Resources)
    security: SecurityContext = field(default_factory=SecurityContext)
    stop_signal: str = ""


@dataclass(frozen=True)
class ImageRuntimeConfig:
    """What a container takes from its image's config, plus where its layers are."""

    id: str
    reference: str
    repo_digest: str = ""
    user: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    stop_signal: str = ""
    lower_dirs: list[str] = field(default_factory=list)


@dataclass
class Sandbox:
    """A pod sandbox as crisp records it."""

    id: str
    config: SandboxConfig
    runtime_handler: str
    created_at: int
    state: SandboxState = SandboxState.READY
    namespace_paths: dict[str, str] = field(default_factory=dict)
    pod_dir: str = ""
    shm_path: str = ""
    infra: Container | None = None
    ips: list[str] = field(default_factory=list)
    network_ready: bool = False
    # The pod's cgroup parent as the cgroup driver resolved it at RunPodSandbox: the
    # kubelet's, or one crisp made up (and removes with the pod) when the config names none.
    cgroup_parent: str = ""

    @property
    def name(self) -> str:
        """The unique name the metadata gives, as kubelet-facing runtimes spell it."""
        return sandbox_name(self.config.metadata)


@dataclass
class Container:
    """A container as crisp records it."""

    id: str
    sandbox_id: str
    config: ContainerConfig
    image: ImageRuntimeConfig
    created_at: int
    log_path: str
    runtime_handler: str
    bundle: str
    unique_name: str = ""
    rootfs: str = ""
    user: ProcessUser | None = None
    state: ContainerState = ContainerState.CREATED
    pid: int = 0
    monitor_pid: int = 0
    monitor_start_time: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    infra: bool = False
    stop_signal: str = "SIGTERM"
    image_volumes: list[ImageVolume] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.metadata.name


def sandbox_name(metadata: SandboxMetadata) -> str:
    return f"{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"


def container_name(sandbox: Sandbox, metadata: ContainerMetadata) -> str:
    """Unique per (pod, container name, attempt): the database holds one of each."""
    return f"{metadata.name}_{sandbox.name}_{metadata.attempt}"


def labels_match(labels: dict[str, str], selector: dict[str, Any]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
