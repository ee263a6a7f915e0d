"""The content store: blobs named by their sha256 digest, verified while they stream in.

``<root>/content/blobs/sha256/<hex>`` is a complete, verified blob; ``ingest/<hex>`` is a
download in progress, kept across a crash so that the next pull resumes it. A blob becomes
visible only by an atomic rename after its size and digest matched and its data was fsynced,
so a reader never sees a partial or wrong blob. Hashing and writing run in a worker thread, a
megabyte at a time.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO

from crisp.durable import fsync_dir
from crisp.errors import InvalidArgument, NotFound
from crisp.images.reference import validate_digest
from crisp.keyedlocks import KeyedLocks
from crisp.storage.layers import SourceInterrupted

log = logging.getLogger(__name__)

_FLUSH_AT = 1 << 20
PARTIAL_MAX_AGE = 24 * 3600.0  # a partial download untouched this long is dropped at start-up


class DigestMismatch(InvalidArgument):
    """A blob's content does not match the digest or size it was asked for by."""


class IngestInterrupted(SourceInterrupted):
    """The download an :class:`IngestReader` follows ended without a verified blob, or
    started over: what was read is not (all of) the blob."""


class Ingest:
    """One blob being written: append chunks, then :meth:`commit` (verifies) or :meth:`abort`."""

    def __init__(self, store: ContentStore, digest: str, size: int | None):
        import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
        self.store = store
        self.digest = digest
        self.expected_size = size
        self.path = store.ingest_dir / digest.removeprefix("sha256:")
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.offset = 0
        self.resumed_from = 0  # bytes a crashed download left, reused by this one
        self._fd = -1
        # a write still running in its thread after a cancel must finish before the file
        # is closed, else it could land in whatever file reuses the descriptor number
        self._io = threading.Lock()
        # readers following the download (IngestReader) wait on this for bytes or the end
        self._progress = threading.Condition()
        self._generation = 0  # bumped when the file starts over
        self._ended: str | None = None  # "verified", or why the download ended without it

    def open(self, resume: bool) -> None:
        """Open the ingest file (blocking); with ``resume`` keep and rehash what is there."""
        import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
        self._hash = hashlib.sha256()
        self.offset = 0
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        if not resume:
            flags |= os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o644)
        if self.expected_size is not None and os.fstat(self._fd).st_size > self.expected_size:
            log.info("partial download of %s is longer than the blob; starting over", self.digest)
            os.ftruncate(self._fd, 0)
        while chunk := os.read(self._fd, _FLUSH_AT):
            self._hash.update(chunk)
            self.offset += len(chunk)
        self.resumed_from = self.offset

    async def restart(self) -> None:
        """Throw away what was written (the server ignored our Range request)."""
        self._pending.clear()
        self._pending_size = 0
        await asyncio.to_thread(self._truncate)

    def _truncate(self) -> None:
        with self._io:
            self._truncate_locked()

    def _truncate_locked(self) -> None:
        import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
        with self._progress:
            self._generation += 1  # before the bytes go: a reader must not take the new ones
            self._progress.notify_all()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hash = hashlib.sha256()
        self.offset = 0

    async def write(self, chunk: bytes) -> None:
        if self.expected_size is not None and self.written + len(chunk) > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} is larger than the {self.expected_size} bytes it should be"
            )
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _FLUSH_AT:
            await self.flush()

    @property
    def written(self) -> int:
        return self.offset + self._pending_size

    async def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        await asyncio.to_thread(self._write_blocking, data)

    def _write_blocking(self, data: bytes) -> None:
        with self._io:
            self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        with self._progress:
            self.offset += len(data)
            self._progress.notify_all()

    async def commit(self) -> Path:
        """Verify size and digest, then make the blob visible atomically; DigestMismatch if not."""
        await self.flush()
        return await asyncio.to_thread(self._commit_blocking)

    def _commit_blocking(self) -> Path:
        actual = "sha256:" + self._hash.hexdigest()
        if self.expected_size is not None and self.offset != self.expected_size:
            self._discard()
            raise DigestMismatch(
                f"blob {self.digest} has {self.offset} bytes, expected {self.expected_size}"
            )
        if actual != self.digest:
            self._discard()
            raise DigestMismatch(
                f"blob {self.digest} has the wrong content (its digest is {actual})"
            )
        started = time.monotonic()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        final = self.store.path(self.digest)
        os.rename(self.path, final)
        fsync_dir(final.parent)
        self._end("verified")
        log.debug("blob %s verified and on disk (fsync %.3fs)", self.digest,
                  time.monotonic() - started)
        return final

    def _end(self, how: str) -> None:
        with self._progress:
            if self._ended is None:
                self._ended = how
            self._progress.notify_all()

    def follow(self) -> IngestReader:
        """A reader of this blob while it downloads: it returns the bytes as they are written
        and the end of file only once the whole blob verified (see :class:`IngestReader`)."""
        return IngestReader(self)

    def _discard(self) -> None:
        self._end("discarded")
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.path.unlink(missing_ok=True)

    async def close(self) -> None:
        """Keep what was written (for a later pull to resume) and release the file."""
        self._pending.clear()
        self._pending_size = 0
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        self._end("stopped")
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    async def abort(self) -> None:
        """Remove the partial blob: nothing half-written stays behind."""
        self._pending.clear()
        await asyncio.to_thread(self._discard)


class IngestReader(io.RawIOBase):
    """Reads a blob from its ingest file while the download writes it (blocking).

    Bytes are returned as soon as they are in the file; the end of file comes only after the
    download's size and digest checked out, so a consumer that reads to the end has read
    exactly the verified blob. If the download fails, stops, or starts the file over (a
    server that ignores Range, a resumed partial that did not verify), reading raises
    :class:`IngestInterrupted`. The reader has its own descriptor: the commit's rename and an
    abort's unlink do not disturb it.
    """

    def __init__(self, ingest: Ingest):
        super().__init__()
        self._ingest = ingest
        self._generation = ingest._generation
        self._fd = os.open(ingest.path, os.O_RDONLY | os.O_CLOEXEC)
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        ingest = self._ingest
        while True:
            with ingest._progress:
                while True:
                    if ingest._generation != self._generation:
                        raise IngestInterrupted(f"the download of {ingest.digest} started over")
                    available = ingest.offset - self.position
                    if available > 0:
                        break
                    if ingest._ended == "verified":
                        return 0
                    if ingest._ended is not None:
                        raise IngestInterrupted(
                            f"the download of {ingest.digest} ended unverified ({ingest._ended})"
                        )
                    ingest._progress.wait()
            view = memoryview(buffer)[:min(len(buffer), available)]
            n = os.preadv(self._fd, [view], self.position)
            if n:  # 0: the file was cut meanwhile; the generation says so on the next turn
                self.position += n
                return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


class ContentStore:
    """Verified, content-addressed blobs on disk."""

    def __init__(self, root: Path):
        self.root = root / "content"
        self.blob_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self._locks = KeyedLocks()

    def setup(self) -> None:
        """Create the directories; keep partial downloads a crash cut off (the next pull
        resumes them), drop every other leftover (blocking)."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.ingest_dir.iterdir():
            if (_is_hex_digest(entry.name) and entry.is_file() and not entry.is_symlink()
                    and time.time() - entry.stat().st_mtime < PARTIAL_MAX_AGE):
                log.info("keeping partial download %s (%d bytes) to resume", entry.name,
                         entry.stat().st_size)
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        validate_digest(digest)
        return self.blob_dir / digest.removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def lock(self, digest: str) -> AbstractAsyncContextManager[None]:
        """Held while a blob is being fetched, so concurrent pulls fetch it only once."""
        return self._locks.hold(digest)

    async def drop_partials(self, digests: Iterable[str]) -> None:
        """Remove the partial downloads of ``digests`` that no pull is writing now."""
        idle = [self.ingest_dir / d.removeprefix("sha256:") for d in digests
                if not self._locks.busy(d)]

        def drop() -> None:
            for path in idle:
                path.unlink(missing_ok=True)

        await asyncio.to_thread(drop)

    async def read(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as error:
            raise NotFound(f"blob {digest} is not in the content store") from error

    async def begin(self, digest: str, size: int | None, *, resume: bool = False) -> Ingest:
        validate_digest(digest)
        ingest = Ingest(self, digest, size)
        await asyncio.to_thread(ingest.open, resume)
        return ingest

    async def put(self, digest: str, data: bytes, size: int | None = None) -> Path:
        """Store ``data`` as ``digest`` (verified); a blob already there is kept."""
        if self.has(digest):
            return self.path(digest)
        async with self.lock(digest):
            if self.has(digest):
                return self.path(digest)
            ingest = await self.begin(digest, size if size is not None else len(data))
            try:
                await ingest.write(data)
                return await ingest.commit()
            except BaseException:
                await ingest.abort()
                raise

    def put_file_blocking(
        self, source: BinaryIO, digest: str | None = None, size: int | None = None
    ) -> tuple[str, int]:
        """Copy ``source`` in as a blob (blocking): verified if ``digest`` is given, else named
        by what it hashes to. Returns the digest and size."""
        import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
        fd, temp_name = tempfile.mkstemp(prefix="put-", dir=self.ingest_dir)
        temp = Path(temp_name)
        try:
            hasher = hashlib.sha256()
            total = 0
            while chunk := source.read(_FLUSH_AT):
                hasher.update(chunk)
                total += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            actual = "sha256:" + hasher.hexdigest()
            if digest is not None and actual != digest:
                raise DigestMismatch(
                    f"blob {digest} has the wrong content (its digest is {actual})"
                )
            if size is not None and total != size:
                raise DigestMismatch(f"blob {actual} has {total} bytes, expected {size}")
            os.fsync(fd)
            final = self.path(actual)
            if not final.exists():
                os.rename(temp, final)
                fsync_dir(final.parent)
            return actual, total
        finally:
            os.close(fd)
            temp.unlink(missing_ok=True)

    def temp_path(self, prefix: str) -> Path:
        """A fresh file name in the ingest directory (swept at start-up, so crash-safe)."""
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.ingest_dir)
        os.close(fd)
        return Path(name)

    async def digests(self) -> set[str]:
        names = await asyncio.to_thread(os.listdir, self.blob_dir)
        return {f"sha256:{name}" for name in names}

    async def delete(self, digest: str) -> None:
        await asyncio.to_thread(self.path(digest).unlink, True)

    async def total_size(self) -> int:
        def total() -> int:
            return sum(e.stat().st_blocks * 512 for e in os.scandir(self.blob_dir))

        return await asyncio.to_thread(total)



def _is_hex_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
