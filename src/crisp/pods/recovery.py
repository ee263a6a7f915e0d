"""Start-up reconciliation: finish or roll back what a crash interrupted, then match the records
with what is really there (runc state, conmon processes, exit files, namespace pins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from crisp.errors import CrispError
from crisp.pods.codec import from_document
from crisp.pods.containers import ContainerManager
from crisp.pods.host import mount_points, process_alive
from crisp.pods.model import Container, ContainerState, Sandbox, SandboxConfig, SandboxState
from crisp.pods.sandboxes import SandboxManager
from crisp.state import Operation

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, sandboxes: SandboxManager, containers: ContainerManager):
        self.sandboxes = sandboxes
        self.containers = containers
        self.ctx = containers.ctx

    async def run(self) -> None:
        for operation in await self.ctx.journal.pending():
            try:
                await self._resume(operation)
            except Exception:
                log.exception("could not finish interrupted %s of %s; it stays in the journal",
                              operation.kind, operation.object_id)
                continue
            await self.ctx.journal.finish(operation.id)
        for sandbox in list(self.ctx.store.sandboxes.values()):
            await self._reconcile_sandbox(sandbox)
        for container in list(self.ctx.store.containers.values()):
            await self._reconcile_container(container)
        await self._delete_strays()

    async def _resume(self, operation: Operation) -> None:
        store = self.ctx.store
        handler = str(operation.data.get("handler", ""))
        object_id = operation.object_id
        log.info("resuming interrupted %s of %s (at step %s)", operation.kind, object_id,
                 operation.step)
        if operation.kind == "container.create":
            if self.containers.find(object_id) is None:
                await self.containers.destroy(object_id, self.ctx.backend(handler))
        elif operation.kind == "container.remove":
            await self.containers.destroy(object_id, self.ctx.backend(handler))
            container = store.containers.get(object_id)
            if container is not None:
                await store.delete_container(container)
        elif operation.kind == "sandbox.run":
            if object_id in store.sandboxes:
                return
            sandbox = Sandbox(
                id=object_id,
                config=from_document(SandboxConfig, operation.data["config"]),
                runtime_handler=handler, created_at=0,
                namespace_paths=dict(operation.data.get("namespaces", {})),
                network_ready=bool(operation.data.get("namespaces")),
                cgroup_parent=str(operation.data.get("cgroup_parent", "")),
            )
            infra_id = str(operation.data.get("infra_id", ""))
            if infra_id:
                await self.containers.destroy(infra_id, self.ctx.backend(handler))
            await self.sandboxes.release(sandbox)
            await self.sandboxes.remove_files(object_id)
            await self.sandboxes.release_cgroup(sandbox)
        elif operation.kind == "sandbox.remove":
            removed = store.sandboxes.get(object_id)
            if removed is not None:
                for container in store.containers_of(object_id):
                    await self.containers.destroy(container.id,
                                                  self.ctx.backend(container.runtime_handler))
                    await store.delete_container(container)
                await self.sandboxes.release(removed)
                await self.sandboxes.remove_files(object_id)
                await self.sandboxes.release_cgroup(removed)
                await store.delete_sandbox(removed)

    async def _reconcile_sandbox(self, sandbox: Sandbox) -> None:
        if sandbox.infra is not None:
            await self._reconcile_container(sandbox.infra)
        if sandbox.state != SandboxState.READY:
            return
        pins = list(sandbox.namespace_paths.values())
        mounted = await asyncio.to_thread(_all_mounted, pins)
        if not mounted:
            log.warning("pod %s lost its namespaces (the host rebooted?); marking it not ready",
                        sandbox.id)
            sandbox.state = SandboxState.NOTREADY
            await self.ctx.store.save_sandbox(sandbox)

    async def _reconcile_container(self, container: Container) -> None:
        if container.state not in (ContainerState.CREATED, ContainerState.RUNNING):
            return
        if process_alive(container.monitor_pid, container.monitor_start_time):
            if container.state == ContainerState.CREATED:
                with contextlib.suppress(CrispError):
                    state = await self.ctx.backend(container.runtime_handler).runtime.state(
                        container.id)
                    if state is not None and state.status == "running":
                        # Started just before the crash, not yet recorded.
                        container.state = ContainerState.RUNNING
                        container.started_at = container.started_at or container.created_at
                        await self.containers.save(container)
            self.containers.watch(container)
        else:
            await self.containers.record_exit(container.id)

    async def _delete_strays(self) -> None:
        """runc containers crisp has no record of (a create rolled back mid-way)."""
        known = set(self.ctx.store.containers)
        known |= {s.infra.id for s in self.ctx.store.sandboxes.values() if s.infra is not None}
        for name in sorted(self.ctx.live.current.runtimes):
            try:
                runtime = self.ctx.backend(name).runtime
                ids = await runtime.list_ids()
            except CrispError as error:
                log.warning("cannot list containers of runtime handler %s: %s", name, error)
                continue
            for container_id in ids:
                if container_id not in known:
                    log.info("deleting stray runtime container %s", container_id)
                    await self.containers.destroy(container_id, self.ctx.backend(name))


def _all_mounted(paths: list[str]) -> bool:
    """Whether every path is a mount point, from one read of mountinfo."""
    points = mount_points()
    return all(path in points for path in paths)
