"""The mount(2) and umount2(2) system calls, and /proc/self/mountinfo (all blocking).

Called from worker threads: mounting changes no per-thread state, unlike setns/unshare. When
an overlay's options do not fit in one page, the ``mount`` program is run with its working
directory in the layer store so that lower dirs can be given as short relative names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from crisp.errors import RuntimeFailure

MNT_DETACH = 2
OPTIONS_LIMIT = 4095  # the kernel copies at most one page of mount data

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_overlay(target: Path, options: str) -> None:
    """Mount an overlay at ``target`` with absolute-path ``options`` (RuntimeFailure on error)."""
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
        code = ctypes.get_errno()
        raise RuntimeFailure(
            f"mounting the overlay at {target} failed: {os.strerror(code)} (options {options})"
        )


def unmount(target: Path) -> bool:
    """Unmount ``target``; return False if nothing was mounted there. Busy mounts are detached."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    if code == errno.EBUSY and _libc.umount2(path, MNT_DETACH) == 0:
        return True
    raise RuntimeFailure(f"unmounting {target} failed: {os.strerror(code)}")


def is_mountpoint(target: Path) -> bool:
    encoded = str(target).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split(" ", 5)[4] == encoded for line in mountinfo)
