"""Reading cgroup and /proc files that may vanish at any moment (a container just exited)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crisp.errors import NotFound

# What the kernel answers for a file of a cgroup or process that is being torn down: gone
# (ENOENT, ENOTDIR, ESRCH), a memory cgroup mid-removal (ENODEV), /proc of a dead process
# (EACCES, EPERM once its credentials are gone).
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.ENODEV, errno.EACCES,
                       errno.EPERM})


def vanished(error: OSError) -> bool:
    """Whether ``error`` means the cgroup or process went away while it was being read."""
    return error.errno in _VANISHED


@contextmanager
def gone_as_not_found(cgroup: str) -> Iterator[None]:
    """Turn a read that failed because ``cgroup`` went away into NotFound, as a missing one."""
    try:
        yield
    except OSError as error:
        if not vanished(error):
            raise
        raise NotFound(f"cgroup {cgroup} went away while it was being read") from error


def read_text(path: Path | str | None) -> str | None:
    """The file's text without surrounding white space, or None if it is not there (any more)."""
    if path is None:
        return None
    try:
        return _read_all(os.fspath(path)).decode(errors="replace").strip()
    except OSError as error:
        if vanished(error):
            return None
        raise


def read_bytes(path: str) -> bytes | None:
    """The file's bytes as the kernel gives them, or None if it is not there (any more).

    The stats readers take bytes: int() and split() work on them without a decode.
    """
    try:
        return _read_all(path)
    except OSError as error:
        if vanished(error):
            return None
        raise


WHOLE_READ_BYTES = 2048
"""A read(2) shorter than this was the whole file: seq_file, which cgroup and /proc files
go through, only cuts a read short once its page-sized buffer is full (less at most one
record, and these files' records are lines), and a regular file only at its end."""


def _read_all(path: str) -> bytes:
    """The whole file in as few read(2) calls as it takes: one, for the small ones.

    Plain os calls: Path.read_text's text layer cost more than the read itself, and the
    stats calls read thousands of these small pseudo-files a minute on a full node. A
    short first read needs no second one to find the end (see `WHOLE_READ_BYTES`).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        first = os.read(fd, 65536)
        if len(first) < WHOLE_READ_BYTES:
            return first
        chunks = [first]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_int(path: Path | None, *, max_as: int | None = None) -> int | None:
    """The number in a one-value file; the kernel's "max" (no limit) reads as ``max_as``."""
    text = read_text(path)
    if not text:  # absent, or emptied by a cgroup being torn down
        return None
    return max_as if text == "max" else int(text)


def procs_files(directory: Path) -> Iterator[str]:
    """The cgroup.procs files of a cgroup and every cgroup below it.

    os.walk skips subtrees removed during the walk, where Path.rglob raises.
    """
    for parent, _, files in os.walk(directory):
        if "cgroup.procs" in files:
            yield os.path.join(parent, "cgroup.procs")


def list_entries(path: str) -> list[str]:
    """The names in a /proc or cgroup directory; none if it went away."""
    try:
        return os.listdir(path)
    except OSError as error:
        if vanished(error):
            return []
        raise
