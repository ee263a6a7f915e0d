"""Small host-side primitives the pod lifecycle needs: mounts, atomic files, process identity.

These are blocking calls; the async callers run them with ``asyncio.to_thread``. None of them
enters a namespace: crisp's own threads stay in the host's namespaces.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_tmpfs(target: Path, options: str) -> None:
    """Mount a fresh tmpfs (for a pod's /dev/shm) at ``target``."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"shm", os.fsencode(target), b"tmpfs", flags, options.encode()) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mounting tmpfs at {target}: {os.strerror(error)}")


def bind_mount(source: Path, target: Path) -> None:
    """Bind ``source`` onto ``target`` (a namespace file onto its pin file)."""
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"bind-mounting {source} at {target}: {os.strerror(error)}")


def unmount(target: Path) -> None:
    """Detach whatever is mounted at ``target`` (all stacked mounts); nothing there is fine.

    No mountinfo scan first: with a hundred pods that read was the largest cost of pod
    teardown. umount2 itself says "not a mount point" (EINVAL) or "no such path" (ENOENT);
    UMOUNT_NOFOLLOW keeps a symlink there from redirecting it.
    """
    path = os.fsencode(target)
    while _libc.umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
        pass  # one more stacked mount gone
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOENT):
        return
    raise OSError(error, f"unmounting {target}: {os.strerror(error)}")


def mount_points() -> set[str]:
    """Every mount point of crisp's mount namespace."""
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            if len(fields) > 4:
                points.add(_unescape(fields[4]))
    return points


def is_mounted(target: Path) -> bool:
    return str(target) in mount_points()


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def process_start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (0 if it does not exist).

    Paired with the pid it names one process for good, even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[19])


def process_alive(pid: int, start_time: int) -> bool:
    return pid > 0 and start_time > 0 and process_start_time(pid) == start_time

