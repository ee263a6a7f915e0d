"""Recognizing a full disk and naming its filesystem (crisp.diskspace)."""

from __future__ import annotations

import errno
import os
import sqlite3
import zlib
from pathlib import Path

import pytest

from crisp.diskspace import (
    DiskFull,
    disk_full,
    disk_full_from,
    failed_path,
    human_bytes,
    is_disk_full,
    mount_point,
)
from crisp.errors import InvalidArgument, ResourceExhausted
from crisp.storage.unpack import UnsafeLayer


def test_disk_full_errors_are_recognized() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(DiskFull("x", "/"))
    wrapped = InvalidArgument("the archive is not a readable tar")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)


def test_other_errors_are_not_disk_full() -> None:
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(ValueError("no space left on device"))
    corrupt = UnsafeLayer("layer archive is truncated or corrupt")
    corrupt.__cause__ = zlib.error("invalid stored block lengths")
    assert not is_disk_full(corrupt)  # a broken gzip stays INVALID_ARGUMENT
    late = RuntimeError("cleanup failed")
    late.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert not is_disk_full(late)  # only what an error was raised *from* counts


def test_mount_point_walks_up_to_the_filesystem_root(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    point = mount_point(deep)
    assert os.stat(point).st_dev == os.stat(deep).st_dev
    assert point == "/" or os.stat(os.path.dirname(point)).st_dev != os.stat(point).st_dev
    assert mount_point(deep / "not" / "there") == point  # the nearest existing parent
    assert mount_point("/proc/self") == "/proc"


def test_the_message_names_operation_filesystem_and_free_space(tmp_path: Path) -> None:
    error = disk_full(tmp_path, "pulling example.com/x:1")
    assert isinstance(error, ResourceExhausted)
    text = str(error)
    assert text.startswith("pulling example.com/x:1: no space left on the filesystem at ")
    assert f" at {mount_point(tmp_path)} (" in text
    assert text.endswith(" free now); free space and retry")


def test_the_file_an_error_names_decides_the_filesystem(tmp_path: Path) -> None:
    raised = OSError(errno.ENOSPC, "No space left on device", "/proc/self/x")
    assert failed_path(raised) == "/proc/self/x"
    assert disk_full_from(raised, tmp_path, "Import").mount_point == "/proc"
    anonymous = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full_from(anonymous, tmp_path, "Import").mount_point == mount_point(tmp_path)
    renamed = disk_full_from(DiskFull("writing the database: ...", "/proc"), tmp_path, "x")
    assert renamed.mount_point == "/proc" and str(renamed).startswith("x: no space left")


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1258291, "1.2 MiB"),
    (3 << 30, "3.0 GiB"), (5 << 40, "5.0 TiB"),
])
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text
