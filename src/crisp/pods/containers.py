"""The container lifecycle: create, start, stop, remove, and recording how containers end.

Every step that changes the world is journaled first (``container.create``,
``container.remove``) so that :mod:`crisp.pods.recovery` can roll a half-done create back or
finish a half-done remove after a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisp.diskspace import disk_full_from, is_disk_full
from crisp.durable import write_atomic
from crisp.errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from crisp.filemodes import public_dir
from crisp.oci.backend import RuntimeBackend
from crisp.oci.conmon import MonitorOptions, read_exit_code
from crisp.oci.handlers import runtime_supports_rro
from crisp.oci.model import BindMount
from crisp.oci.security import plan_security
from crisp.oci.spec import PodPaths, SpecInputs, build_spec, linux_resources
from crisp.oci.users import resolve_user
from crisp.pods.context import PodContext
from crisp.pods.events import EventKind, LifecycleEvent
from crisp.pods.exits import ExitWatcher
from crisp.pods.failpoints import failpoint
from crisp.pods.host import process_start_time
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerState,
    ImageRuntimeConfig,
    ImageVolume,
    Mount,
    NamespaceMode,
    Resources,
    Sandbox,
    SandboxState,
    UserNamespace,
    container_name,
)
from crisp.pods.oci_inputs import container_request, image_defaults, user_request
from crisp.steps import step

log = logging.getLogger(__name__)

KILL_WAIT = 30.0  # seconds to wait for a container to die after SIGKILL
REOPEN_LOG_TIMEOUT = 5.0  # seconds conmon gets to create a rotated log file anew
OUTPUT_LOG = "output.log"  # where conmon logs a container whose config names no log path


def new_id() -> str:
    return os.urandom(32).hex()  # secrets.token_hex without hmac, which loads libcrypto


def signal_number(name: str) -> int:
    """A signal given by name ("SIGTERM", "TERM") or number; InvalidArgument otherwise."""
    text = name.strip().upper()
    if not text:
        return int(signal.SIGTERM)
    if text.isdigit():
        number = int(text)
        if 0 < number < 65:
            return number
    else:
        try:
            return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
        except KeyError:
            pass
    raise InvalidArgument(f"stop signal {name!r} is not a signal name or number")


class ContainerManager:
    def __init__(self, ctx: PodContext):
        self.ctx = ctx
        self.watcher = ExitWatcher(self.record_exit)
        # container id -> (init pid, the limits read back from its cgroup): ContainerStatus
        # is the kubelet's most frequent call, and only UpdateContainerResources (here)
        # changes them. Dropped on update and removal; a restart has a new pid.
        self._in_force: dict[str, tuple[int, Resources]] = {}
        self._updates = 0  # a read that overlapped an update keeps nothing
        self._exited: dict[str, asyncio.Event] = {}

    # Create ------------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> Container:
        store = self.ctx.store
        sandbox = store.sandbox(sandbox_id)
        _validate(config)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(
                f"pod sandbox {sandbox_id} is not ready (it was stopped); create a new pod"
            )
        container_id = new_id()
        unique = container_name(sandbox, config.metadata)
        store.reserve("ctr", unique, container_id)
        try:
            backend = self.ctx.backend(sandbox.runtime_handler)
            with step("container: image config"):
                image = await self.ctx.images.runtime_config(config.image)
            async with store.lock(container_id):
                container = await self.build(sandbox, config, image, backend, container_id,
                                             unique, infra=False)
        except BaseException as error:
            store.release("ctr", unique, container_id)
            if is_disk_full(error):  # rolled back by build; say so for this container
                meta = sandbox.config.metadata
                raise disk_full_from(
                    error, self.ctx.layout.root_dir,
                    f"creating container {config.metadata.name} in pod "
                    f"{meta.namespace}/{meta.name}") from error
            raise
        self.publish(container, EventKind.CREATED)
        return container

    async def build(self, sandbox: Sandbox, config: ContainerConfig, image: ImageRuntimeConfig,
                    backend: RuntimeBackend, container_id: str, unique: str,
                    infra: bool) -> Container:
        """Make the rootfs, bundle and conmon of a container; roll all back if any step fails."""
        ctx = self.ctx
        with step("container: journal"):
            operation = await ctx.journal.begin(
                "container.create", container_id, "prepare",
                {"sandbox_id": sandbox.id, "handler": backend.name, "infra": infra},
            )
        files = ctx.layout.files(container_id)
        try:
            userns = _pod_userns(sandbox, config)
            with step("container: rootfs"):
                rootfs = await ctx.rootfs.prepare(container_id, image.lower_dirs, userns)
            failpoint("container.create.rootfs")
            with step("container: user and security"):
                user = await asyncio.to_thread(resolve_user, Path(rootfs), image.user,
                                               user_request(config.security))
                volumes = await self._image_volumes(container_id, config)
                request = container_request(_with_volume_sources(config, volumes))
                await _check_rro_support(request.mounts, backend)
                security = await plan_security(
                    request.security, sandbox_privileged=sandbox.config.privileged,
                    without_host_devices=_without_host_devices(ctx, sandbox.runtime_handler),
                    runtime_path=backend.runtime.path)
            stop_signal = config.stop_signal or image.stop_signal or "SIGTERM"
            signal_number(stop_signal)
            cgroups = ctx.cgroups
            # Validates the range; what is below crisp's own value is raised to it.
            cgroups.oom_score_adj(config.resources.oom_score_adj)
            spec = build_spec(SpecInputs(
                config=request, image=image_defaults(image), rootfs=str(rootfs), user=user,
                pod=self._pod_paths(sandbox, config),
                cgroups_path=cgroups.cgroups_path(pod_cgroup_parent(sandbox), container_id),
                min_oom_score_adj=cgroups.oom_score_adj_floor,
                annotations={"io.kubernetes.cri.container-type": "sandbox" if infra
                             else "container",
                             "io.kubernetes.cri.sandbox-id": sandbox.id},
                cgroup_v2=cgroups.host.is_unified,
                cgroup_host=cgroups.host,
                security=security,
            ))
            log_path = _log_path(sandbox, config)
            conmon_log = log_path or str(files.bundle / OUTPUT_LOG)
            with step("container: bundle"):
                await asyncio.to_thread(_create_mount_sources, config)
                await asyncio.to_thread(_write_bundle, files.bundle, spec, log_path,
                                        sandbox.config.log_directory)
            with step("container: journal"):
                await ctx.journal.advance(operation, "monitor")
            with step("container: conmon + runc create"):
                created = await backend.conmon.create(files, MonitorOptions(
                    name=unique, log_path=conmon_log, tty=config.tty, stdin=config.stdin,
                    stdin_once=config.stdin_once,
                ))
            container = Container(
                id=container_id, sandbox_id=sandbox.id, config=config, image=image,
                created_at=time.time_ns(), log_path=log_path,
                runtime_handler=backend.name, bundle=str(files.bundle), unique_name=unique,
                rootfs=str(rootfs), user=user, pid=created.pid, monitor_pid=created.monitor_pid,
                monitor_start_time=process_start_time(created.monitor_pid), infra=infra,
                stop_signal=stop_signal, image_volumes=volumes,
            )
            failpoint("container.create.monitor")
            self._exited[container_id] = asyncio.Event()
            if not infra:
                with step("container: state commit"):
                    await ctx.store.save_container(container)
        except BaseException:
            await asyncio.shield(self.destroy(container_id, backend))
            await ctx.journal.finish(operation)
            raise
        failpoint("container.create.saved")
        with step("container: journal"):
            await ctx.journal.finish(operation)
        self.watch(container)
        return container

    def _pod_paths(self, sandbox: Sandbox, config: ContainerConfig) -> PodPaths:
        ns = sandbox.namespace_paths
        pid_mode = config.security.namespaces.pid
        if pid_mode == NamespaceMode.POD and sandbox.config.namespaces.pid != NamespaceMode.POD:
            # "The pod's" PID namespace of a pod without a shared one: the container's own,
            # or the host's for a host-PID pod.
            pid_mode = sandbox.config.namespaces.pid
        pid_ns = ""
        if pid_mode == NamespaceMode.POD:
            if sandbox.infra is None or sandbox.infra.state != ContainerState.RUNNING:
                raise FailedPrecondition(
                    f"pod sandbox {sandbox.id} has no running infra process to share its PID "
                    "namespace (it was created with a different PID mode)"
                )
            pid_ns = f"/proc/{sandbox.infra.pid}/ns/pid"
        elif pid_mode == NamespaceMode.TARGET:
            target = self.ctx.store.containers.get(config.security.namespaces.target_id)
            if target is None or target.sandbox_id != sandbox.id:
                raise NotFound(
                    f"target container {config.security.namespaces.target_id!r} of the PID "
                    f"namespace is not a container of pod {sandbox.id}"
                )
            if target.state != ContainerState.RUNNING:
                raise FailedPrecondition(f"target container {target.id} is not running")
            pid_ns = f"/proc/{target.pid}/ns/pid"
        return PodPaths(
            network_ns=ns.get("net", ""), ipc_ns=ns.get("ipc", ""), uts_ns=ns.get("uts", ""),
            pid_ns=pid_ns, pid_mode=pid_mode,
            hostname_file=str(Path(sandbox.pod_dir) / "hostname") if sandbox.pod_dir else "",
            hosts_file=str(Path(sandbox.pod_dir) / "hosts") if sandbox.pod_dir else "",
            resolv_conf=str(Path(sandbox.pod_dir) / "resolv.conf") if sandbox.pod_dir else "",
            shm=sandbox.shm_path, hostname=sandbox.config.hostname,
            sysctls=dict(sandbox.config.sysctls),
            **_user_namespace_paths(sandbox),
        )

    # Start, stop ---------------------------------------------------------------------------

    async def start(self, container_id: str) -> Container:
        store = self.ctx.store
        async with store.lock(container_id):
            container = store.container(container_id)
            if container.state != ContainerState.CREATED:
                raise FailedPrecondition(
                    f"container {container_id} is {container.state}, only a created container "
                    "can be started"
                )
            backend = self.ctx.backend(container.runtime_handler)
            started_at = time.time_ns()  # the process may end before runc start returns
            try:
                with step("container: runc start"):
                    await backend.runtime.start(container_id, container.pid)
                failpoint("container.start.started")
            except RuntimeFailure as error:
                await self._record_failed_start(container, str(error))
                raise
            container.state = ContainerState.RUNNING
            container.started_at = started_at
            with step("container: start commit"):
                await self.save(container)
        self.publish(container, EventKind.STARTED)
        return container

    async def start_infra(self, container: Container) -> None:
        backend = self.ctx.backend(container.runtime_handler)
        container.started_at = time.time_ns()
        await backend.runtime.start(container.id, container.pid)
        container.state = ContainerState.RUNNING

    async def _record_failed_start(self, container: Container, message: str) -> None:
        container.state = ContainerState.EXITED
        container.finished_at = time.time_ns()
        container.exit_code = 128
        container.reason = "StartError"
        container.message = message
        await self.save(container)
        self._exit_event(container.id).set()

    async def stop(self, container_id: str, grace: float) -> None:
        """Stop signal, then SIGKILL after ``grace`` seconds; a gone or stopped one is fine."""
        container = self.ctx.store.containers.get(container_id)
        if container is None:
            return
        await self.stop_container(container, grace)

    async def stop_container(self, container: Container, grace: float) -> None:
        if container.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
            return
        backend = self.ctx.backend(container.runtime_handler)
        exited = self._exit_event(container.id)
        if grace > 0 and container.state == ContainerState.RUNNING:
            await backend.runtime.kill(container.id, signal_number(container.stop_signal))
            try:
                await asyncio.wait_for(exited.wait(), grace)
                return
            except TimeoutError:
                log.info("container %s outlived its %ss stop grace period; killing it",
                         container.id, grace)
        await backend.runtime.kill(container.id, signal.SIGKILL, all_processes=True)
        try:
            await asyncio.wait_for(exited.wait(), KILL_WAIT)
        except TimeoutError:
            raise RuntimeFailure(
                f"container {container.id} did not exit {KILL_WAIT:.0f}s after SIGKILL"
            ) from None

    # Exits ---------------------------------------------------------------------------------

    def watch(self, container: Container) -> None:
        self._exit_event(container.id)
        self.watcher.watch(container.id, container.monitor_pid, container.monitor_start_time)

    def _exit_event(self, container_id: str) -> asyncio.Event:
        event = self._exited.get(container_id)
        if event is None:
            event = self._exited[container_id] = asyncio.Event()
        return event

    def find(self, container_id: str) -> Container | None:
        """A container or an infra container by id."""
        container = self.ctx.store.containers.get(container_id)
        if container is not None:
            return container
        for sandbox in self.ctx.store.sandboxes.values():
            if sandbox.infra is not None and sandbox.infra.id == container_id:
                return sandbox.infra
        return None

    async def record_exit(self, container_id: str) -> None:
        """conmon ended: record the exit code, the time and why, from the files it left."""
        async with self.ctx.store.lock(container_id):
            container = self.find(container_id)
            if container is None or container.state in (ContainerState.EXITED,
                                                        ContainerState.UNKNOWN):
                self._exit_event(container_id).set()
                return
            files = self.ctx.layout.files(container_id)
            code = await asyncio.to_thread(read_exit_code, files)
            finished_at = await asyncio.to_thread(_mtime_ns, files.exit_file)
            oom_killed = await asyncio.to_thread(self._oom_killed, container)
            if container.state == ContainerState.CREATED and code is None:
                # conmon of a never-started container went away (runc delete or a reboot).
                code = 255
            # Readers see the record change all at once: no await from here to the save.
            if oom_killed:
                container.reason = "OOMKilled"
            elif code is None:
                container.reason = "Error"
                container.message = "the container's monitor ended without recording an exit code"
            else:
                container.reason = "Completed" if code == 0 else "Error"
            container.exit_code = 255 if code is None else code
            container.finished_at = max(finished_at or time.time_ns(), container.started_at)
            container.state = ContainerState.EXITED
            if container.infra:
                sandbox = self.ctx.store.sandboxes.get(container.sandbox_id)
                if sandbox is not None and sandbox.state == SandboxState.READY:
                    log.warning("the infra process of pod %s ended; the pod is not ready",
                                sandbox.id)
                    sandbox.state = SandboxState.NOTREADY
            await self.save(container)
        self._exit_event(container_id).set()
        self.publish(container, EventKind.STOPPED)

    def _oom_killed(self, container: Container) -> bool:
        if self.ctx.layout.files(container.id).oom_file.exists():
            return True
        host = self.ctx.cgroup_host
        if host is None:
            return False
        try:
            cgroup = self.ctx.cgroup_driver.container_cgroup(self.cgroups_path(container))
        except Exception:  # no cgroup, no OOM evidence
            return False
        directory = host.controller_dir("memory", cgroup)
        if directory is None:
            return False
        for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            try:
                text = (directory / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key and parts[1] != "0":
                    return True
        return False

    # Remove ------------------------------------------------------------------------------

    async def remove(self, container_id: str) -> None:
        """Stop (at once) and delete the container and its files; an unknown id is fine."""
        store = self.ctx.store
        container = store.containers.get(container_id)
        if container is None:
            return
        await self.stop_container(container, 0)
        async with store.lock(container_id):
            if container_id not in store.containers:
                return
            operation = await self.ctx.journal.begin(
                "container.remove", container_id, "destroy",
                {"handler": container.runtime_handler},
            )
            await self.destroy(container_id, self.ctx.backend(container.runtime_handler))
            failpoint("container.remove.destroyed")
            await store.delete_container(container)
            await self.ctx.journal.finish(operation)
        store.forget_lock(container_id)
        self._in_force.pop(container_id, None)
        if self.ctx.cgroups_service is not None:
            self.ctx.cgroups_service.forget(container_id)
        self.publish(container, EventKind.DELETED)

    async def destroy(self, container_id: str, backend: RuntimeBackend) -> None:
        """Remove every trace of a container but its record and log; each step idempotent."""
        self.watcher.forget(container_id)
        await backend.runtime.delete(container_id)
        failpoint("container.destroy.runtime")
        await self.ctx.rootfs.remove(container_id)
        for key in await self.ctx.rootfs.keys():  # its image volumes (found by key, so a
            if key.startswith(f"{container_id}{VOLUME_KEY}"):  # create cut short counts)
                await self.ctx.rootfs.remove(key)
        files = self.ctx.layout.files(container_id)
        await asyncio.to_thread(_remove_files, files.bundle, files.exit_file,
                                files.socket_dir / container_id)
        self._exited.pop(container_id, None)

    # Helpers -----------------------------------------------------------------------------

    async def save(self, container: Container) -> None:
        if container.infra:
            sandbox = self.ctx.store.sandboxes.get(container.sandbox_id)
            if sandbox is not None and sandbox.infra is container:
                await self.ctx.store.save_sandbox(sandbox)
            return
        if container.id in self.ctx.store.containers:
            await self.ctx.store.save_container(container)

    def publish(self, container: Container, kind: EventKind) -> None:
        if container.infra:
            return
        sandbox = self.ctx.store.sandboxes.get(container.sandbox_id)
        self.ctx.events.publish(LifecycleEvent(
            object_id=container.id, kind=kind,
            sandbox=replace(sandbox) if sandbox else None,
            containers=[replace(c) for c in self.ctx.store.containers_of(container.sandbox_id)],
        ))

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        """Apply new cgroup limits to a live container and keep them for its status."""
        store = self.ctx.store
        async with store.lock(container_id):
            container = store.container(container_id)
            if container.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(
                    f"container {container_id} is {container.state}: only a created or "
                    "running container's resources can be updated"
                )
            cgroups = self.ctx.cgroups
            cgroups.oom_score_adj(resources.oom_score_adj)  # range check only: runc cannot
            wanted = linux_resources(resources, cgroups.host)  # change a live process's
            if wanted:
                self._updates += 1
                self._in_force.pop(container_id, None)
                backend = self.ctx.backend(container.runtime_handler)
                try:
                    await backend.runtime.update(container_id, wanted)
                finally:
                    self._updates += 1
            container.config = replace(container.config, resources=resources)
            await self.save(container)

    async def _image_volumes(self, container_id: str, config: ContainerConfig
                             ) -> list[ImageVolume]:
        """Mount each image volume's image (already pulled) as a snapshot of its own."""
        volumes: list[ImageVolume] = []
        for index, mount in enumerate(m for m in config.mounts if m.image):
            try:
                image = await self.ctx.images.runtime_config(mount.image)
            except NotFound:
                raise NotFound(
                    f"mount at {mount.container_path!r}: image volume {mount.image!r} is not "
                    "present: pull the image before creating the container"
                ) from None
            key = f"{container_id}{VOLUME_KEY}{index}"
            root = await self.ctx.rootfs.prepare(key, image.lower_dirs)
            source = await asyncio.to_thread(_volume_source, Path(root), mount)
            volumes.append(ImageVolume(container_path=mount.container_path, image=mount.image,
                                       image_id=image.id, snapshot=key, source=source))
        return volumes

    def image_volume_users(self, image_id: str) -> list[str]:
        """Ids of the containers that mount ``image_id`` as an image volume."""
        return sorted(c.id for c in self.ctx.store.containers.values()
                      if any(v.image_id == image_id for v in c.image_volumes))

    def cgroups_path(self, container: Container) -> str:
        """The OCI cgroupsPath the container was created with."""
        sandbox = self.ctx.store.sandboxes.get(container.sandbox_id)
        parent = pod_cgroup_parent(sandbox) if sandbox is not None else ""
        return self.ctx.cgroups.cgroups_path(parent, container.id)

    async def resources_in_force(self, container: Container) -> Resources:
        """The limits the container's cgroup has now, for ContainerStatus.

        A container that is not running has no cgroup to read: its requested ones stand.
        """
        requested = container.config.resources
        if container.state != ContainerState.RUNNING or self.ctx.cgroups_service is None:
            return requested
        known = self._in_force.get(container.id)
        if known is not None and known[0] == container.pid:
            return known[1]
        updates = self._updates
        try:
            read = await self.ctx.cgroups.container_resources(self.cgroups_path(container),
                                                              container.pid)
        except NotFound:
            return requested
        if container.state != ContainerState.RUNNING:  # exited meanwhile: nothing to keep
            return requested
        in_force = Resources(
            cpu_period=read.cpu_period, cpu_quota=read.cpu_quota, cpu_shares=read.cpu_shares,
            memory_limit_in_bytes=read.memory_limit_in_bytes, oom_score_adj=read.oom_score_adj,
            cpuset_cpus=read.cpuset_cpus, cpuset_mems=read.cpuset_mems,
            memory_swap_limit_in_bytes=read.memory_swap_limit_in_bytes,
            # Not readable back as such (the kernel has no file of "the keys set"): as asked.
            unified=dict(requested.unified), hugepage_limits=read.hugepage_limits,
        )
        if updates == self._updates:
            self._in_force[container.id] = (container.pid, in_force)
        return in_force

    async def reopen_log(self, container_id: str) -> None:
        container = self.ctx.store.container(container_id)
        if container.state != ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {container_id} is {container.state}: only a running container's "
                "log can be reopened"
            )
        backend = self.ctx.backend(container.runtime_handler)
        log_path = container.log_path
        rotated = not await asyncio.to_thread(os.path.exists, log_path)
        backend.conmon.reopen_log(self.ctx.layout.files(container_id))
        if not rotated:
            return
        # The kubelet moved the file away and expects a new one once this call returns.
        deadline = time.monotonic() + REOPEN_LOG_TIMEOUT
        while not await asyncio.to_thread(os.path.exists, log_path):
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"conmon of container {container_id} did not reopen its log {log_path} "
                    f"within {REOPEN_LOG_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(0.01)


async def _check_rro_support(mounts: list[BindMount], backend: RuntimeBackend) -> None:
    """Refuse recursive read-only mounts the handler's runtime cannot make, before runc
    would fail on them with a message the kubelet cannot act on."""
    wanted = [m.container_path for m in mounts if m.recursive_read_only]
    if wanted and not await runtime_supports_rro(backend.runtime.path):
        raise InvalidArgument(
            f"mount at {wanted[0]!r}: runtime handler {backend.name!r} does not support "
            "recursive read-only mounts (its runtime lacks \"rro\" or the kernel is "
            "older than 5.12); use readonly without recursive_read_only"
        )


def _without_host_devices(ctx: PodContext, handler: str) -> bool:
    """The handler's privileged_without_host_devices (a handler removed by a reload: no)."""
    runtime = ctx.live.current.runtimes.get(handler)
    return runtime is not None and runtime.privileged_without_host_devices


def pod_cgroup_parent(sandbox: Sandbox) -> str:
    """The cgroup parent a pod's containers go below (records before it was kept: the
    config's, which the driver resolves as it did then)."""
    return sandbox.cgroup_parent or sandbox.config.cgroup_parent


VOLUME_KEY = ".vol"
"""Snapshot keys of a container's image volumes: ``<container id>.vol<n>``."""


def _with_volume_sources(config: ContainerConfig, volumes: list[ImageVolume]) -> ContainerConfig:
    """The config with each image volume as a read-only bind of its mounted image."""
    if not volumes:
        return config
    sources = {v.container_path: v.source for v in volumes}
    return replace(config, mounts=[
        replace(m, host_path=sources[m.container_path], readonly=True)
        if m.image else m for m in config.mounts
    ])


def _volume_source(root: Path, mount: Mount) -> str:
    """Where in a mounted image the volume starts: its root or ``image_sub_path``.

    Symbolic links are followed as in the image, and one leading out of it is refused.
    """
    if not mount.image_sub_path:
        return str(root)
    inside = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root / mount.image_sub_path))
    if not target.is_relative_to(inside):
        raise InvalidArgument(
            f"mount at {mount.container_path!r}: image_sub_path {mount.image_sub_path!r} "
            f"leads outside image {mount.image!r} through a symbolic link"
        )
    if not target.exists():
        raise NotFound(
            f"mount at {mount.container_path!r}: image_sub_path {mount.image_sub_path!r} "
            f"does not exist in image {mount.image!r}"
        )
    return str(target)


def _pod_userns(sandbox: Sandbox, config: ContainerConfig) -> UserNamespace | None:
    """The pod's own user namespace if it has one (POD mode), None for the host's.

    A container always runs in its pod's: a request for another one is refused rather
    than ignored (the kubelet repeats the pod's options, so they agree).
    """
    pod = sandbox.config.namespaces.userns
    pod_mode = pod.mode if pod is not None else NamespaceMode.NODE
    asked = config.security.namespaces.userns
    if asked is not None and (asked.mode != pod_mode or (
            asked.mode == NamespaceMode.POD and pod is not None
            and (asked.uids, asked.gids) != (pod.uids, pod.gids))):
        raise InvalidArgument(
            "the container asks for a user namespace other than its pod's (mode "
            f"{NamespaceMode(asked.mode).name}, pod {NamespaceMode(pod_mode).name}); a "
            "container shares its pod's: repeat the pod's userns_options or leave them unset")
    return pod if pod_mode == NamespaceMode.POD else None


def _user_namespace_paths(sandbox: Sandbox) -> dict[str, Any]:
    """PodPaths' user namespace fields: the pinned file and mappings of a POD-mode pod."""
    path = sandbox.namespace_paths.get("user", "")
    userns = sandbox.config.namespaces.userns
    if not path or userns is None:
        return {}
    return {"user_ns": path, "uid_mappings": list(userns.uids),
            "gid_mappings": list(userns.gids)}


def _validate(config: ContainerConfig) -> None:
    if not config.metadata.name:
        raise InvalidArgument("container metadata.name is required")
    if not config.image:
        raise InvalidArgument(f"container {config.metadata.name!r} names no image")
    paths = [m.container_path for m in config.mounts if m.image]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("two image volumes are mounted at the same container_path")
    for mount in config.mounts:
        sub = mount.image_sub_path
        if sub and (posixpath.isabs(sub) or ".." in sub.split("/") or "\0" in sub):
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: image_sub_path {sub!r} must be a "
                "relative path inside the image, without '..' or NUL"
            )
        if (mount.host_path and not posixpath.isabs(mount.host_path)) or "\0" in mount.host_path:
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: host_path {mount.host_path!r} must be "
                "an absolute path on the node, without NUL"
            )


def _log_path(sandbox: Sandbox, config: ContainerConfig) -> str:
    """The container's CRI log file: always beneath the pod's log_directory.

    An absolute log_path is joined beneath the directory too (as containerd's path join
    does), so no request can make conmon write a host file elsewhere.
    """
    requested = config.log_path
    if not requested:
        return ""
    directory = sandbox.config.log_directory
    if not directory:
        raise InvalidArgument(
            f"log_path {requested!r} needs the pod's log_directory, and the pod has none"
        )
    if "\0" in requested or ".." in Path(requested).parts:
        raise InvalidArgument(f"log_path {requested!r} must not hold '..' or NUL")
    return posixpath.join(directory, requested.lstrip("/"))


def _prepare_log(log_path: Path, log_directory: str) -> None:
    """Create the log's directories, refusing a path that a symlink leads out of the pod's."""
    inside = Path(os.path.realpath(log_directory))
    if not Path(os.path.realpath(log_path)).is_relative_to(inside):
        raise InvalidArgument(
            f"log path {str(log_path)!r} leads outside the pod's log_directory "
            f"{log_directory!r} through a symbolic link"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)


def _create_mount_sources(config: ContainerConfig) -> None:
    """Create the missing host directory of each bind mount, as containerd does.

    0755, each parent it needs too: the container's processes, whatever their user, must
    reach what they are given, and the daemon's own umask would make it root's alone.
    """
    for mount in config.mounts:
        source = mount.host_path  # absolute and without NUL: checked by _validate
        if not source or os.path.lexists(source):
            continue
        try:
            public_dir(Path(source))
        except OSError as error:
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: host_path {source!r} does not exist and "
                f"cannot be created: {error.strerror}"
            ) from None


def _write_bundle(bundle: Path, spec: dict[str, Any], log_path: str, log_directory: str) -> None:
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(bundle / "config.json", json.dumps(spec, indent=1).encode(), mode=0o600)
    if log_path:
        _prepare_log(Path(log_path), log_directory)


def _remove_files(bundle: Path, exit_file: Path, socket_link: Path) -> None:
    shutil.rmtree(bundle, ignore_errors=True)
    exit_file.unlink(missing_ok=True)
    if socket_link.is_symlink() or socket_link.is_file():
        socket_link.unlink(missing_ok=True)
    elif socket_link.is_dir():
        shutil.rmtree(socket_link, ignore_errors=True)


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0
