"""CRI security contexts to crisp's: seccomp, AppArmor, SELinux and user namespace fields."""

from __future__ import annotations

from crisp.api import cri_pb2
from crisp.pods.codec import from_document, to_document
from crisp.pods.model import (
    ContainerConfig,
    IDMapping,
    NamespaceMode,
    ProfileKind,
    SecurityProfile,
    SELinuxOptions,
    UserNamespace,
)
from crisp.server.pod_convert import container_config, sandbox_config


def test_container_security_profiles_and_options() -> None:
    message = cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"))
    context = message.linux.security_context
    context.seccomp.profile_type = cri_pb2.SecurityProfile.Localhost
    context.seccomp.localhost_ref = "/profiles/p.json"
    context.apparmor_profile = "localhost/mine"
    context.selinux_options.level = "s0:c1"
    context.namespace_options.userns_options.mode = cri_pb2.POD
    context.namespace_options.userns_options.uids.append(
        cri_pb2.IDMapping(host_id=100000, container_id=0, length=65536))
    security = container_config(message).security
    assert security.seccomp == SecurityProfile(ProfileKind.LOCALHOST, "/profiles/p.json")
    assert security.apparmor == SecurityProfile(ProfileKind.LOCALHOST, "mine")
    assert security.selinux == SELinuxOptions(level="s0:c1")
    assert security.namespaces.userns == UserNamespace(
        mode=NamespaceMode.POD, uids=[IDMapping(100000, 0, 65536)])


def test_unset_fields_stay_unset() -> None:
    security = container_config(
        cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"))).security
    assert security.seccomp is None and security.apparmor is None
    assert security.selinux is None and security.namespaces.userns is None
    # The SecurityProfile message given with its zero value is RuntimeDefault, not "unset".
    message = cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"))
    message.linux.security_context.seccomp.SetInParent()
    message.linux.security_context.apparmor.SetInParent()
    security = container_config(message).security
    assert security.seccomp == SecurityProfile(ProfileKind.RUNTIME_DEFAULT)
    assert security.apparmor == SecurityProfile(ProfileKind.RUNTIME_DEFAULT)


def test_sandbox_security() -> None:
    message = cri_pb2.PodSandboxConfig()
    context = message.linux.security_context
    context.privileged = True
    context.seccomp_profile_path = "runtime/default"
    context.selinux_options.type = "spc_t"
    context.run_as_user.value = 1000
    context.readonly_rootfs = True
    message.linux.sysctls["net.ipv4.ip_forward"] = "1"
    config = sandbox_config(message)
    assert config.privileged and config.seccomp is None
    assert config.seccomp_profile_path == "runtime/default"
    assert config.selinux == SELinuxOptions(type="spc_t")
    assert config.sysctls == {"net.ipv4.ip_forward": "1"}
    assert (config.run_as_user, config.run_as_group, config.readonly_rootfs) == (1000, None, True)


def test_security_fields_survive_the_record_codec() -> None:
    message = cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"))
    context = message.linux.security_context
    context.seccomp.profile_type = cri_pb2.SecurityProfile.Localhost
    context.seccomp.localhost_ref = "/p.json"
    context.apparmor_profile = "runtime/default"
    context.selinux_options.level = "s0"
    context.namespace_options.userns_options.mode = cri_pb2.NODE
    config = container_config(message)
    restored = from_document(ContainerConfig, to_document(config))
    assert restored.security == config.security
    assert ProfileKind(restored.security.seccomp.kind) is ProfileKind.LOCALHOST  # type: ignore[union-attr]
