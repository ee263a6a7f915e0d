"""What the sandbox and container managers share: config, state, collaborators and paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from crisp.cgroups.driver import CgroupDriver, driver_for
from crisp.cgroups.host import CgroupHost, detect_host
from crisp.config import LiveConfig
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
    cgroup_host: CgroupHost | None = None

    @classmethod
    def build(cls, live: LiveConfig, store: PodStore, journal: Journal, images: ImageSource,
              rootfs: RootfsStore, network: PodNetwork | None) -> PodContext:
        config = live.current
        return cls(live=live, store=store, journal=journal,
                   layout=Layout(Path(config.root_dir), Path(config.run_dir)),
                   images=images, rootfs=rootfs, events=EventBus(), network=network,
                   cgroup_host=detect_host())

    def backend(self, handler: str) -> RuntimeBackend:
        return backend_for(self.live.current, handler)

    @property
    def cgroup_driver(self) -> CgroupDriver:
        return driver_for(self.live.current.cgroup_manager)


async def finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller (a gRPC call whose client left) is cancelled.

    A create or remove that stops halfway leaves mounts and processes behind; the client
    going away is no reason to stop it.
    """
    return await asyncio.shield(asyncio.ensure_future(work))
