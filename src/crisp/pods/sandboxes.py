"""The pod sandbox lifecycle: namespaces, pod files, network, and the infra process if needed.

Pods are infra-less: the network, IPC and UTS namespaces are pinned files that containers join
by path. Only a pod that shares one PID namespace among its containers (or a config that asks
for it) gets an infra process, started from the pause image, whose PID namespace the
containers join.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisp.diskspace import disk_full_from, is_disk_full
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.security import check_sandbox_security
from crisp.pods.codec import to_document
from crisp.pods.containers import ContainerManager, new_id
from crisp.pods.context import PodContext
from crisp.pods.events import EventKind, LifecycleEvent
from crisp.pods.failpoints import failpoint
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    NamespaceMode,
    NamespaceOptions,
    Sandbox,
    SandboxConfig,
    SandboxState,
    SecurityContext,
)
from crisp.pods.namespaces import create_namespaces, release_namespaces
from crisp.pods.podfiles import PodFiles, release_shm, remove_pod_files, write_pod_files
from crisp.steps import step

log = logging.getLogger(__name__)

HOSTNAME_LIMIT = 64


class SandboxManager:
    def __init__(self, ctx: PodContext, containers: ContainerManager):
        self.ctx = ctx
        self.containers = containers

    # Run ---------------------------------------------------------------------------------

    async def run(self, config: SandboxConfig, runtime_handler: str) -> Sandbox:
        _validate(config)
        ctx = self.ctx
        backend = ctx.backend(runtime_handler)
        options = config.namespaces
        config = replace(config, sysctls=await check_sandbox_security(
            sysctls=config.sysctls, host_network=options.network == NamespaceMode.NODE,
            host_ipc=options.ipc == NamespaceMode.NODE, userns=options.userns,
            selinux=config.selinux, runtime_path=backend.runtime.path))
        sandbox = Sandbox(
            id=new_id(), config=config, runtime_handler=backend.name,
            created_at=time.time_ns(),
        )
        sandbox.cgroup_parent = ctx.cgroups.sandbox_parent(config.cgroup_parent, sandbox.id)
        ctx.store.reserve("pod", sandbox.name, sandbox.id)
        try:
            async with ctx.store.lock(sandbox.id):
                await self._run(sandbox)
        except BaseException as error:
            ctx.store.release("pod", sandbox.name, sandbox.id)
            if is_disk_full(error):  # rolled back by _run; say so for this pod
                raise disk_full_from(error, ctx.layout.root_dir,
                                     f"running pod sandbox {config.metadata.namespace}/"
                                     f"{config.metadata.name}") from error
            raise
        self.publish(sandbox, EventKind.CREATED)
        self.publish(sandbox, EventKind.STARTED)
        return sandbox

    async def _run(self, sandbox: Sandbox) -> None:
        ctx = self.ctx
        config = sandbox.config
        options = config.namespaces
        progress: dict[str, Any] = {"handler": sandbox.runtime_handler,
                                    "config": to_document(config),
                                    "cgroup_parent": sandbox.cgroup_parent}
        with step("pod: journal"):
            operation = await ctx.journal.begin("sandbox.run", sandbox.id, "namespaces",
                                                progress)
        try:
            userns = options.userns if _in_pod_userns(config) else None
            kinds = ["user"] if userns is not None else []
            if options.network != NamespaceMode.NODE:
                kinds += ["net", "uts"]
            if options.ipc != NamespaceMode.NODE:
                kinds.append("ipc")
            hostname = pod_hostname(config)
            sandbox.config = replace(config, hostname=hostname)
            with step("pod: namespaces"):
                pinned = await create_namespaces(
                    ctx.layout.namespace_dir(sandbox.id), kinds, hostname,
                    uids=userns.uids if userns else None, gids=userns.gids if userns else None)
            sandbox.namespace_paths = pinned.paths
            progress["namespaces"] = pinned.paths
            with_network = "net" in kinds and ctx.network is not None
            # Recovery and rollback undo files and network alike whatever the step says.
            with step("pod: journal"):
                await ctx.journal.advance(operation, "network" if with_network else "files",
                                          progress)
            failpoint("sandbox.run.namespaces")
            pod_dir = ctx.layout.pod_dir(sandbox.id)
            # The pod's files and its CNI ADD need nothing of each other: run them together.
            files_task = asyncio.ensure_future(self._timed_files(
                pod_dir, hostname if "uts" in kinds else _host_hostname(), config,
                host_network="net" not in kinds, private_shm="ipc" in kinds,
                owner=(userns.uids[0].host_id, userns.gids[0].host_id) if userns else None))
            try:
                if with_network:
                    assert ctx.network is not None
                    with step("pod: CNI ADD"):
                        sandbox.ips = await ctx.network.setup(sandbox, pinned.paths["net"])
                    sandbox.network_ready = True
            except BaseException:
                # The rollback must not race the files: wait for them, and raise this error.
                await asyncio.wait([files_task])
                if not files_task.cancelled():
                    files_task.exception()
                raise
            files = await files_task
            sandbox.pod_dir = str(pod_dir)
            sandbox.shm_path = files.shm
            if with_network:
                failpoint("sandbox.run.network")
            if options.pid == NamespaceMode.POD or ctx.live.current.pod.infra_container:
                progress["infra_id"] = infra_id = new_id()
                with step("pod: journal"):
                    await ctx.journal.advance(operation, "infra", progress)
                with step("pod: infra container"):
                    sandbox.infra = await self._start_infra(sandbox, infra_id)
                failpoint("sandbox.run.infra")
            sandbox.state = SandboxState.READY
            with step("pod: state commit"):
                await ctx.store.save_sandbox(sandbox)
        except BaseException:
            await asyncio.shield(self.release(sandbox))
            await asyncio.shield(self.remove_files(sandbox.id))
            await asyncio.shield(self.release_cgroup(sandbox))
            await ctx.journal.finish(operation)
            raise
        with step("pod: journal"):
            await ctx.journal.finish(operation)

    @staticmethod
    async def _timed_files(pod_dir: Path, hostname: str, config: SandboxConfig,
                           host_network: bool, private_shm: bool,
                           owner: tuple[int, int] | None) -> PodFiles:
        with step("pod: files"):
            return await write_pod_files(pod_dir, hostname, config.dns,
                                         host_network=host_network, private_shm=private_shm,
                                         owner=owner)

    async def _start_infra(self, sandbox: Sandbox, infra_id: str) -> Container:
        ctx = self.ctx
        image = await ctx.images.ensure(ctx.live.current.pod.pause_image)
        config = ContainerConfig(
            metadata=ContainerMetadata(name="POD"),
            image=ctx.live.current.pod.pause_image,
            security=SecurityContext(
                namespaces=NamespaceOptions(pid=NamespaceMode.CONTAINER),
                privileged=False,
                seccomp=sandbox.config.seccomp,
                seccomp_profile_path=sandbox.config.seccomp_profile_path,
                selinux=sandbox.config.selinux,
                run_as_user=sandbox.config.run_as_user,
                run_as_group=sandbox.config.run_as_group,
                supplemental_groups=list(sandbox.config.supplemental_groups),
                supplemental_groups_policy=sandbox.config.supplemental_groups_policy,
                readonly_rootfs=sandbox.config.readonly_rootfs,
            ),
            labels=dict(sandbox.config.labels),
        )
        container = await self.containers.build(
            sandbox, config, image, ctx.backend(sandbox.runtime_handler), infra_id,
            f"POD_{sandbox.name}", infra=True,
        )
        try:
            await self.containers.start_infra(container)
        except BaseException:
            await asyncio.shield(self.containers.destroy(infra_id,
                                                         ctx.backend(sandbox.runtime_handler)))
            raise
        return container

    # Stop, remove ------------------------------------------------------------------------

    async def stop(self, sandbox_id: str) -> None:
        """Stop every container, the infra process and the network; idempotent."""
        sandbox = self.ctx.store.sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        grace = self.ctx.live.current.pod.stop_timeout
        await asyncio.gather(*(
            self.containers.stop_container(container, grace)
            for container in self.ctx.store.containers_of(sandbox_id)
        ))
        async with self.ctx.store.lock(sandbox_id):
            if sandbox_id not in self.ctx.store.sandboxes:
                return
            was_ready = sandbox.state == SandboxState.READY
            failpoint("sandbox.stop.containers")
            # Not ready from here on for readers; the record says so once all is released,
            # so a crash in between is finished by recovery.
            sandbox.state = SandboxState.NOTREADY
            await self.release(sandbox)
            failpoint("sandbox.stop.released")
            await self.ctx.store.save_sandbox(sandbox)
        if was_ready:
            self.publish(sandbox, EventKind.STOPPED)

    async def release(self, sandbox: Sandbox) -> None:
        """Give back what a ready pod holds (infra, network, shm, namespaces); idempotent."""
        ctx = self.ctx
        if sandbox.infra is not None:
            if sandbox.infra.state in (ContainerState.CREATED, ContainerState.RUNNING):
                await self.containers.stop_container(sandbox.infra, 0)
            await self.containers.destroy(sandbox.infra.id, ctx.backend(sandbox.runtime_handler))
        net = sandbox.namespace_paths.get("net")
        if net and ctx.network is not None:
            # Always: teardown is a no-op for a pod the network never saw, and it must also
            # run for one whose setup failed half-way and could not be undone at once.
            await ctx.network.teardown(sandbox, net)
        sandbox.network_ready = False
        await release_shm(ctx.layout.pod_dir(sandbox.id))
        await release_namespaces(ctx.layout.namespace_dir(sandbox.id))

    async def remove(self, sandbox_id: str) -> None:
        """Stop the pod, remove its containers and every file of it; an unknown id is fine."""
        store = self.ctx.store
        sandbox = store.sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        for container in store.containers_of(sandbox_id):
            await self.containers.stop_container(container, 0)
        await self.stop(sandbox_id)
        async with store.lock(sandbox_id):
            if sandbox_id not in store.sandboxes:
                return
            operation = await self.ctx.journal.begin("sandbox.remove", sandbox_id, "containers",
                                                     {"handler": sandbox.runtime_handler})
            for container in store.containers_of(sandbox_id):
                await self.containers.remove(container.id)
            failpoint("sandbox.remove.containers")
            await self.release(sandbox)
            await self.remove_files(sandbox_id)
            await self.release_cgroup(sandbox)
            failpoint("sandbox.remove.files")
            await store.delete_sandbox(sandbox)
            await self.ctx.journal.finish(operation)
        store.forget_lock(sandbox_id)
        self.publish(sandbox, EventKind.DELETED)

    async def release_cgroup(self, sandbox: Sandbox) -> None:
        """Remove the pod cgroup crisp made for a pod that named none; idempotent."""
        cgroups = self.ctx.cgroups_service
        if cgroups is None or not sandbox.cgroup_parent:
            return
        cgroups.forget(sandbox.id)
        try:
            await cgroups.release_sandbox_parent(sandbox.cgroup_parent)
        except FailedPrecondition as error:
            # A process that outlived its container: leave the cgroup rather than fail the
            # removal; it is empty again once that process ends.
            log.warning("pod %s: %s", sandbox.id, error)

    async def remove_files(self, sandbox_id: str) -> None:
        await remove_pod_files(self.ctx.layout.pod_dir(sandbox_id))
        await release_namespaces(self.ctx.layout.namespace_dir(sandbox_id))
        await asyncio.to_thread(_rmtree, self.ctx.layout.pod_run_dir(sandbox_id))

    def publish(self, sandbox: Sandbox, kind: EventKind) -> None:
        self.ctx.events.publish(LifecycleEvent(
            object_id=sandbox.id, kind=kind, sandbox=replace(sandbox),
            containers=[replace(c) for c in self.ctx.store.containers_of(sandbox.id)],
        ))


def _validate(config: SandboxConfig) -> None:
    metadata = config.metadata
    for field_name in ("name", "uid", "namespace"):
        if not getattr(metadata, field_name):
            raise InvalidArgument(f"pod sandbox metadata.{field_name} is required")
    if config.namespaces.network not in (NamespaceMode.POD, NamespaceMode.NODE):
        raise InvalidArgument("a pod's network namespace mode must be POD or NODE")
    if config.namespaces.ipc not in (NamespaceMode.POD, NamespaceMode.NODE):
        raise InvalidArgument("a pod's IPC namespace mode must be POD or NODE")
    if config.namespaces.pid == NamespaceMode.TARGET:
        raise InvalidArgument("a pod's PID namespace mode cannot be TARGET (only a container's)")
    if _in_pod_userns(config):
        shared = [kind for kind, mode in (("network", config.namespaces.network),
                                          ("IPC", config.namespaces.ipc),
                                          ("PID", config.namespaces.pid))
                  if mode == NamespaceMode.NODE]
        if shared:
            raise InvalidArgument(
                f"a pod in its own user namespace (mode POD) cannot share the host's "
                f"{', '.join(shared)} namespace (hostUsers: false excludes hostNetwork, "
                "hostIPC and hostPID)")
    pod_hostname(config)
    if config.log_directory and (not config.log_directory.startswith("/")
                                 or "\0" in config.log_directory):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path")


def _in_pod_userns(config: SandboxConfig) -> bool:
    userns = config.namespaces.userns
    return userns is not None and userns.mode == NamespaceMode.POD


def pod_hostname(config: SandboxConfig) -> str:
    """The UTS hostname of a pod: its own, or else its name; refused unless RFC 1123.

    The name reaches ``hostname(1)`` and /etc/hostname, so nothing else may pass.
    """
    if config.hostname or config.namespaces.network == NamespaceMode.NODE:
        return _check_hostname(config.hostname, "hostname") if config.hostname else ""
    fallback = config.metadata.name[:_LABEL_LIMIT].rstrip("-.")
    return _check_hostname(fallback, "hostname (from the pod name, since none is set)")


_LABEL_LIMIT = 63
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _check_hostname(hostname: str, what: str) -> str:
    labels = hostname.split(".")
    if len(hostname) > HOSTNAME_LIMIT or not all(map(_HOSTNAME_LABEL.fullmatch, labels)):
        raise InvalidArgument(
            f"{what} {hostname!r} is not a valid RFC 1123 host name: at most {HOSTNAME_LIMIT} "
            "characters, dot-separated labels of letters, digits and '-' that start and end "
            "with a letter or digit"
        )
    return hostname


def _host_hostname() -> str:
    return socket.gethostname()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
