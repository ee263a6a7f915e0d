"""A container's config and image, as the OCI layer's requests.

``oci/`` is below ``pods/`` and takes only its own types (``crisp.oci.model``); this is the
one place that turns the pod model into them, so the spec builder never learns about CRI's
records and a field the model gains reaches config.json only when it is carried here.
"""

from __future__ import annotations

from crisp.oci.model import (
    BindMount,
    ContainerRequest,
    DeviceRequest,
    ImageDefaults,
    SecurityRequest,
    SupplementalGroupsPolicy,
    UserRequest,
)
from crisp.pods.model import ContainerConfig, ImageRuntimeConfig, SecurityContext


def user_request(security: SecurityContext) -> UserRequest:
    return UserRequest(
        run_as_user=security.run_as_user,
        run_as_group=security.run_as_group,
        run_as_username=security.run_as_username,
        supplemental_groups=list(security.supplemental_groups),
        supplemental_groups_policy=SupplementalGroupsPolicy(security.supplemental_groups_policy),
    )


def security_request(security: SecurityContext) -> SecurityRequest:
    return SecurityRequest(
        privileged=security.privileged,
        userns=security.namespaces.userns,
        readonly_rootfs=security.readonly_rootfs,
        no_new_privs=security.no_new_privs,
        masked_paths=None if security.masked_paths is None else list(security.masked_paths),
        readonly_paths=None if security.readonly_paths is None else list(security.readonly_paths),
        add_capabilities=list(security.add_capabilities),
        drop_capabilities=list(security.drop_capabilities),
        seccomp=security.seccomp,
        seccomp_profile_path=security.seccomp_profile_path,
        apparmor=security.apparmor,
        selinux=security.selinux,
    )


def container_request(config: ContainerConfig) -> ContainerRequest:
    return ContainerRequest(
        name=config.metadata.name,
        command=list(config.command),
        args=list(config.args),
        working_dir=config.working_dir,
        env=list(config.env),
        mounts=[BindMount(container_path=m.container_path, host_path=m.host_path,
                          readonly=m.readonly, propagation=m.propagation,
                          recursive_read_only=m.recursive_read_only)
                for m in config.mounts],
        devices=[DeviceRequest(container_path=d.container_path, host_path=d.host_path,
                               permissions=d.permissions)
                 for d in config.devices],
        annotations=dict(config.annotations),
        tty=config.tty,
        resources=config.resources,
        security=security_request(config.security),
    )


def image_defaults(image: ImageRuntimeConfig) -> ImageDefaults:
    return ImageDefaults(
        reference=image.reference,
        env=list(image.env),
        entrypoint=list(image.entrypoint),
        cmd=list(image.cmd),
        working_dir=image.working_dir,
    )
