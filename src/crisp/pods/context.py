"""What the sandbox and container managers share: config, state, collaborators and paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from crisp.cgroups import CgroupDriver, CgroupHost, CgroupService
from crisp.config import LiveConfig
from crisp.errors import FailedPrecondition
from crisp.oci.backend import RuntimeBackend, backend_for
from crisp.pods.events import EventBus
from crisp.pods.layout import Layout
from crisp.pods.ports import ImageSource, PodNetwork, RootfsStore
from crisp.pods.store import PodStore
from crisp.state import Journal

T = TypeVar("T")


@dataclass
class PodContext:
    live: LiveConfig
    store: PodStore
    journal: Journal
    layout: Layout
    images: ImageSource
    rootfs: RootfsStore
    events: EventBus
    network: PodNetwork | None = None
    # None when the configured cgroup driver cannot run on this host (systemd asked for
    # where systemd is not init); ``cgroups_problem`` says why, and pods cannot run.
    cgroups_service: CgroupService | None = None
    cgroups_problem: str = ""

    @classmethod
    def build(cls, live: LiveConfig, store: PodStore, journal: Journal, images: ImageSource,
              rootfs: RootfsStore, network: PodNetwork | None,
              cgroups: CgroupService | None, cgroups_problem: str = "") -> PodContext:
        config = live.current
        return cls(live=live, store=store, journal=journal,
                   layout=Layout(Path(config.root_dir), Path(config.run_dir)),
                   images=images, rootfs=rootfs, events=EventBus(), network=network,
                   cgroups_service=cgroups, cgroups_problem=cgroups_problem)

    def backend(self, handler: str) -> RuntimeBackend:
        return backend_for(self.live.current, handler)

    @property
    def cgroups(self) -> CgroupService:
        """The cgroup service; FailedPrecondition naming the problem when there is none."""
        if self.cgroups_service is None:
            raise FailedPrecondition(self.cgroups_problem or "cgroups are not available")
        return self.cgroups_service

    @property
    def cgroup_host(self) -> CgroupHost | None:
        return self.cgroups_service.host if self.cgroups_service is not None else None

    @property
    def cgroup_driver(self) -> CgroupDriver:
        return self.cgroups.driver


async def finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller (a gRPC call whose client left) is cancelled.

    A create or remove that stops halfway leaves mounts and processes behind; the client
    going away is no reason to stop it.
    """
    return await asyncio.shield(asyncio.ensure_future(work))
