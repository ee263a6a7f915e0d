"""Fitting crisp's image and storage services to what the pod lifecycle needs (see ports.py)."""

from __future__ import annotations

from pathlib import Path

from crisp import network
from crisp.errors import NotFound
from crisp.images import Image, ImageService
from crisp.pods.model import ImageRuntimeConfig, NamespaceMode, Sandbox, UserNamespace
from crisp.storage import OwnerShift, SnapshotStore


class ImagesForPods:
    """An :class:`~crisp.pods.ports.ImageSource` backed by the image service."""

    def __init__(self, images: ImageService):
        self.images = images

    async def runtime_config(self, reference: str) -> ImageRuntimeConfig:
        return await self._config(reference, await self.images.resolve(reference))

    async def ensure(self, reference: str) -> ImageRuntimeConfig:
        try:
            image = await self.images.resolve(reference)
        except NotFound:
            image = await self.images.pull(reference)
        return await self._config(reference, image)

    async def _config(self, reference: str, image: Image) -> ImageRuntimeConfig:
        config = image.config
        return ImageRuntimeConfig(
            id=image.id,
            reference=reference,
            repo_digest=image.repo_digests[0] if image.repo_digests else "",
            user=config.user,
            env=list(config.env),
            entrypoint=list(config.entrypoint),
            cmd=list(config.cmd),
            working_dir=config.working_dir,
            stop_signal=config.stop_signal,
            lower_dirs=[str(path) for path in await self.images.lower_dirs(image)],
        )


class SnapshotsForPods:
    """A :class:`~crisp.pods.ports.RootfsStore` backed by the snapshot store."""

    def __init__(self, snapshots: SnapshotStore):
        self.snapshots = snapshots

    async def prepare(self, key: str, lower_dirs: list[str],
                      userns: UserNamespace | None = None) -> Path:
        shift = None
        if userns is not None and userns.mode == NamespaceMode.POD:
            shift = OwnerShift(
                uids=tuple((m.container_id, m.host_id, m.length) for m in userns.uids),
                gids=tuple((m.container_id, m.host_id, m.length) for m in userns.gids))
        return await self.snapshots.prepare(key, [Path(d) for d in lower_dirs], shift)

    async def unmount(self, key: str) -> None:
        await self.snapshots.unmount(key)

    async def remove(self, key: str) -> None:
        await self.snapshots.remove(key)

    async def usage(self, key: str) -> tuple[int, int]:
        return await self.snapshots.usage(key)

    async def usages(self, keys: list[str], max_age: float) -> dict[str, tuple[int, int]]:
        return await self.snapshots.usages(keys, max_age)

    async def keys(self) -> list[str]:
        return await self.snapshots.keys()


class NetworkForPods:
    """A :class:`~crisp.pods.ports.PodNetwork` backed by the CNI network manager."""

    def __init__(self, manager: network.NetworkManager):
        self.manager = manager

    async def setup(self, sandbox: Sandbox, netns_path: str) -> list[str]:
        config = sandbox.config
        meta = config.metadata
        mappings = [
            # CRI lists every container port; only those with a hostPort are forwarded.
            network.PortMapping(host_port=m.host_port, container_port=m.container_port,
                                protocol=network.parse_protocol(m.protocol), host_ip=m.host_ip)
            for m in config.port_mappings if m.host_port > 0
        ]
        dns = None if config.dns is None else network.DNSConfig(
            tuple(config.dns.servers), tuple(config.dns.searches), tuple(config.dns.options))
        attached = await self.manager.setup(
            sandbox.id, netns_path, network.PodRef(meta.name, meta.namespace, meta.uid),
            mappings, dns, network.bandwidth_from_annotations(config.annotations),
        )
        return list(attached.ips)

    async def teardown(self, sandbox: Sandbox, netns_path: str) -> None:
        await self.manager.teardown(sandbox.id, netns_path or None)
