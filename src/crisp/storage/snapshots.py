"""Container root filesystems: an overlay of image layers under a private writable layer.

``<root>/containers/<key>/`` holds ``upper`` and ``work`` (the writable layer) and ``rootfs``
(the mount point). Which layers a snapshot stacks is recorded before it is mounted, so that
removing the image or collecting garbage never takes a layer away from a container.

A container in a pod user namespace needs a rootfs its mapped root owns, and runc 1.1 has no
idmapped mounts. Such a snapshot is mounted with overlayfs ``metacopy=on`` and every entry is
chowned once, shifted into the mapping (:class:`OwnerShift`): the upper layer then holds
metadata-only copies (an inode and xattrs per file, no data), and goes with the snapshot.

runc mounts the rootfs from inside the user namespace, by path, where the pod's root has no
rights over crisp's 0700 directories. So such a snapshot's mount point is
``<root>/userns/<key>/rootfs`` instead: ``<root>`` and ``userns`` are 0711 (traversable, not
listable) and ``<key>`` is 0700 owned by the pod's mapped root, so no other host user gets in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from crisp.errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from crisp.filemodes import CHILD_UMASK, PRIVATE_DIR, private_dir, public_dir
from crisp.state import Database, Records
from crisp.storage.layers import short_name
from crisp.storage.mounts import OPTIONS_LIMIT, is_mountpoint, mount_overlay, unmount
from crisp.storage.usage import disk_usage

log = logging.getLogger(__name__)

TRAVERSE_ONLY = 0o711
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

IdRange = tuple[int, int, int]
"""(container id, host id, length), as in uid_map(5)."""


@dataclass(frozen=True)
class OwnerShift:
    """The uid and gid ranges a snapshot's owners are shifted into."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    def as_document(self) -> dict[str, list[list[int]]]:
        return {"uids": [list(r) for r in self.uids], "gids": [list(r) for r in self.gids]}

    @classmethod
    def from_document(cls, document: dict[str, list[list[int]]]) -> OwnerShift:
        return cls(uids=tuple((a, b, c) for a, b, c in document["uids"]),
                   gids=tuple((a, b, c) for a, b, c in document["gids"]))


def shifted(owner: int, ranges: tuple[IdRange, ...]) -> int:
    """The host id a file owned by image id ``owner`` gets; unmapped ids stay (they show as
    the overflow id inside)."""
    for container_id, host_id, length in ranges:
        if container_id <= owner < container_id + length:
            return host_id + owner - container_id
    return owner


def shift_owners(rootfs: Path, shift: OwnerShift) -> None:
    """Chown every entry under ``rootfs`` into ``shift`` (blocking; once per snapshot).

    chown(2) clears set-user-ID and set-group-ID bits even for root, so they are set back;
    file capabilities (security.capability) are lost, as with any chown.
    """
    def one(path: str) -> None:
        info = os.lstat(path)
        uid, gid = shifted(info.st_uid, shift.uids), shifted(info.st_gid, shift.gids)
        if (uid, gid) == (info.st_uid, info.st_gid):
            return
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(info.st_mode))

    one(str(rootfs))
    for top, dirs, files in os.walk(rootfs):
        for name in (*dirs, *files):
            one(os.path.join(top, name))


USAGE_MAX_AGE_SECONDS = 10.0
"""How old a writable layer's figure may be for the polled calls (ListContainerStats,
ListPodSandboxStats, ImageFsInfo): the kubelet asks every 10 s, and walking every container's
upper directory for each call was most of the daemon's CPU at steady state. containerd's CRI
plugin collects snapshot usage in the background on the same period."""


class SnapshotStore:
    """Prepares, unmounts and removes container root filesystems."""

    def __init__(self, root: Path, db: Database):
        self.root = root / "containers"
        self.userns_root = root / "userns"
        self.layers_root = root / "layers"
        self.empty_lower = root / "layers" / "empty"
        self.records = Records(db, "snapshots")
        self._locks: dict[str, asyncio.Lock] = {}
        # key -> (time.monotonic() of the walk, (bytes, inodes)); dropped with the snapshot
        self._usage: dict[str, tuple[float, tuple[int, int]]] = {}
        self._walking = asyncio.Lock()  # calls of one kubelet round share one walk
        self._removed: set[str] = set()  # during the walk under way: not to be kept
        self._refresh: asyncio.Task[None] | None = None  # cached_total's background walk

    def setup(self) -> None:
        private_dir(self.root)
        public_dir(self.empty_lower)  # the lower layer of an image without layers

    def _dir(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise InvalidArgument(
                f"snapshot key {key!r} must be 1-128 letters, digits, '_', '.' or '-'"
            )
        return self.root / key

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def prepare(self, key: str, lower_dirs: list[Path],
                      shift: OwnerShift | None = None) -> Path:
        """Mount the rootfs of ``key`` over ``lower_dirs`` (top-most first); return its path.

        Preparing a key that is already mounted returns its rootfs unchanged. With ``shift``
        the owners are shifted the first time (see the module docstring).
        """
        directory = self._dir(key)
        async with self._lock(key):
            existing = await self.records.get(key)
            if existing is not None and existing["lower_dirs"] != [str(p) for p in lower_dirs]:
                raise InvalidArgument(
                    f"snapshot {key!r} exists with other layers; "
                    "remove it before preparing it again"
                )
            if existing is not None and existing.get("shift") is not None:
                shift = OwnerShift.from_document(existing["shift"])
            elif existing is not None:
                shift = None  # an existing snapshot keeps the owners it was made with
            document: dict[str, object] = {
                "key": key, "lower_dirs": [str(p) for p in lower_dirs],
                "created": existing["created"] if existing else time.time()}
            if shift is not None:
                document["shift"] = shift.as_document()
                document["shifted"] = bool(existing and existing.get("shifted"))
            await self.records.put(key, document)
            rootfs = directory / "rootfs"
            if shift is not None:
                rootfs = await asyncio.to_thread(self._userns_mount_point, key, shift)
            await asyncio.to_thread(self._mount, directory, lower_dirs, rootfs,
                                    metacopy=shift is not None)
            if shift is not None and not document["shifted"]:
                await asyncio.to_thread(shift_owners, rootfs, shift)
                document["shifted"] = True
                await self.records.put(key, document)
            if existing is None and shift is None and key not in self._usage:
                # A new writable layer is its empty upper directory: known without a walk.
                upper = await asyncio.to_thread(os.lstat, directory / "upper")
                self._usage[key] = (time.monotonic(), (upper.st_blocks * 512, 1))
            return rootfs

    def _userns_mount_point(self, key: str, shift: OwnerShift) -> Path:
        """The traversable mount point of a shifted snapshot (see the module docstring)."""
        for parent in self.root.parent.resolve().parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                raise FailedPrecondition(
                    f"pod user namespaces need every parent of root_dir traversable by other "
                    f"users (runc mounts the rootfs as the pod's root); {parent} is not: "
                    f"chmod o+x {parent}, or use user namespace mode NODE")
        for directory in (self.root.parent, self.userns_root):
            directory.mkdir(exist_ok=True, mode=TRAVERSE_ONLY)
            os.chmod(directory, TRAVERSE_ONLY)
        own = self.userns_root / key
        own.mkdir(exist_ok=True, mode=PRIVATE_DIR)
        os.chown(own, shifted(0, shift.uids), shifted(0, shift.gids))
        rootfs = own / "rootfs"
        rootfs.mkdir(exist_ok=True, mode=PRIVATE_DIR)
        return rootfs

    def _mount(self, directory: Path, lower_dirs: list[Path], rootfs: Path,
               metacopy: bool = False) -> None:
        if is_mountpoint(rootfs):
            return  # (a chmod of rootfs now would change the container's "/")
        directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        for sub in ("upper", "work", "rootfs"):
            # upper is the container's "/", where its mode shows: 0755 as in any image, and
            # left as the container changed it when the snapshot is mounted again.
            if not (directory / sub).is_dir():
                public_dir(directory / sub)
        lowers = [str(p) for p in lower_dirs] or [str(self.empty_lower)]
        for lower in lowers:
            if not os.path.isdir(lower):
                raise NotFound(f"image layer directory {lower} is missing; pull the image again")
        tail = f",upperdir={directory / 'upper'},workdir={directory / 'work'},index=off"
        if metacopy:
            # Hard links must stay broken (index=off) so that each name is shifted once.
            tail += ",metacopy=on"
        options = "lowerdir=" + ":".join(lowers) + tail
        if len(options) <= OPTIONS_LIMIT:
            mount_overlay(rootfs, options)
            return
        short = [self._short(Path(p)) for p in lowers]
        options = "lowerdir=" + ":".join(short) + tail
        if len(options) > OPTIONS_LIMIT:
            raise InvalidArgument(
                f"the image has {len(lowers)} layers, more than one overlay mount can stack"
            )
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)],
            cwd=self.layers_root, capture_output=True, text=True, check=False,
            umask=CHILD_UMASK,
        )
        if result.returncode != 0:
            raise RuntimeFailure(
                f"mounting the overlay at {rootfs} failed: {result.stderr.strip()}"
            )

    def _short(self, lower: Path) -> str:
        """``l/<short>`` relative to the layer store, for a layer's ``diff`` directory."""
        if lower.parent.parent != self.layers_root:
            raise InvalidArgument(f"lower dir {lower} is not a layer of this store")
        return f"l/{short_name('sha256:' + lower.parent.name)}"

    async def unmount(self, key: str) -> None:
        """Unmount the rootfs of ``key``; nothing happens if it is not mounted."""
        directory = self._dir(key)
        async with self._lock(key):
            await asyncio.to_thread(unmount, directory / "rootfs")
            await asyncio.to_thread(unmount, self.userns_root / key / "rootfs")

    async def remove(self, key: str) -> None:
        """Unmount and delete the snapshot with its writable layer; absent keys are fine."""
        directory = self._dir(key)
        async with self._lock(key):
            await asyncio.to_thread(self._remove_files, self.userns_root / key)
            await asyncio.to_thread(self._remove_files, directory)
            await self.records.delete(key)
        self._locks.pop(key, None)
        self._usage.pop(key, None)
        self._removed.add(key)

    def _remove_files(self, directory: Path) -> None:
        if not directory.exists():
            return
        while unmount(directory / "rootfs"):
            pass
        shutil.rmtree(directory)

    async def usage(self, key: str) -> tuple[int, int]:
        """Bytes and inodes the writable layer of ``key`` uses, walked now."""
        found = await self.usages([key], max_age=0.0)
        if key not in found:
            raise NotFound(f"snapshot {key!r} does not exist")
        return found[key]

    async def usages(self, keys: list[str],
                     max_age: float = USAGE_MAX_AGE_SECONDS) -> dict[str, tuple[int, int]]:
        """Bytes and inodes of the writable layers of ``keys``; keys without one left out.

        Figures younger than ``max_age`` seconds are answered from memory; the others are
        walked in one worker thread for the whole batch, one batch at a time, so that calls
        arriving together (ListContainerStats, ListPodSandboxStats, ImageFsInfo) walk once.
        """
        async with self._walking:
            now = time.monotonic()
            found: dict[str, tuple[int, int]] = {}
            stale: dict[str, Path] = {}
            for key in keys:
                cached = self._usage.get(key)
                if cached is not None and now - cached[0] < max_age:
                    found[key] = cached[1]
                else:
                    stale[key] = self._dir(key) / "upper"
            if stale:
                self._removed.clear()
                walked = await asyncio.to_thread(_walk_uppers, stale)
                for key, figures in walked.items():
                    if key not in self._removed:
                        self._usage[key] = (now, figures)
                        found[key] = figures
                self._removed.clear()
            return found

    async def keys(self) -> list[str]:
        return await self.records.keys()

    async def referenced_layers(self) -> set[Path]:
        """Every lower directory some snapshot stacks (garbage collection keeps these)."""
        result: set[Path] = set()
        for doc in await self.records.find():
            result.update(Path(p) for p in doc["lower_dirs"])
        return result

    async def total_usage(self,
                          max_age: float = USAGE_MAX_AGE_SECONDS) -> tuple[int, int]:
        """Bytes and inodes of all writable layers together (figures as `usages` keeps).

        Only the upper directories count: a walk of the whole store went through every
        mounted rootfs too, counting each container's image layers as its own.
        """
        found = await self.usages(await self.keys(), max_age)
        return sum(b for b, _ in found.values()), sum(i for _, i in found.values())


    async def cached_total(self,
                           max_age: float = USAGE_MAX_AGE_SECONDS) -> tuple[int, int]:
        """`total_usage` without waiting for a walk (ImageFsInfo, polled every 10 s).

        Figures older than ``max_age`` are answered as they are and walked again in the
        background, so the next call has them fresh; only a snapshot never walked (after a
        restart) is walked on the spot, once. New snapshots are known from `prepare`.
        """
        keys = await self.keys()
        missing = [key for key in keys if key not in self._usage]
        if missing:
            await self.usages(missing, max_age)
        now = time.monotonic()
        held = {key: self._usage[key] for key in keys if key in self._usage}
        stale = [key for key, (walked, _) in held.items() if now - walked >= max_age]
        if stale and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._refresh_usages(stale, max_age))
        return (sum(b for _, (b, _) in held.values()), sum(i for _, (_, i) in held.values()))

    async def _refresh_usages(self, keys: list[str], max_age: float) -> None:
        try:
            await self.usages(keys, max_age)
        except Exception:  # the old figures stay; the next call tries again
            log.exception("walking the writable layers' usage failed")

    async def close(self) -> None:
        """Stop a background usage walk."""
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
            self._refresh = None


def _walk_uppers(uppers: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """`disk_usage` of each existing upper directory (blocking)."""
    return {key: disk_usage(upper) for key, upper in uppers.items() if upper.is_dir()}
