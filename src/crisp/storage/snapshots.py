"""Container root filesystems: an overlay of image layers under a private writable layer.

``<root>/containers/<key>/`` holds ``upper`` and ``work`` (the writable layer) and ``rootfs``
(the mount point). Which layers a snapshot stacks is recorded before it is mounted, so that
removing the image or collecting garbage never takes a layer away from a container.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from crisp.errors import InvalidArgument, NotFound, RuntimeFailure
from crisp.filemodes import CHILD_UMASK, PRIVATE_DIR, private_dir, public_dir
from crisp.state import Database, Records
from crisp.storage.layers import short_name
from crisp.storage.mounts import OPTIONS_LIMIT, is_mountpoint, mount_overlay, unmount
from crisp.storage.usage import disk_usage

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class SnapshotStore:
    """Prepares, unmounts and removes container root filesystems."""

    def __init__(self, root: Path, db: Database):
        self.root = root / "containers"
        self.layers_root = root / "layers"
        self.empty_lower = root / "layers" / "empty"
        self.records = Records(db, "snapshots")
        self._locks: dict[str, asyncio.Lock] = {}

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

    async def prepare(self, key: str, lower_dirs: list[Path]) -> Path:
        """Mount the rootfs of ``key`` over ``lower_dirs`` (top-most first); return its path.

        Preparing a key that is already mounted returns its rootfs unchanged.
        """
        directory = self._dir(key)
        async with self._lock(key):
            rootfs = directory / "rootfs"
            existing = await self.records.get(key)
            if existing is not None and existing["lower_dirs"] != [str(p) for p in lower_dirs]:
                raise InvalidArgument(
                    f"snapshot {key!r} exists with other layers; "
                    "remove it before preparing it again"
                )
            await self.records.put(
                key, {"key": key, "lower_dirs": [str(p) for p in lower_dirs],
                      "created": time.time()},
            )
            await asyncio.to_thread(self._mount, directory, lower_dirs)
            return rootfs

    def _mount(self, directory: Path, lower_dirs: list[Path]) -> None:
        rootfs = directory / "rootfs"
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

    async def remove(self, key: str) -> None:
        """Unmount and delete the snapshot with its writable layer; absent keys are fine."""
        directory = self._dir(key)
        async with self._lock(key):
            await asyncio.to_thread(self._remove_files, directory)
            await self.records.delete(key)
        self._locks.pop(key, None)

    def _remove_files(self, directory: Path) -> None:
        if not directory.exists():
            return
        while unmount(directory / "rootfs"):
            pass
        shutil.rmtree(directory)

    async def usage(self, key: str) -> tuple[int, int]:
        """Bytes and inodes the writable layer of ``key`` uses."""
        upper = self._dir(key) / "upper"
        if not upper.is_dir():
            raise NotFound(f"snapshot {key!r} does not exist")
        return await asyncio.to_thread(disk_usage, upper)

    async def keys(self) -> list[str]:
        return [doc["key"] for doc in await self.records.find()]

    async def referenced_layers(self) -> set[Path]:
        """Every lower directory some snapshot stacks (garbage collection keeps these)."""
        result: set[Path] = set()
        for doc in await self.records.find():
            result.update(Path(p) for p in doc["lower_dirs"])
        return result

    async def total_usage(self) -> tuple[int, int]:
        """Bytes and inodes of all writable layers together."""
        return await asyncio.to_thread(disk_usage, self.root)
