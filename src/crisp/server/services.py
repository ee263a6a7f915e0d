"""The domain services one daemon runs, built once from the config and shared by the servicers.

This is crisp's composition root: the only place that knows which domain object needs which
other one. Servicers reach the services through it and never build their own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from crisp.config import LiveConfig
from crisp.filemodes import make_private
from crisp.images import ImageService
from crisp.network import NetworkManager
from crisp.pods import ImagesForPods, NetworkForPods, PodService, SnapshotsForPods
from crisp.pods.service import detect_cgroups
from crisp.state import DATABASE_FILES, DATABASE_NAME, Database, Settings
from crisp.streaming.front import LazyStreamingServer
from crisp.streaming.front import Settings as StreamingSettings
from crisp.streaming.relay import Attachable
from crisp.streaming.requests import AttachRequest, ExecRequest

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the servicers call into."""

    live: LiveConfig
    db: Database
    settings: Settings
    network: NetworkManager
    images: ImageService
    pods: PodService
    streaming: LazyStreamingServer

    @classmethod
    async def open(cls, live: LiveConfig) -> Services:
        """Open the state and build the domain services of a daemon about to serve."""
        config = live.current
        root = Path(config.root_dir)
        # The database holds every container's config and env: root's alone, also where an
        # older crisp left it readable.
        await asyncio.to_thread(make_private, root, DATABASE_FILES)
        db = await Database.open(root / DATABASE_NAME)
        settings = Settings(db)
        network = NetworkManager(live, root / "network", settings)
        await network.start()
        images = ImageService(live, db, root)
        await images.start()
        # Built once: the host's cgroup layout and driver (None, with the reason logged and
        # put in every pod call's error, where the configured driver cannot run here).
        cgroups, cgroups_problem = await detect_cgroups(live)
        pods = await PodService.open(live, db, ImagesForPods(images),
                                     SnapshotsForPods(images.snapshots), NetworkForPods(network),
                                     cgroups, cgroups_problem)
        # Networks set up for pods whose record was never saved (a crash in RunPodSandbox).
        await network.release_strays({sandbox.id for sandbox in pods.list_sandboxes()})
        streaming_config = config.streaming
        streaming = LazyStreamingServer(StreamingSettings(
            address=streaming_config.address, port=streaming_config.port,
            token_ttl=streaming_config.token_ttl,
            tls_cert_file=streaming_config.tls_cert_file,
            tls_key_file=streaming_config.tls_key_file,
        ), PodsForStreaming(pods))
        return cls(live=live, db=db, settings=settings, network=network, images=images,
                   pods=pods, streaming=streaming)

    async def close(self) -> None:
        await self.streaming.stop()
        await self.pods.close()
        await self.images.close()
        await self.db.close()


class PodsForStreaming:
    """The streaming server's backend: processes of the pods service to relay."""

    def __init__(self, pods: PodService):
        self.pods = pods

    async def exec(self, request: ExecRequest) -> Attachable:
        return await self.pods.start_exec(
            request.container_id, list(request.cmd), tty=request.tty, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr)

    async def attach(self, request: AttachRequest) -> Attachable:
        return await self.pods.attach(request.container_id, stdin=request.stdin)

    async def port_connect(self, sandbox_id: str, port: int
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.pods.port_connect(sandbox_id, port)
