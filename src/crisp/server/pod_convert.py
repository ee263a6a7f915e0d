"""Protobuf <-> crisp.pods translations for the sandbox and container RPCs.

Only the server package sees protobuf messages; these functions are the whole border.
"""

from __future__ import annotations

import signal as signals

from crisp.api import cri_pb2
from crisp.cgroups import HugepageLimit
from crisp.errors import InvalidArgument
from crisp.oci.security import parse_legacy_apparmor
from crisp.pods import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    Device,
    DNSConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PortMapping,
    Propagation,
    Resources,
    Sandbox,
    SandboxConfig,
    SandboxMetadata,
    SandboxState,
    SecurityContext,
)
from crisp.pods.model import (
    IDMapping,
    ProfileKind,
    SecurityProfile,
    SELinuxOptions,
    SupplementalGroupsPolicy,
    UserNamespace,
)

_MODES: dict[NamespaceMode, cri_pb2.NamespaceMode] = {
    NamespaceMode.POD: cri_pb2.POD, NamespaceMode.CONTAINER: cri_pb2.CONTAINER,
    NamespaceMode.NODE: cri_pb2.NODE, NamespaceMode.TARGET: cri_pb2.TARGET,
}
_PROPAGATIONS: dict[Propagation, cri_pb2.MountPropagation] = {
    Propagation.PRIVATE: cri_pb2.PROPAGATION_PRIVATE,
    Propagation.HOST_TO_CONTAINER: cri_pb2.PROPAGATION_HOST_TO_CONTAINER,
    Propagation.BIDIRECTIONAL: cri_pb2.PROPAGATION_BIDIRECTIONAL,
}
_PROTOCOLS = {cri_pb2.TCP: "tcp", cri_pb2.UDP: "udp", cri_pb2.SCTP: "sctp"}
_STATES = {
    SandboxState.READY: cri_pb2.SANDBOX_READY,
    SandboxState.NOTREADY: cri_pb2.SANDBOX_NOTREADY,
}


def groups_policy(value: int) -> SupplementalGroupsPolicy:
    """CRI's SupplementalGroupsPolicy; a number CRI does not define is the caller's error."""
    try:
        return SupplementalGroupsPolicy(value)
    except ValueError:
        raise InvalidArgument(
            f"supplemental_groups_policy {value} is unknown (0 Merge or 1 Strict)"
        ) from None


def _user_namespace(message: cri_pb2.NamespaceOption) -> UserNamespace | None:
    if not message.HasField("userns_options"):
        return None
    userns = message.userns_options
    return UserNamespace(
        mode=NamespaceMode(userns.mode),
        uids=[IDMapping(m.host_id, m.container_id, m.length) for m in userns.uids],
        gids=[IDMapping(m.host_id, m.container_id, m.length) for m in userns.gids],
    )


def namespace_options(message: cri_pb2.NamespaceOption) -> NamespaceOptions:
    return NamespaceOptions(
        network=NamespaceMode(message.network), pid=NamespaceMode(message.pid),
        ipc=NamespaceMode(message.ipc), target_id=message.target_id,
        userns=_user_namespace(message),
    )


_PROFILE_KINDS = {
    cri_pb2.SecurityProfile.RuntimeDefault: ProfileKind.RUNTIME_DEFAULT,
    cri_pb2.SecurityProfile.Unconfined: ProfileKind.UNCONFINED,
    cri_pb2.SecurityProfile.Localhost: ProfileKind.LOCALHOST,
}


def _profile(message: cri_pb2.SecurityProfile) -> SecurityProfile:
    kind = _PROFILE_KINDS.get(message.profile_type)
    if kind is None:
        raise InvalidArgument(f"security profile type {message.profile_type} is unknown")
    return SecurityProfile(kind=kind, localhost_ref=message.localhost_ref)


def _selinux(message: cri_pb2.SELinuxOption) -> SELinuxOptions | None:
    options = SELinuxOptions(user=message.user, role=message.role, type=message.type,
                             level=message.level)
    return options if any((options.user, options.role, options.type, options.level)) else None


def sandbox_config(message: cri_pb2.PodSandboxConfig) -> SandboxConfig:
    """The domain form of a PodSandboxConfig."""
    linux = message.linux
    security = linux.security_context
    dns = message.dns_config if message.HasField("dns_config") else None
    return SandboxConfig(
        metadata=SandboxMetadata(
            name=message.metadata.name, uid=message.metadata.uid,
            namespace=message.metadata.namespace, attempt=message.metadata.attempt,
        ),
        hostname=message.hostname,
        log_directory=message.log_directory,
        dns=DNSConfig(list(dns.servers), list(dns.searches), list(dns.options))
        if dns is not None else None,
        port_mappings=[
            PortMapping(protocol=_PROTOCOLS.get(p.protocol, "tcp"),
                        container_port=p.container_port, host_port=p.host_port,
                        host_ip=p.host_ip)
            for p in message.port_mappings
        ],
        labels=dict(message.labels),
        annotations=dict(message.annotations),
        cgroup_parent=linux.cgroup_parent,
        namespaces=namespace_options(security.namespace_options),
        privileged=security.privileged,
        sysctls=dict(linux.sysctls),
        seccomp=_profile(security.seccomp) if security.HasField("seccomp") else None,
        seccomp_profile_path=security.seccomp_profile_path,
        selinux=_selinux(security.selinux_options),
        run_as_user=security.run_as_user.value if security.HasField("run_as_user") else None,
        run_as_group=security.run_as_group.value if security.HasField("run_as_group") else None,
        supplemental_groups=list(security.supplemental_groups),
        supplemental_groups_policy=groups_policy(security.supplemental_groups_policy),
        readonly_rootfs=security.readonly_rootfs,
    )


def sandbox_metadata(sandbox: Sandbox) -> cri_pb2.PodSandboxMetadata:
    metadata = sandbox.config.metadata
    return cri_pb2.PodSandboxMetadata(name=metadata.name, uid=metadata.uid,
                                      namespace=metadata.namespace, attempt=metadata.attempt)


def sandbox_status(sandbox: Sandbox) -> cri_pb2.PodSandboxStatus:
    options = sandbox.config.namespaces
    network = cri_pb2.PodSandboxNetworkStatus()
    if sandbox.ips and options.network != NamespaceMode.NODE:
        network.ip = sandbox.ips[0]
        network.additional_ips.extend(cri_pb2.PodIP(ip=ip) for ip in sandbox.ips[1:])
    return cri_pb2.PodSandboxStatus(
        id=sandbox.id,
        metadata=sandbox_metadata(sandbox),
        state=_STATES[sandbox.state],
        created_at=sandbox.created_at,
        network=network,
        linux=cri_pb2.LinuxPodSandboxStatus(namespaces=cri_pb2.Namespace(
            options=cri_pb2.NamespaceOption(
                network=_MODES[options.network], pid=_MODES[options.pid],
                ipc=_MODES[options.ipc],
                target_id=options.target_id,
            ))),
        labels=sandbox.config.labels,
        annotations=sandbox.config.annotations,
        runtime_handler=sandbox.runtime_handler,
    )



def sandbox_state(sandbox: Sandbox) -> cri_pb2.PodSandboxState:
    return _STATES[sandbox.state]


_CONTAINER_STATES = {
    ContainerState.CREATED: cri_pb2.CONTAINER_CREATED,
    ContainerState.RUNNING: cri_pb2.CONTAINER_RUNNING,
    ContainerState.EXITED: cri_pb2.CONTAINER_EXITED,
    ContainerState.UNKNOWN: cri_pb2.CONTAINER_UNKNOWN,
}
CONTAINER_STATES_BY_CODE = {code: state for state, code in _CONTAINER_STATES.items()}


def container_state(container: Container) -> cri_pb2.ContainerState:
    return _CONTAINER_STATES[container.state]


def _signal_name(value: int) -> str:
    """CRI's Signal enum value as a signal name ("" for the runtime default)."""
    if value == cri_pb2.SIGNAL_RUNTIME_DEFAULT:
        return ""
    try:
        return str(cri_pb2.Signal.Name(value)).removeprefix("SIGNAL_")
    except ValueError:
        raise InvalidArgument(f"stop_signal {value} is not a CRI Signal value") from None


def _signal_value(name: str) -> cri_pb2.Signal:
    text = name.upper()
    if text.isdigit():
        try:
            text = signals.Signals(int(text)).name
        except ValueError:
            return cri_pb2.SIGNAL_RUNTIME_DEFAULT
    if not text.startswith("SIG"):
        text = f"SIG{text}"
    try:
        value: cri_pb2.Signal = cri_pb2.Signal.Value(f"SIGNAL_{text}")  # type: ignore[assignment]
        return value
    except ValueError:
        return cri_pb2.SIGNAL_RUNTIME_DEFAULT


def resources(message: cri_pb2.LinuxContainerResources) -> Resources:
    return Resources(
        cpu_period=message.cpu_period, cpu_quota=message.cpu_quota,
        cpu_shares=message.cpu_shares, memory_limit_in_bytes=message.memory_limit_in_bytes,
        oom_score_adj=message.oom_score_adj, cpuset_cpus=message.cpuset_cpus,
        cpuset_mems=message.cpuset_mems,
        memory_swap_limit_in_bytes=message.memory_swap_limit_in_bytes,
        unified=dict(message.unified),
        hugepage_limits=tuple(HugepageLimit(page_size=h.page_size, limit=h.limit)
                              for h in message.hugepage_limits),
    )


def _resources_message(value: Resources) -> cri_pb2.LinuxContainerResources:
    return cri_pb2.LinuxContainerResources(
        cpu_period=value.cpu_period, cpu_quota=value.cpu_quota, cpu_shares=value.cpu_shares,
        memory_limit_in_bytes=value.memory_limit_in_bytes, oom_score_adj=value.oom_score_adj,
        cpuset_cpus=value.cpuset_cpus, cpuset_mems=value.cpuset_mems,
        memory_swap_limit_in_bytes=value.memory_swap_limit_in_bytes, unified=value.unified,
        hugepage_limits=[cri_pb2.HugepageLimit(page_size=h.page_size, limit=h.limit)
                         for h in value.hugepage_limits],
    )


def _security(message: cri_pb2.LinuxContainerSecurityContext) -> SecurityContext:
    return SecurityContext(
        privileged=message.privileged,
        namespaces=namespace_options(message.namespace_options),
        run_as_user=message.run_as_user.value if message.HasField("run_as_user") else None,
        run_as_group=message.run_as_group.value if message.HasField("run_as_group") else None,
        run_as_username=message.run_as_username,
        supplemental_groups=list(message.supplemental_groups),
        supplemental_groups_policy=groups_policy(message.supplemental_groups_policy),
        readonly_rootfs=message.readonly_rootfs,
        no_new_privs=message.no_new_privs,
        masked_paths=list(message.masked_paths) or None,
        readonly_paths=list(message.readonly_paths) or None,
        add_capabilities=list(message.capabilities.add_capabilities),
        drop_capabilities=list(message.capabilities.drop_capabilities),
        seccomp=_profile(message.seccomp) if message.HasField("seccomp") else None,
        seccomp_profile_path=message.seccomp_profile_path,
        apparmor=_profile(message.apparmor) if message.HasField("apparmor")
        else parse_legacy_apparmor(message.apparmor_profile),
        selinux=_selinux(message.selinux_options),
    )


def container_config(message: cri_pb2.ContainerConfig) -> ContainerConfig:
    """The domain form of a ContainerConfig; InvalidArgument for what crisp cannot honour."""
    mounts = []
    for mount in message.mounts:
        image = mount.image.image if mount.HasField("image") else ""
        if image and mount.host_path:
            raise InvalidArgument(
                f"mount at {mount.container_path!r} names both host_path "
                f"{mount.host_path!r} and image {image!r}: give one"
            )
        if image and not mount.readonly:
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: image volume {image!r} must be readonly"
            )
        if mount.image_sub_path and not image:
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: image_sub_path needs an image"
            )
        mounts.append(Mount(
            image=image, image_sub_path=mount.image_sub_path,
            container_path=mount.container_path, host_path=mount.host_path,
            readonly=mount.readonly, propagation=Propagation(mount.propagation),
            selinux_relabel=mount.selinux_relabel,
            recursive_read_only=mount.recursive_read_only,
        ))
    envs = []
    for env in message.envs:
        try:
            envs.append((env.key, bytes(env.value).decode()))
        except UnicodeDecodeError:
            raise InvalidArgument(f"environment variable {env.key!r} is not UTF-8") from None
    return ContainerConfig(
        metadata=ContainerMetadata(name=message.metadata.name,
                                   attempt=message.metadata.attempt),
        image=message.image.image,
        command=list(message.command),
        args=list(message.args),
        working_dir=message.working_dir,
        env=envs,
        mounts=mounts,
        devices=[Device(container_path=d.container_path, host_path=d.host_path,
                        permissions=d.permissions or "rwm") for d in message.devices],
        labels=dict(message.labels),
        annotations=dict(message.annotations),
        log_path=message.log_path,
        stdin=message.stdin,
        stdin_once=message.stdin_once,
        tty=message.tty,
        resources=resources(message.linux.resources),
        security=_security(message.linux.security_context),
        stop_signal=_signal_name(message.stop_signal),
    )


def _container_metadata(container: Container) -> cri_pb2.ContainerMetadata:
    return cri_pb2.ContainerMetadata(name=container.config.metadata.name,
                                     attempt=container.config.metadata.attempt)


def image_ref(container: Container) -> str:
    return container.image.repo_digest or container.image.id


def container_summary(container: Container) -> cri_pb2.Container:
    return cri_pb2.Container(
        id=container.id, pod_sandbox_id=container.sandbox_id,
        metadata=_container_metadata(container),
        image=cri_pb2.ImageSpec(image=container.config.image),
        image_ref=image_ref(container), state=container_state(container),
        created_at=container.created_at, labels=container.config.labels,
        annotations=container.config.annotations, image_id=container.image.id,
    )


def container_status(container: Container,
                     resources: Resources | None = None) -> cri_pb2.ContainerStatus:
    """A container's status; ``resources`` are the limits in force, when they were read."""
    user = cri_pb2.ContainerUser()
    if container.user is not None:
        user.linux.uid = container.user.uid
        user.linux.gid = container.user.gid
        user.linux.supplemental_groups.extend(container.user.additional_gids)
    return cri_pb2.ContainerStatus(
        id=container.id,
        metadata=_container_metadata(container),
        state=container_state(container),
        created_at=container.created_at,
        started_at=container.started_at,
        finished_at=container.finished_at,
        exit_code=container.exit_code,
        image=cri_pb2.ImageSpec(image=container.config.image),
        image_ref=image_ref(container),
        image_id=container.image.id,
        reason=container.reason,
        message=container.message,
        labels=container.config.labels,
        annotations=container.config.annotations,
        mounts=[_mount_message(container, m) for m in container.config.mounts],
        log_path=container.log_path,
        resources=cri_pb2.ContainerResources(
            linux=_resources_message(resources or container.config.resources)),
        user=user,
        stop_signal=_signal_value(container.stop_signal),
    )


def _mount_message(container: Container, mount: Mount) -> cri_pb2.Mount:
    """A mount for ContainerStatus; an image volume names its image and the id it resolved to."""
    message = cri_pb2.Mount(container_path=mount.container_path, host_path=mount.host_path,
                            readonly=mount.readonly, selinux_relabel=mount.selinux_relabel,
                            propagation=_PROPAGATIONS[mount.propagation],
                            recursive_read_only=mount.recursive_read_only,
                            image_sub_path=mount.image_sub_path)
    if mount.image:
        resolved = next((v for v in container.image_volumes
                         if v.container_path == mount.container_path), None)
        message.image.CopyFrom(cri_pb2.ImageSpec(
            image=mount.image, image_ref=resolved.image_id if resolved else ""))
    return message
