"""The pods service the CRI servicers call: sandboxes, containers, exec, logs and events."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, KeysView
from operator import attrgetter
from typing import Any, TypeVar

from crisp.cgroups import CgroupService
from crisp.cgroups.resources import pod_resources
from crisp.config import LiveConfig
from crisp.errors import FailedPrecondition, InvalidArgument, NotFound
from crisp.oci.handlers import handler_problems
from crisp.pods.attach import ConmonAttach
from crisp.pods.codec import to_document
from crisp.pods.containers import ContainerManager, pod_cgroup_parent
from crisp.pods.context import PodContext, finish_even_if_cancelled
from crisp.pods.events import LifecycleEvent
from crisp.pods.execstream import ExecProcess
from crisp.pods.execsync import ExecResult, exec_sync
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerState,
    Resources,
    Sandbox,
    SandboxConfig,
    SandboxState,
    labels_match,
)
from crisp.pods.portforward import connect_in_namespace
from crisp.pods.ports import ImageSource, PodNetwork, RootfsStore
from crisp.pods.recovery import Recovery
from crisp.pods.sandboxes import SandboxManager
from crisp.pods.stats import (
    POLLED_CGROUPS_MAX_AGE_SECONDS,
    POLLED_LAYERS_MAX_AGE_SECONDS,
    ContainerUsage,
    PodUsage,
    UsageReader,
)
from crisp.pods.store import PodStore
from crisp.state import Database, Journal

T = TypeVar("T")
log = logging.getLogger(__name__)


class PodService:
    """Owns every pod sandbox and container of the daemon."""

    def __init__(self, ctx: PodContext):
        self.ctx = ctx
        self.containers = ContainerManager(ctx)
        self.sandboxes = SandboxManager(ctx, self.containers)
        self.usage = UsageReader(ctx, self.containers)

    @classmethod
    async def open(cls, live: LiveConfig, db: Database, images: ImageSource,
                   rootfs: RootfsStore, network: PodNetwork | None = None,
                   cgroups: CgroupService | None = None,
                   cgroups_problem: str = "") -> PodService:
        """Load the records and reconcile them with the host (crash recovery).

        ``cgroups`` is the daemon's cgroup service, or None with ``cgroups_problem`` saying why
        the configured driver cannot run here (pods are then refused with that reason); given
        neither, the service detects them itself.
        """
        store = PodStore(db)
        await store.load()
        if cgroups is None and not cgroups_problem:
            cgroups, cgroups_problem = await detect_cgroups(live)
        service = cls(PodContext.build(live, store, Journal(db), images, rootfs, network,
                                       cgroups, cgroups_problem))
        await Recovery(service.sandboxes, service.containers).run()
        return service

    async def close(self) -> None:
        """Stop watching; containers and their monitors keep running."""
        self.ctx.events.close()
        await self.containers.watcher.close()

    def readiness(self) -> tuple[bool, str, str]:
        """Whether pods can run here: (ready, reason, message) for the RuntimeReady condition."""
        config = self.ctx.live.current
        problems = handler_problems(config.default_runtime, config.runtime(""))
        reason = "RuntimeBinaryMissing" if problems else ""
        if self.ctx.cgroups_problem:
            problems.append(self.ctx.cgroups_problem)
            reason = reason or "CgroupDriverUnavailable"
        return not problems, reason, "; ".join(problems)

    # Sandboxes ---------------------------------------------------------------------------

    async def run_sandbox(self, config: SandboxConfig, runtime_handler: str) -> Sandbox:
        return await finish_even_if_cancelled(self.sandboxes.run(config, runtime_handler))

    async def stop_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._maybe_sandbox(sandbox_id)
        if sandbox is not None:
            await finish_even_if_cancelled(self.sandboxes.stop(sandbox.id))

    async def remove_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._maybe_sandbox(sandbox_id)
        if sandbox is not None:
            await finish_even_if_cancelled(self.sandboxes.remove(sandbox.id))

    def sandbox(self, sandbox_id: str) -> Sandbox:
        sandbox = self._maybe_sandbox(sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} does not exist")
        return sandbox

    def list_sandboxes(self, id_prefix: str = "", state: SandboxState | None = None,
                       labels: dict[str, str] | None = None) -> list[Sandbox]:
        return _listed(self.ctx.store.sandboxes.values(), id_prefix, state, labels)

    def sandbox_ids(self) -> KeysView[str]:
        """The id of every sandbox there is (a live view, not a copy)."""
        return self.ctx.store.sandboxes.keys()

    def container_ids(self) -> KeysView[str]:
        """The id of every container there is (a live view, not a copy)."""
        return self.ctx.store.containers.keys()

    def image_volume_users(self, image_id: str) -> list[str]:
        """Containers that mount ``image_id`` as an image volume (RemoveImage refuses then)."""
        return self.containers.image_volume_users(image_id)

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return self.ctx.store.containers_of(sandbox_id)

    def sandbox_info(self, sandbox: Sandbox) -> dict[str, str]:
        """The verbose ``info`` of PodSandboxStatus: one JSON document under "info"."""
        info: dict[str, Any] = {
            "pid": sandbox.infra.pid if sandbox.infra is not None else 0,
            "runtimeHandler": sandbox.runtime_handler,
            "namespaces": sandbox.namespace_paths,
            "podDir": sandbox.pod_dir,
            "shm": sandbox.shm_path,
            "infraContainerID": sandbox.infra.id if sandbox.infra is not None else "",
            "config": _jsonable(sandbox.config),
        }
        return {"info": json.dumps(info, sort_keys=True)}

    # Containers --------------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> Container:
        sandbox = self.sandbox(sandbox_id)
        return await finish_even_if_cancelled(self.containers.create(sandbox.id, config))

    async def start_container(self, container_id: str) -> Container:
        container = self.container(container_id)
        return await finish_even_if_cancelled(self.containers.start(container.id))

    async def stop_container(self, container_id: str, grace: float) -> None:
        """The stop signal, then SIGKILL after ``grace`` seconds; an unknown id is fine."""
        container = self._maybe_container(container_id)
        if container is not None:
            await finish_even_if_cancelled(self.containers.stop(container.id, grace))

    async def remove_container(self, container_id: str) -> None:
        container = self._maybe_container(container_id)
        if container is not None:
            await finish_even_if_cancelled(self.containers.remove(container.id))

    def container(self, container_id: str) -> Container:
        container = self._maybe_container(container_id)
        if container is None:
            raise NotFound(f"container {container_id!r} does not exist")
        return container

    def list_containers(self, id_prefix: str = "", state: ContainerState | None = None,
                        sandbox_id: str = "",
                        labels: dict[str, str] | None = None) -> list[Container]:
        found: Iterable[Container] = self.ctx.store.containers.values()
        if sandbox_id:
            found = (c for c in found if c.sandbox_id.startswith(sandbox_id))
        return _listed(found, id_prefix, state, labels)

    def container_info(self, container: Container) -> dict[str, str]:
        """The verbose ``info`` of ContainerStatus: one JSON document under "info"."""
        info: dict[str, Any] = {
            "pid": container.pid if container.state == ContainerState.RUNNING else 0,
            "sandboxID": container.sandbox_id,
            "runtimeHandler": container.runtime_handler,
            "bundle": container.bundle,
            "rootfs": container.rootfs,
            "monitorPid": container.monitor_pid,
            "config": _jsonable(container.config),
        }
        return {"info": json.dumps(info, sort_keys=True)}

    async def exec_sync(self, container_id: str, argv: list[str], seconds: float) -> ExecResult:
        """Run ``argv`` in the container; DeadlineExceeded after ``seconds`` (0: no limit)."""
        container = self.container(container_id)
        runtime = self.ctx.backend(container.runtime_handler).runtime
        return await exec_sync(runtime, container, argv, seconds)

    def running_container(self, container_id: str) -> Container:
        """The container, which must be running (for Exec and Attach)."""
        container = self.container(container_id)
        if container.state != ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state}: exec and attach need a "
                "running container")
        return container

    async def start_exec(self, container_id: str, argv: list[str], *, tty: bool, stdin: bool,
                         stdout: bool, stderr: bool) -> ExecProcess:
        """Start ``argv`` in the container with its stdio for the streaming server to relay."""
        container = self.running_container(container_id)
        runtime = self.ctx.backend(container.runtime_handler).runtime
        return await ExecProcess.start(runtime, container, argv, tty=tty, stdin=stdin,
                                       stdout=stdout, stderr=stderr)

    async def attach(self, container_id: str, *, stdin: bool) -> ConmonAttach:
        """Connect to the container's own stdio (stdin only if it was created with one)."""
        container = self.running_container(container_id)
        return await ConmonAttach.connect(self.ctx.layout.files(container.id),
                                          stdin=stdin and container.config.stdin)

    async def port_connect(self, sandbox_id: str, port: int
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` on localhost inside the pod's network namespace."""
        sandbox = self.sandbox(sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        return await connect_in_namespace(sandbox.namespace_paths.get("net", ""), port)

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        container = self.container(container_id)
        await finish_even_if_cancelled(self.containers.update_resources(container.id, resources))

    async def update_sandbox_resources(self, sandbox_id: str, overhead: Resources,
                                       resources: Resources) -> None:
        """Set the pod cgroup to the containers' sum plus overhead (in-place pod resize)."""
        sandbox = self.sandbox(sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(
                f"pod sandbox {sandbox.id} is not ready: a stopped pod's cgroup is gone"
            )
        for what, value in (("overhead", overhead), ("resources", resources)):
            if value.oom_score_adj:
                raise InvalidArgument(
                    f"{what}.oom_score_adj {value.oom_score_adj} cannot apply to a pod "
                    "cgroup: it is a per-process setting; leave it 0"
                )
        await self.ctx.cgroups.update_pod_resources(pod_cgroup_parent(sandbox),
                                                    pod_resources(overhead, resources))

    async def container_resources(self, container: Container) -> Resources:
        """The limits in force (read from the cgroup of a running container)."""
        return await self.containers.resources_in_force(container)

    # Stats -------------------------------------------------------------------------------

    async def container_usage(self, container_id: str) -> ContainerUsage:
        (usage,) = await self.usage.containers_usage([self.container(container_id)])
        return usage

    async def containers_usage(self, id_prefix: str = "", sandbox_id: str = "",
                               labels: dict[str, str] | None = None) -> list[ContainerUsage]:
        """Usage of the containers the filter selects (as ListContainers filters)."""
        containers = self.list_containers(id_prefix=id_prefix, sandbox_id=sandbox_id,
                                          labels=labels)
        return await self.usage.containers_usage(
            containers, layers_max_age=POLLED_LAYERS_MAX_AGE_SECONDS,
            cgroups_max_age=POLLED_CGROUPS_MAX_AGE_SECONDS)

    async def sandbox_usage(self, sandbox_id: str) -> PodUsage:
        sandbox = self.sandbox(sandbox_id)
        return await self.usage.pod_usage(sandbox, self.containers_of(sandbox.id))

    async def sandboxes_usage(self, id_prefix: str = "",
                              labels: dict[str, str] | None = None,
                              detailed: bool = False) -> list[PodUsage]:
        """Usage of the pods the filter selects, their containers included.

        ``detailed`` adds what only the metrics report (see UsageReader.containers_usage).
        """
        sandboxes = self.list_sandboxes(id_prefix=id_prefix, labels=labels)
        # One pass over the containers, not one per pod (a hundred pods: 20,000 steps).
        by_pod: dict[str, list[Container]] = {s.id: [] for s in sandboxes}
        for container in self.ctx.store.containers.values():
            if (members := by_pod.get(container.sandbox_id)) is not None:
                members.append(container)
        return await self.usage.pods_usage([(s, by_pod[s.id]) for s in sandboxes],
                                           detailed, POLLED_LAYERS_MAX_AGE_SECONDS,
                                           POLLED_CGROUPS_MAX_AGE_SECONDS)

    async def reopen_log(self, container_id: str) -> None:
        await self.containers.reopen_log(self.container(container_id).id)

    def events(self) -> AsyncIterator[LifecycleEvent]:
        return self.ctx.events.subscribe()

    # Lookup by id or unique id prefix, as crictl users type them ---------------------------

    def _maybe_sandbox(self, id_or_prefix: str) -> Sandbox | None:
        return _lookup(self.ctx.store.sandboxes, id_or_prefix, "pod sandbox")

    def _maybe_container(self, id_or_prefix: str) -> Container | None:
        return _lookup(self.ctx.store.containers, id_or_prefix, "container")


async def detect_cgroups(live: LiveConfig) -> tuple[CgroupService | None, str]:
    """The cgroup service of the configured driver, or None and why the host cannot run it."""
    try:
        return await CgroupService.detect(live.current.cgroup_manager), ""
    except FailedPrecondition as error:
        log.error("pods cannot run: %s", error)
        return None, str(error)


_created_at = attrgetter("created_at")

Listed = TypeVar("Listed", Sandbox, Container)


def _listed(found: Iterable[Listed], id_prefix: str, state: object | None,
            labels: dict[str, str] | None) -> list[Listed]:
    """``found`` narrowed by the filters given, oldest first.

    The kubelet's relists filter nothing: only the filters asked for are run.
    """
    if id_prefix:
        found = (r for r in found if r.id.startswith(id_prefix))
    if state is not None:
        found = (r for r in found if r.state == state)
    if labels:
        found = (r for r in found if labels_match(r.config.labels, labels))
    return sorted(found, key=_created_at)


def _lookup(items: dict[str, T], key: str, what: str) -> T | None:
    if not key:
        raise InvalidArgument(f"a {what} id is required")
    if key in items:
        return items[key]
    matches = [value for item_id, value in items.items() if item_id.startswith(key)]
    if len(matches) > 1:
        raise InvalidArgument(f"{what} id prefix {key!r} is ambiguous; give more of the id")
    return matches[0] if matches else None


def _jsonable(value: Any) -> Any:
    return to_document(value)
