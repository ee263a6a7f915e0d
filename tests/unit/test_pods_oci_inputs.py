"""The pod model as the OCI layer's requests: every field the spec builder reads is carried."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from crisp.cgroups import LinuxResources
from crisp.oci.model import (
    BindMount,
    ContainerRequest,
    DeviceRequest,
    ImageDefaults,
    SecurityRequest,
    UserRequest,
)
from crisp.pods.model import (
    ContainerConfig,
    ContainerMetadata,
    Device,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    ProfileKind,
    Propagation,
    SecurityContext,
    SecurityProfile,
    SELinuxOptions,
    SupplementalGroupsPolicy,
    UserNamespace,
)
from crisp.pods.oci_inputs import container_request, image_defaults, security_request, user_request

SECURITY = SecurityContext(
    privileged=True,
    namespaces=NamespaceOptions(userns=UserNamespace(mode=NamespaceMode.POD)),
    run_as_user=1000, run_as_group=1001, run_as_username="app", supplemental_groups=[5],
    supplemental_groups_policy=SupplementalGroupsPolicy.STRICT,
    readonly_rootfs=True, no_new_privs=True, masked_paths=["/m"], readonly_paths=["/r"],
    add_capabilities=["KILL"], drop_capabilities=["ALL"],
    seccomp=SecurityProfile(ProfileKind.LOCALHOST, "p.json"), seccomp_profile_path="x",
    apparmor=SecurityProfile(ProfileKind.RUNTIME_DEFAULT), selinux=SELinuxOptions(level="s0"),
)


def assert_carried(request: Any, source: Any, renamed: dict[str, Any] | None = None,
                   default: Any = None) -> None:
    """Each field of ``request`` holds the source's value, and that value is not the default
    (so a field the conversion forgot cannot pass by being left at its default)."""
    renamed = renamed or {}
    default = default if default is not None else type(request)()
    for f in fields(request):
        want = renamed[f.name] if f.name in renamed else getattr(source, f.name)
        assert getattr(request, f.name) == want, f.name
        assert getattr(request, f.name) != getattr(default, f.name), f.name


def test_security_context_is_carried() -> None:
    request = security_request(SECURITY)
    assert isinstance(request, SecurityRequest)
    assert_carried(request, SECURITY, {"userns": SECURITY.namespaces.userns})


def test_user_fields_are_carried() -> None:
    request = user_request(SECURITY)
    assert isinstance(request, UserRequest)
    assert_carried(request, SECURITY)


def test_container_config_is_carried() -> None:
    config = ContainerConfig(
        metadata=ContainerMetadata(name="web"), image="busybox", command=["/bin/sh"],
        args=["-c"], working_dir="/w", env=[("A", "1")],
        mounts=[Mount("/data", "/host", readonly=True, propagation=Propagation.PRIVATE,
                      recursive_read_only=True)],
        devices=[Device("/dev/x", "/dev/null", "r")], annotations={"a": "b"}, tty=True,
        resources=LinuxResources(cpu_shares=512), security=SECURITY)
    request = container_request(config)
    assert_carried(request, config, {
        "name": "web",
        "mounts": [BindMount("/data", "/host", readonly=True, recursive_read_only=True)],
        "devices": [DeviceRequest("/dev/x", "/dev/null", "r")],
        "security": security_request(SECURITY),
    }, default=ContainerRequest(name=""))
    assert isinstance(request, ContainerRequest)


def test_image_config_is_carried() -> None:
    image = ImageRuntimeConfig(id="sha256:i", reference="busybox", env=["A=1"],
                               entrypoint=["/e"], cmd=["c"], working_dir="/w", user="app")
    request = image_defaults(image)
    assert isinstance(request, ImageDefaults)
    assert_carried(request, image)
