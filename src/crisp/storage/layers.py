"""Unpacked layers: one overlay lower directory per chain id, unpacked once, shared by all.

Layout under ``<root>/layers``: ``<chain-hex>/diff`` is the unpacked layer, ``l/<short>`` a
symlink to it whose short name keeps deep lowerdir mount options under the page-size limit.
A layer is unpacked into ``tmp-*``, synced to disk (one syncfs) and renamed into place, and
only then recorded, so a crash never leaves a recorded layer half there; leftovers of ``tmp-*``
and directories without a record are swept at start-up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from crisp.digest import sha256
from crisp.durable import fsync_dir, syncfs
from crisp.failpoints import failpoint
from crisp.filemodes import public_dir
from crisp.state import Database, Records

log = logging.getLogger(__name__)

SHORT_NAME_LENGTH = 20
_T = TypeVar("_T")


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The OCI chain ids of a layer stack, bottom first: each names a layer and all below it."""
    result: list[str] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            text = f"{result[-1]} {diff_id}".encode()
            result.append("sha256:" + sha256(text).hexdigest())
    return result


def short_name(chain_id: str) -> str:
    """A stable, short, filesystem-safe name for a chain id (for the ``l/`` links)."""
    raw = sha256(chain_id.encode()).digest()
    return base64.b32encode(raw).decode().rstrip("=")[:SHORT_NAME_LENGTH]


class SourceInterrupted(Exception):
    """The stream a layer was being unpacked from ended without the whole, verified blob (a
    download that stopped or started over): unpack it again from the stored blob."""


@dataclass(frozen=True)
class LayerInfo:
    """One unpacked layer as recorded in the database."""

    chain_id: str
    parent: str | None
    diff_id: str
    size: int
    inodes: int


class LayerStore:
    """Unpacks layers once per chain id and hands out their directories."""

    def __init__(self, root: Path, db: Database):
        self.root = root / "layers"
        self.links = self.root / "l"
        self.records = Records(db, "layers")
        self._inflight: dict[str, asyncio.Task[LayerInfo]] = {}

    def setup(self) -> None:
        """Create the directories and sweep half-unpacked leftovers of a crash (blocking)."""
        self.links.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith("tmp-"):
                log.info("removing half-unpacked layer %s left by a crash", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def directory(self, chain_id: str) -> Path:
        """The layer's own ``diff`` directory."""
        return self.root / chain_id.removeprefix("sha256:") / "diff"

    def link(self, chain_id: str) -> Path:
        """The short symlink to the layer's ``diff`` directory."""
        return self.links / short_name(chain_id)

    async def get(self, chain_id: str) -> LayerInfo | None:
        doc = await self.records.get(chain_id)
        if doc is None:
            return None
        return LayerInfo(chain_id, doc.get("parent"), doc["diff_id"], doc["size"], doc["inodes"])

    async def all(self) -> list[LayerInfo]:
        return [
            LayerInfo(d["chain_id"], d.get("parent"), d["diff_id"], d["size"], d["inodes"])
            for d in await self.records.find()
        ]

    async def ensure(
        self, chain_id: str, parent: str | None, diff_id: str, blob: Path | io.RawIOBase
    ) -> LayerInfo:
        """Unpack ``blob`` as ``chain_id`` unless it is there; concurrent callers share it.

        ``blob`` is the blob's file, or a stream of it (a download still arriving, read in a
        thread of its own since it may wait long for bytes), which this closes when done.
        """
        existing = await self.get(chain_id)
        if existing is not None and self.directory(chain_id).is_dir():
            _close(blob)
            return existing
        task = self._inflight.get(chain_id)
        if task is None:
            task = asyncio.create_task(self._unpack(chain_id, parent, diff_id, blob))
            self._inflight[chain_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(chain_id, None))
        else:
            _close(blob)
        try:
            return await asyncio.shield(task)
        except SourceInterrupted:
            if not isinstance(blob, Path):
                raise
            # we joined an unpack that read a download which then started over; the blob is
            # complete now, and the failed unpack is no longer in flight
            return await self.ensure(chain_id, parent, diff_id, blob)

    async def settle(self) -> None:
        """Wait until no unpack runs (a failed pull waits so that it leaves no staging dirs)."""
        while self._inflight:
            await asyncio.wait(list(self._inflight.values()))

    async def _unpack(
        self, chain_id: str, parent: str | None, diff_id: str, blob: Path | io.RawIOBase
    ) -> LayerInfo:
        if isinstance(blob, Path):
            result = await asyncio.to_thread(self._unpack_blocking, chain_id, diff_id, blob)
        else:
            # not the default executor: a stream waits for the network, and enough waiting
            # streams would starve the downloads' own writes of its threads
            try:
                result = await _in_own_thread(self._unpack_blocking, chain_id, diff_id, blob)
            finally:
                _close(blob)
        failpoint("layer.unpacked")  # on disk, not yet recorded: a restart must redo it
        info = LayerInfo(chain_id, parent, diff_id, result[0], result[1])
        try:
            await self.records.put(
                chain_id,
                {"chain_id": chain_id, "parent": parent, "diff_id": diff_id,
                 "size": info.size, "inodes": info.inodes},
                parent=parent,
            )
        except BaseException:
            # no record (a full disk, say): the directory would be an orphan taking space
            await asyncio.shield(asyncio.to_thread(self._remove_files, chain_id))
            raise
        return info

    def _unpack_blocking(self, chain_id: str, diff_id: str,
                         blob: Path | io.RawIOBase) -> tuple[int, int]:
        final = self.directory(chain_id).parent
        staging = Path(tempfile.mkdtemp(prefix="tmp-", dir=self.root))
        try:
            diff = staging / "diff"
            public_dir(diff)  # a layer without a "./" entry shows it as a directory's mode
            from crisp.storage.unpack import unpack_layer  # tarfile only where layers unpack

            (staging / "link").write_text(short_name(chain_id))
            started = time.monotonic()
            times: list[float] = []

            def sync() -> None:
                # the files must be on disk before the record says the layer is ready: a
                # power loss after it must not leave a recorded layer with empty or missing
                # files. Called when the last file is written, so that it overlaps the
                # verification of a blob still arriving (a layer that fails it goes anyway).
                times.append(time.monotonic())
                syncfs(staging)
                times.append(time.monotonic())

            result = unpack_layer(blob, diff, diff_id, written=sync)
            log.debug("layer %s: extract %.3fs, syncfs %.3fs, verified %.3fs later", chain_id,
                      times[0] - started, times[1] - times[0], time.monotonic() - times[1])
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        link = self.link(chain_id)
        try:
            if not link.is_symlink():
                tmp_link = self.links / f".{link.name}.tmp"
                tmp_link.unlink(missing_ok=True)
                tmp_link.symlink_to(f"../{final.name}/diff")
                os.rename(tmp_link, link)
            fsync_dir(self.root)
        except BaseException:
            self._remove_files(chain_id)
            raise
        return result.size, result.inodes

    async def remove(self, chain_id: str) -> None:
        """Delete the layer's record, then its directory and link (a crash in between leaks
        only an unreferenced directory, which :meth:`sweep_orphans` removes)."""
        await self.records.delete(chain_id)
        await asyncio.to_thread(self._remove_files, chain_id)

    def _remove_files(self, chain_id: str) -> None:
        self.link(chain_id).unlink(missing_ok=True)
        directory = self.directory(chain_id).parent
        if directory.exists():
            doomed = self.root / f"tmp-rm-{directory.name}"
            os.rename(directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    async def sweep_orphans(self) -> int:
        """Remove layer directories that have no record (left by a crash); return how many."""
        known = {info.chain_id.removeprefix("sha256:") for info in await self.all()}

        def sweep() -> int:
            removed = 0
            for entry in self.root.iterdir():
                if not _is_layer_dir_name(entry.name):
                    continue
                if entry.name not in known:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            for link in self.links.iterdir():
                if not link.exists():
                    link.unlink(missing_ok=True)
            return removed

        return await asyncio.to_thread(sweep)



def _close(blob: Path | io.RawIOBase) -> None:
    if not isinstance(blob, Path):
        blob.close()


async def _in_own_thread(function: Callable[..., _T], *args: object) -> _T:
    """Run ``function`` in a new thread and wait for it (it runs to its end even if the
    waiter is cancelled)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def hand_over(outcome: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as error:
            hand_over(functools.partial(future.set_exception, error))
        else:
            hand_over(functools.partial(future.set_result, result))

    threading.Thread(target=run, name="crisp-unpack", daemon=True).start()
    return await future


def _is_layer_dir_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
