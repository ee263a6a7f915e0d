"""Telling a full disk apart from other failures, and saying which filesystem is full.

A write that fails with ENOSPC or EDQUOT, or an SQLite statement that answers SQLITE_FULL, is
neither a bug in crisp nor bad input: the client gets RESOURCE_EXHAUSTED naming the operation,
the filesystem's mount point and what is free on it, so an operator knows what to clean up.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from crisp.errors import ResourceExhausted

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)
_SQLITE_FULL_MESSAGE = "database or disk is full"


class DiskFull(ResourceExhausted):
    """A filesystem crisp writes to has no space (or quota) left."""

    def __init__(self, message: str, mount_point: str):
        super().__init__(message)
        self.mount_point = mount_point


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised ``from``) means a filesystem ran out of space."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return True
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL
            or _SQLITE_FULL_MESSAGE in str(current)
        ):
            return True
        current = current.__cause__
    return False


def failed_path(error: BaseException) -> str | None:
    """The file an OSError names (``filename``), if any: its filesystem is the full one."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and isinstance(current.filename, str | bytes | Path):
            return os.fsdecode(current.filename)
        current = current.__cause__
    return None


def mount_point(path: str | Path) -> str:
    """The mount point of the filesystem ``path`` (or its nearest existing parent) is on."""
    current = os.path.realpath(path)
    while True:
        try:
            device = os.stat(current).st_dev
            break
        except OSError:
            parent = os.path.dirname(current)
            if parent == current:
                return current
            current = parent
    while current != "/":
        parent = os.path.dirname(current)
        try:
            if os.stat(parent).st_dev != device:
                return current
        except OSError:
            return current
        current = parent
    return "/"


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (None if unknown)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def human_bytes(count: int) -> str:
    """``count`` bytes for people: 512 B, 1.2 MiB, 3.0 GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def disk_full(path: str | Path, what: str) -> DiskFull:
    """The error for ``what`` (e.g. "pulling x") failing because ``path``'s filesystem is full."""
    point = mount_point(path)
    free = free_bytes(point)
    room = "" if free is None else f" ({human_bytes(free)} free now)"
    return DiskFull(
        f"{what}: no space left on the filesystem at {point}{room}; free space and retry",
        point,
    )


def disk_full_from(error: BaseException, default_path: str | Path, what: str) -> DiskFull:
    """Like :func:`disk_full` for a caught ``error``: the file it names, else ``default_path``.

    A :class:`DiskFull` raised below already knows its filesystem and is only renamed.
    """
    if isinstance(error, DiskFull):
        return disk_full(error.mount_point, what)
    return disk_full(failed_path(error) or default_path, what)
