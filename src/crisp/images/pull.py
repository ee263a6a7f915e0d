"""Pulling one image: resolve the manifest, fetch config and layers, unpack, record.

Layers download in parallel (``images.max_concurrent_downloads``) and each is unpacked while
its bytes arrive (or, with ``images.unpack_while_downloading`` off, once its blob is complete);
it is recorded only after its blob verified. Blobs and layers other pulls already fetch are
waited for, not fetched twice. The image record is written last, in one transaction, so a
failed pull leaves at most verified blobs and complete layers that garbage collection removes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from crisp.config import LiveConfig
from crisp.errors import CrispError, DeadlineExceeded, InvalidArgument
from crisp.images.auth import Credentials
from crisp.images.content import ContentStore, DigestMismatch, Ingest, IngestInterrupted
from crisp.images.fetcher import HelperGone, RegistryHelper, RemoteRepository
from crisp.images.manifest import (
    Descriptor,
    Index,
    Manifest,
    parse_config,
    parse_manifest,
    select_platform,
)
from crisp.images.model import Image, LayerRef, NameUnresolved
from crisp.images.progress import PullProgress
from crisp.images.reference import Reference
from crisp.storage import LayerInfo, LayerStore, chain_ids

log = logging.getLogger(__name__)

PROGRESS_LOG_INTERVAL = 5.0


class Puller:
    def __init__(self, live: LiveConfig, client: RegistryHelper, content: ContentStore,
                 layers: LayerStore):
        self.live = live
        self.client = client
        self.content = content
        self.layers = layers
        self.active: dict[int, PullProgress] = {}

    async def pull(self, reference: Reference, credentials: Credentials | None) -> Image:
        """Fetch and unpack ``reference``; return the image (not yet recorded)."""
        progress = PullProgress(str(reference))
        self.active[id(progress)] = progress
        reporter = asyncio.create_task(self._report(progress))
        timeout = self.live.current.images.pull_timeout or None
        try:
            async with asyncio.timeout(timeout):
                return await self._pull(reference, credentials, progress)
        except TimeoutError as error:
            raise DeadlineExceeded(
                f"pulling {reference} took longer than images.pull_timeout ({timeout:g}s)"
            ) from error
        finally:
            reporter.cancel()
            del self.active[id(progress)]

    async def _report(self, progress: PullProgress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_LOG_INTERVAL)
            log.info("%s", progress.summary())

    async def _pull(self, reference: Reference, credentials: Credentials | None,
                    progress: PullProgress) -> Image:
        try:
            repository = self.client.repository(reference, credentials)
            top = await repository.fetch_manifest(reference.object)
        except CrispError as error:
            raise NameUnresolved(error) from error
        document = parse_manifest(top.data, top.media_type)
        await self.content.put(top.digest, top.data)
        index_digest: str | None = None
        manifest_digest, manifest_type = top.digest, top.media_type
        if isinstance(document, Index):
            index_digest = top.digest
            chosen = select_platform(document)
            child = await repository.fetch_manifest(chosen.digest)
            document = parse_manifest(child.data, child.media_type)
            if not isinstance(document, Manifest):
                raise InvalidArgument(
                    f"index entry {chosen.digest} of {reference} is not a manifest"
                )
            await self.content.put(child.digest, child.data)
            manifest_digest, manifest_type = child.digest, child.media_type
        manifest = document
        config_path = await self._blob(repository, manifest.config, progress, log_it=False)
        config_data = await asyncio.to_thread(config_path.read_bytes)
        config = parse_config(config_data)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"{reference}: the manifest has {len(manifest.layers)} layers but the config "
                f"lists {len(config.diff_ids)} diff ids"
            )
        chains = chain_ids(config.diff_ids)
        for layer in manifest.layers:
            progress.add(layer.digest, layer.size)
        limit = asyncio.Semaphore(max(1, self.live.current.images.max_concurrent_downloads))
        parents: list[str | None] = [None, *chains[:-1]]
        try:
            async with asyncio.TaskGroup() as group:
                for layer, diff_id, chain, parent in zip(manifest.layers, config.diff_ids, chains,
                                                         parents, strict=True):
                    group.create_task(self._layer(repository, layer, diff_id, chain, parent,
                                                  limit, progress))
        except BaseExceptionGroup as group_error:
            await self.layers.settle()
            failure = _first_error(group_error)
            # a failed pull gives its space back: the partials of the layers its failure
            # cancelled go too (a pull that is itself cancelled keeps them, to resume, and so
            # does one whose registry helper died, as after a crash of crisp)
            if not isinstance(failure, HelperGone):
                await self.content.drop_partials(layer.digest for layer in manifest.layers)
            raise failure from None
        size = len(top.data) + manifest.config.size + sum(layer.size for layer in manifest.layers)
        return Image(
            id=manifest.config.digest,
            repo_tags=[],
            repo_digests=[],
            size=size,
            config=config,
            manifest_digest=manifest_digest,
            manifest_media_type=manifest_type,
            layers=[
                LayerRef(d.digest, d.media_type, d.size, diff_id, chain)
                for d, diff_id, chain in zip(manifest.layers, config.diff_ids, chains, strict=True)
            ],
            index_digest=index_digest,
            created_at=time.time(),
        )

    async def _layer(self, repository: RemoteRepository, descriptor: Descriptor, diff_id: str,
                     chain: str, parent: str | None, limit: asyncio.Semaphore,
                     progress: PullProgress) -> None:
        entry = progress.layers[descriptor.digest]
        if await self.layers.get(chain) is not None and self.content.has(descriptor.digest):
            entry.state, entry.done = "exists", descriptor.size
            return
        if (self.live.current.images.unpack_while_downloading
                and not self.content.has(descriptor.digest)):
            info, downloaded = await self._streamed_layer(repository, descriptor, diff_id, chain,
                                                          parent, limit, progress)
            entry.state = "done"
            # bench/pull.py reads the sizes and times of these lines for its rates
            log.info("layer %s of %s ready (%d bytes, %d unpacked while downloading, "
                     "ready %.3fs after its download)", descriptor.digest, progress.reference,
                     descriptor.size, info.size, time.monotonic() - downloaded)
            return
        async with limit:
            blob = await self._blob(repository, descriptor, progress)
        entry.state = "unpacking"
        started = time.monotonic()
        info = await self.layers.ensure(chain, parent, diff_id, blob)
        entry.state = "done"
        log.info("layer %s of %s ready (%d bytes, %d unpacked, unpacked in %.3fs)",
                 descriptor.digest, progress.reference, descriptor.size, info.size,
                 time.monotonic() - started)

    async def _streamed_layer(self, repository: RemoteRepository, descriptor: Descriptor,
                              diff_id: str, chain: str, parent: str | None,
                              limit: asyncio.Semaphore,
                              progress: PullProgress) -> tuple[LayerInfo, float]:
        """Download a layer and unpack it from the bytes as they arrive.

        The unpack reads the ingest file behind the download (:class:`IngestReader`) and
        gets its end of file only once the whole blob verified, so the layer is recorded only
        for the right bytes; a mismatch fails the unpack and the pull. If the download starts
        over (a resumed partial that did not verify, a server that ignores Range), or the blob
        was fetched by another pull meanwhile, the layer is unpacked from the stored blob.
        Returns the layer and when its download ended (time.monotonic).
        """
        unpack: asyncio.Task[LayerInfo] | None = None

        def begun(ingest: Ingest) -> None:
            nonlocal unpack
            if unpack is not None:
                return
            try:
                reader = ingest.follow()
            except OSError as error:  # out of descriptors, say: unpack after the download
                log.warning("cannot follow the download of %s (%s); unpacking it after",
                            descriptor.digest, error)
                return
            unpack = asyncio.create_task(self.layers.ensure(chain, parent, diff_id, reader))

        try:
            async with limit:  # the download's slot; the unpack's last writes and sync need none
                blob = await self._blob(repository, descriptor, progress, on_begin=begun)
        except BaseException:
            if unpack is not None:  # it ends (with IngestInterrupted) as the ingest closes
                unpack.add_done_callback(_consume)
            raise
        downloaded = time.monotonic()
        progress.layers[descriptor.digest].state = "unpacking"  # its last bytes, and the sync
        if unpack is not None:
            try:
                return await unpack, downloaded
            except IngestInterrupted:
                pass
        return await self.layers.ensure(chain, parent, diff_id, blob), downloaded

    async def _blob(self, repository: RemoteRepository, descriptor: Descriptor,
                    progress: PullProgress, log_it: bool = True,
                    on_begin: Callable[[Ingest], None] | None = None) -> Path:
        entry = progress.layers.get(descriptor.digest)
        if self.content.has(descriptor.digest):
            if entry:
                entry.done = descriptor.size
            return self.content.path(descriptor.digest)
        async with self.content.lock(descriptor.digest):
            if self.content.has(descriptor.digest):
                return self.content.path(descriptor.digest)
            if entry is not None:
                entry.state = "downloading"
            started = time.monotonic()
            # a partial download a crash left resumes; if the whole then does not verify, the
            # partial was bad (a power loss can leave zeros in it): discard it, fetch it all
            for resume in (True, False):
                ingest = await self.content.begin(descriptor.digest, descriptor.size,
                                                  resume=resume)
                if ingest.resumed_from:
                    log.info("resuming the download of %s at byte %d", descriptor.digest,
                             ingest.resumed_from)
                if on_begin is not None:
                    on_begin(ingest)

                def advance(n: int, ingest: Ingest = ingest) -> None:
                    if entry is not None:
                        entry.done = ingest.written  # also right after a resume or a restart

                try:
                    await repository.fetch_blob(descriptor, ingest, advance,
                                                self.live.current.images.pull_progress_timeout)
                    path = await ingest.commit()
                except DigestMismatch:
                    await ingest.abort()
                    if ingest.resumed_from and resume:
                        log.warning("resumed download of %s does not match its digest; "
                                    "downloading it again from the start", descriptor.digest)
                        continue
                    raise
                except (asyncio.CancelledError, HelperGone):
                    # the caller gave up, crisp stops or the registry helper died: the next
                    # pull resumes
                    await ingest.close()
                    raise
                except BaseException:
                    await ingest.abort()
                    raise
                break
            if log_it:
                log.info("downloaded %s of %s (%d bytes in %.3fs)", descriptor.digest,
                         progress.reference, descriptor.size, time.monotonic() - started)
            return path


def _consume(task: asyncio.Task[LayerInfo]) -> None:
    """Retrieve the outcome of an unpack nobody waits for any more (the pull failed)."""
    if not task.cancelled():
        task.exception()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real failure of a group of layer tasks (the others were cancelled by it)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]
