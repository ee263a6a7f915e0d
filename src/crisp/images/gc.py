"""Garbage collection: blobs and layers no image and no container needs.

Roots are the image records (their manifests, configs and layer blobs, and their chain ids)
and the snapshots of containers (the layer directories they stack). Everything else in the
content and layer stores goes. Collection holds the pull gate alone, so a pull's fresh blobs
and layers, not yet referenced by a record, are never taken.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crisp.images.content import ContentStore
from crisp.images.gate import PullGate
from crisp.images.store import ImageStore
from crisp.storage import LayerStore, SnapshotStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcResult:
    blobs_removed: int
    layers_removed: int


class GarbageCollector:
    def __init__(self, images: ImageStore, content: ContentStore, layers: LayerStore,
                 snapshots: SnapshotStore, gate: PullGate):
        self.images = images
        self.content = content
        self.layers = layers
        self.snapshots = snapshots
        self.gate = gate

    async def collect(self) -> GcResult:
        async with self.gate.collecting():
            images = await self.images.all()
            keep_blobs: set[str] = set()
            keep_chains: set[str] = set()
            for image in images:
                keep_blobs |= image.blobs()
                keep_chains.update(image.chain_ids)
            for lower in await self.snapshots.referenced_layers():
                if lower.parent.parent == self.layers.root:
                    keep_chains.add("sha256:" + lower.parent.name)
            blobs_removed = 0
            for digest in await self.content.digests() - keep_blobs:
                await self.content.delete(digest)
                blobs_removed += 1
            layers_removed = 0
            for layer in await self.layers.all():
                if layer.chain_id not in keep_chains:
                    await self.layers.remove(layer.chain_id)
                    layers_removed += 1
        if blobs_removed or layers_removed:
            log.info("garbage collection removed %d blobs and %d layers", blobs_removed,
                     layers_removed)
        return GcResult(blobs_removed, layers_removed)
