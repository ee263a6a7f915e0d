"""The image service: what the CRI ImageService and crispctl ask of crisp's images.

It ties the registry client, the content store, the layer store and the image records
together, serializes work on one image name, and keeps pulls and garbage collection apart.
A pull or import that fills the disk is answered with RESOURCE_EXHAUSTED after what it stored
(blobs, layers) is collected again, so a failed attempt gives its space back at once.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crisp import heap
from crisp.config import LiveConfig
from crisp.diskspace import DiskFull, disk_full_from, is_disk_full
from crisp.errors import CrispError, InvalidArgument, NotFound
from crisp.images.auth import Credentials
from crisp.images.content import ContentStore
from crisp.images.endpoints import search_registries
from crisp.images.gate import PullGate
from crisp.images.gc import GarbageCollector, GcResult
from crisp.images.manifest import Manifest, parse_config
from crisp.images.model import Image, LayerRef, NameUnresolved
from crisp.images.progress import PullProgress
from crisp.images.reference import (
    Reference,
    looks_like_image_id,
    parse_reference,
    search_candidates,
)
from crisp.images.store import ImageStore
from crisp.keyedlocks import KeyedLocks
from crisp.state import Database
from crisp.storage import LayerStore, SnapshotStore, chain_ids, disk_usage

if TYPE_CHECKING:
    from crisp.images.pull import Puller

log = logging.getLogger(__name__)

IMAGE_USAGE_MAX_AGE_SECONDS = 60.0
"""How old the image figures may get before they are walked again in the background: every
change crisp makes (pull, import, garbage collection) drops them at once; this catches the
rest (a pull that failed half-way leaves blobs)."""
MIN_ID_PREFIX = 6
# how often a pull watcher looks at its pull, and how long it waits after the pull ends
WATCH_INTERVAL = 0.1
WATCH_LINGER = 1.0


@dataclass(frozen=True)
class FilesystemUsage:
    """Usage of one filesystem crisp stores things on (CRI's FilesystemUsage)."""

    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True)
class ImageFsUsage:
    images: FilesystemUsage
    containers: FilesystemUsage


class ImageService:
    """Pull, inspect, list, remove and collect images; hand out their layers for rootfs."""

    def __init__(self, live: LiveConfig, db: Database, root: Path,
                 snapshots: SnapshotStore | None = None):
        self.live = live
        self.db = db
        self.root = root
        self.content = ContentStore(root)
        self.layers = LayerStore(root, db)
        self.snapshots = snapshots or SnapshotStore(root, db)
        self.store = ImageStore(db, self._is_pinned)
        # The puller is built on the first pull; its registry client (aiohttp, about 13 MiB
        # of RSS) runs in the short-lived registry helper process (crisp.images.fetcher),
        # never in the daemon.
        self._puller: Puller | None = None
        self.gate = PullGate()
        self.collector = GarbageCollector(self.store, self.content, self.layers, self.snapshots,
                                          self.gate)
        self._name_locks = KeyedLocks()
        # (time.monotonic(), (bytes, inodes)) of blobs and layers; None after a change
        self._usage: tuple[float, tuple[int, int]] | None = None
        self._usage_epoch = 0  # counts changes, so a walk that saw an older store is dropped
        self._usage_refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create directories and clean what a crash left half-done."""
        await asyncio.to_thread(self._setup)
        removed = await self.layers.sweep_orphans()
        if removed:
            log.info("removed %d layer directories without records", removed)
        # finishes a removal or collection a crash interrupted
        await self.collect_garbage()

    def _setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.content.setup()
        self.layers.setup()
        self.snapshots.setup()

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            from crisp.images.fetcher import RegistryHelper
            from crisp.images.pull import Puller

            self._puller = Puller(self.live, RegistryHelper(self.live), self.content,
                                  self.layers)
        return self._puller

    async def close(self) -> None:
        if self._usage_refresh is not None:
            self._usage_refresh.cancel()
            await asyncio.gather(self._usage_refresh, return_exceptions=True)
        await self.snapshots.close()
        if self._puller is not None:
            await self._puller.client.close()

    def _is_pinned(self, names: list[str]) -> bool:
        pause = self.live.current.pod.pause_image
        try:
            pause_name = str(parse_reference(pause))
        except InvalidArgument:
            return False
        return pause_name in names

    def _lock(self, name: str) -> AbstractAsyncContextManager[None]:
        return self._name_locks.hold(name)

    async def pull(self, reference: str, auth: Credentials | None = None) -> Image:
        """Pull ``reference`` and record it under its tag and digest.

        A short name (no registry) is tried in each of ``registries.search`` in order: a
        registry that does not resolve the name passes it on to the next, and the first that
        resolves it decides, even if the pull then fails (a broken image is not replaced by
        another registry's image of the same name). If none resolves it, the error lists each.
        """
        candidates = search_candidates(reference,
                                       search_registries(self.live.current.registries))
        failures: builtins.list[tuple[Reference, CrispError]] = []
        for candidate in candidates:
            try:
                return await self._pull(candidate, auth)
            except NameUnresolved as unresolved:
                failures.append((candidate, unresolved.error))
                if len(failures) < len(candidates):
                    log.info("%s: %s; trying the next search registry", candidate,
                             unresolved.error)
        if len(failures) == 1:
            raise failures[0][1]
        last = failures[-1][1]
        kind = next(k for k in type(last).__mro__ if k.__module__ == CrispError.__module__)
        raise kind(
            f"{reference}: no search registry has it ("
            + "; ".join(f"{candidate}: {error}" for candidate, error in failures) + ")"
        ) from last

    async def _pull(self, ref: Reference, auth: Credentials | None) -> Image:
        try:
            async with self._lock(str(ref)), self.gate.pulling():
                image = await self.puller.pull(ref, auth)
                existing = await self.store.get(image.id)
                if existing is not None:
                    # the same config reached through another manifest: keep both manifests
                    image.extra_blobs = sorted(existing.blobs() - image.blobs())
                names = [ref.with_digest(image.index_digest or image.manifest_digest)]
                if ref.tag:
                    names.append(f"{ref.name}:{ref.tag}")
                await self.store.save(image, names)
        except Exception as error:
            if not is_disk_full(error):
                raise
            raise await self._out_of_space(error, f"pulling {ref}") from error
        log.info("pulled %s as %s", ref, image.id)
        self._images_changed()
        if self._puller is not None and not self._puller.active:
            await asyncio.to_thread(heap.trim)  # the last pull's buffers back to the kernel
        return await self.resolve(image.id)

    def progress(self) -> builtins.list[PullProgress]:
        """The pulls running now, with per-layer progress."""
        return list(self.puller.active.values()) if self._puller is not None else []

    async def watch_pull(self, reference: str, interval: float = WATCH_INTERVAL,
                         linger: float = WATCH_LINGER) -> AsyncIterator[PullProgress]:
        """Snapshots of the pull of ``reference``, each time it moves, until it ends.

        Waits for the pull to start: a client asks for this beside PullImage, and either may
        reach crisp first. A short name matches its pull in any search registry; the stream
        ends ``linger`` seconds after no pull of it runs (the next search registry's pull
        starts within that time when the first one fails).
        """
        names = {str(candidate) for candidate in search_candidates(
            reference, search_registries(self.live.current.registries))}
        last: tuple[tuple[str, int, str], ...] | None = None
        idle_since: float | None = None
        while True:
            current = next((pull for pull in self.progress() if pull.reference in names), None)
            if current is not None:
                idle_since = None
                position = current.position()
                if position != last:
                    last = position
                    yield current.snapshot()
            elif last is not None:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= linger:
                    return
            await asyncio.sleep(interval)

    async def status(self, reference: str) -> Image | None:
        """The image ``reference`` names (id, id prefix, name or digest ref), or None."""
        image_id = await self._find_id(reference)
        return None if image_id is None else await self.store.get(image_id)

    async def resolve(self, reference: str) -> Image:
        """Like :meth:`status`, but NotFound says which reference named nothing."""
        image = await self.status(reference)
        if image is None:
            raise NotFound(f"image {reference!r} is not present; pull it first")
        return image

    async def _find_id(self, reference: str) -> str | None:
        full_id = looks_like_image_id(reference)
        if full_id is not None and await self.store.records.get(full_id) is not None:
            return full_id
        try:
            candidates = search_candidates(
                reference, search_registries(self.live.current.registries))
        except InvalidArgument:
            candidates = []
        for ref in candidates:
            name = ref.with_digest(ref.digest) if ref.digest else f"{ref.name}:{ref.tag}"
            found = await self.store.id_for_name(name)
            if found is None and ref.digest:
                found = await self._id_for_manifest(ref.name, ref.digest)
            if found is not None:
                return found
        prefix = reference.removeprefix("sha256:")
        if len(prefix) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in prefix):
            matches = await self.store.ids_with_prefix(prefix)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidArgument(f"image id prefix {reference!r} is ambiguous")
        if not candidates:
            parse_reference(reference)  # raises the reason the reference is invalid
        return None

    async def _id_for_manifest(self, name: str, digest: str) -> str | None:
        """An image of repository ``name`` whose platform manifest is ``digest``."""
        for image in await self.store.all():
            if digest in image.blobs() and any(
                n.startswith(name + "@") or n.startswith(name + ":")
                for n in image.repo_tags + image.repo_digests
            ):
                return image.id
        return None

    async def list(self, filter_reference: str | None = None) -> builtins.list[Image]:
        """Every image, or only the one ``filter_reference`` names."""
        if filter_reference:
            image = await self.status(filter_reference)
            return [] if image is None else [image]
        return await self.store.all()

    async def remove(self, reference: str) -> None:
        """Remove the image with all its names; an image already gone is not an error.

        Layers that containers still stack stay until those containers are removed.
        """
        image_id = await self._find_id(reference)
        if image_id is None:
            return
        await self.store.delete(image_id)
        log.info("removed image %s (asked as %s)", image_id, reference)
        await self.collect_garbage()

    async def _out_of_space(self, error: BaseException, what: str) -> DiskFull:
        """The error for ``what`` running out of disk, after its leftovers were collected
        (so the free space it reports is what a retry would have)."""
        try:
            await self.collect_garbage()  # the blobs and layers of the failed attempt
        except Exception:  # the disk-full answer matters more than the clean-up's failure
            log.exception("collecting the leftovers of a failed image operation failed")
        return disk_full_from(error, self.root, what)

    async def import_archive(self, path: Path, base_name: str = "") -> builtins.list[Image]:
        """Import every image of a docker-save or OCI layout archive at ``path``."""
        from crisp.images import archive  # tarfile only for archives

        if base_name:
            parse_reference(base_name)
        try:
            async with self.gate.pulling():
                found = await asyncio.to_thread(archive.read_archive, path, self.content,
                                                base_name)
                images = []
                for entry in found:
                    images.append(await self._record(
                        entry.manifest, entry.manifest_digest, entry.manifest_media_type,
                        entry.manifest_size, entry.index_digest, entry.names))
        except Exception as error:
            if not is_disk_full(error):
                raise
            raise await self._out_of_space(error, "importing an image archive") from error
        self._images_changed()
        return [await self.resolve(image.id) for image in images]

    async def import_rootfs(self, tar_path: Path, name: str) -> Image:
        """Make a one-layer image named ``name`` from a tar of a directory (docker import)."""
        from crisp.images import archive  # tarfile only for archives

        reference = parse_reference(name)
        if reference.digest:
            raise InvalidArgument(f"an imported image is named by a tag, not a digest: {name!r}")
        try:
            async with self.gate.pulling():
                built = await asyncio.to_thread(archive.build_rootfs_image, tar_path,
                                                self.content)
                image = await self._record(built.manifest, built.manifest_digest,
                                           built.manifest.media_type, built.manifest_size,
                                           None, [str(reference)])
        except Exception as error:
            if not is_disk_full(error):
                raise
            raise await self._out_of_space(error, f"importing {reference}") from error
        self._images_changed()
        return await self.resolve(image.id)

    async def _record(self, manifest: Manifest, manifest_digest: str, media_type: str,
                      manifest_size: int, index_digest: str | None,
                      names: builtins.list[str]) -> Image:
        """Unpack the layers of a manifest whose blobs are stored, and record the image."""
        config = parse_config(await self.content.read(manifest.config.digest))
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image {manifest.config.digest} has {len(manifest.layers)} layers but its "
                f"config lists {len(config.diff_ids)}"
            )
        chains = chain_ids(config.diff_ids)
        parent: str | None = None
        for layer, diff_id, chain in zip(manifest.layers, config.diff_ids, chains, strict=True):
            await self.layers.ensure(chain, parent, diff_id, self.content.path(layer.digest))
            parent = chain
        image = Image(
            id=manifest.config.digest, repo_tags=[], repo_digests=[],
            size=manifest_size + manifest.config.size + sum(x.size for x in manifest.layers),
            config=config, manifest_digest=manifest_digest, manifest_media_type=media_type,
            layers=[LayerRef(d.digest, d.media_type, d.size, diff_id, chain)
                    for d, diff_id, chain in zip(manifest.layers, config.diff_ids, chains,
                                                 strict=True)],
            index_digest=index_digest, created_at=time.time(),
        )
        existing = await self.store.get(image.id)
        if existing is not None:
            image.extra_blobs = sorted(existing.blobs() - image.blobs())
        await self.store.save(image, names)
        return image

    async def export(self, references: builtins.list[str], out_path: Path) -> None:
        """Write the images ``references`` name to an archive at ``out_path``.

        A tag writes that name; an id or digest writes all of the image's tags.
        """
        from crisp.images import archive  # tarfile only for archives

        if not references:
            raise InvalidArgument("export needs at least one image reference")
        chosen: dict[str, tuple[Image, builtins.list[str]]] = {}
        for reference in references:
            image = await self.resolve(reference)
            names = chosen.setdefault(image.id, (image, []))[1]
            try:
                ref = parse_reference(reference)
                tagged = ref.tagged() if not ref.digest else None
            except InvalidArgument:
                tagged = None
            wanted = [tagged] if tagged in image.repo_tags else image.repo_tags
            names.extend(n for n in wanted if n and n not in names)
        await asyncio.to_thread(archive.write_archive, out_path, list(chosen.values()),
                                self.content)

    async def import_stream(self, chunks: AsyncIterator[bytes], *, rootfs_name: str = "",
                            base_name: str = "") -> builtins.list[Image]:
        """Import an archive (or, with ``rootfs_name``, a directory tar) sent in chunks."""
        if rootfs_name:
            parse_reference(rootfs_name)  # refuse a bad name before receiving the data
        spool = await asyncio.to_thread(self.content.temp_path, "import-")
        try:
            try:
                with await asyncio.to_thread(open, spool, "wb") as out:
                    async for chunk in chunks:
                        await asyncio.to_thread(out.write, chunk)
            except OSError as error:
                if not is_disk_full(error):
                    raise
                what = f"importing {rootfs_name}" if rootfs_name else "importing an image archive"
                raise disk_full_from(error, spool, what) from error
            if rootfs_name:
                return [await self.import_rootfs(spool, rootfs_name)]
            return await self.import_archive(spool, base_name)
        finally:
            await asyncio.to_thread(spool.unlink, True)

    async def export_stream(self, references: builtins.list[str],
                            chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """An archive of the images ``references`` name, in chunks."""
        spool = await asyncio.to_thread(self.content.temp_path, "export-")
        try:
            await self.export(references, spool)
            with await asyncio.to_thread(open, spool, "rb") as source:
                while chunk := await asyncio.to_thread(source.read, chunk_size):
                    yield chunk
        finally:
            await asyncio.to_thread(spool.unlink, True)

    async def collect_garbage(self) -> GcResult:
        """Remove blobs and layers that no image and no container references."""
        result = await self.collector.collect()
        self._images_changed()
        return result

    async def lower_dirs(self, image: Image) -> builtins.list[Path]:
        """The image's overlay lower directories, top-most first, for a container rootfs."""
        dirs = [self.layers.directory(chain) for chain in reversed(image.chain_ids)]
        return dirs

    async def config_document(self, image: Image) -> dict[str, Any]:
        """The image config as the registry served it (for verbose status)."""
        data = await self.content.read(image.id)
        document: dict[str, Any] = json.loads(data)
        return document

    async def filesystem_usage(self) -> ImageFsUsage:
        """Bytes and inodes used by images (blobs and layers) and by container layers.

        Answered from figures held in memory, as the kubelet asks every 10 s: layer sizes
        recorded at unpack, the blob store's walked once per change, and the writable layers'
        from the snapshot store's shared cache (refreshed in the background). Walking them
        on each call took 20-70 ms at 110 pods.
        """
        timestamp = time.time_ns()
        image_bytes, image_inodes = await self._image_usage()
        container_bytes, container_inodes = await self.snapshots.cached_total()
        return ImageFsUsage(
            FilesystemUsage(str(self.root), image_bytes, image_inodes, timestamp),
            FilesystemUsage(str(self.snapshots.root), container_bytes, container_inodes,
                            timestamp),
        )

    def _images_changed(self) -> None:
        self._usage = None
        self._usage_epoch += 1

    async def _image_usage(self) -> tuple[int, int]:
        held = self._usage
        if held is None:
            return await self._walk_images()
        if (time.monotonic() - held[0] >= IMAGE_USAGE_MAX_AGE_SECONDS
                and (self._usage_refresh is None or self._usage_refresh.done())):
            self._usage_refresh = asyncio.create_task(self._refresh_images())
        return held[1]

    async def _refresh_images(self) -> None:
        try:
            await self._walk_images()
        except Exception:  # the old figures stay; the next call tries again
            log.exception("measuring the image store's usage failed")

    async def _walk_images(self) -> tuple[int, int]:
        """Blobs walked, layers as recorded; kept unless the store changed meanwhile."""
        epoch, now = self._usage_epoch, time.monotonic()
        content_bytes, content_inodes = await asyncio.to_thread(disk_usage, self.content.root)
        layers = await self.layers.all()
        figures = (content_bytes + sum(layer.size for layer in layers),
                   content_inodes + sum(layer.inodes for layer in layers))
        if epoch == self._usage_epoch:
            self._usage = (now, figures)
        return figures
