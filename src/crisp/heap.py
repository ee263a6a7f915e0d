"""Bound glibc's malloc arenas so the daemon's RSS stays flat under long churn.

glibc gives each thread that contends for the heap an arena of its own, up to eight per
core. grpcio's and asyncio's executor threads allocate and free in bursts, and freed memory
in an extra arena is seldom returned to the kernel: a 30-minute soak grew the daemon's RSS by
13% with no growth in Python objects, while the same soak with two arenas stayed flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc's malloc.h)
DAEMON_ARENAS = 2


def limit_malloc_arenas(arenas: int = DAEMON_ARENAS) -> bool:
    """Cap malloc arenas for this process; call before the first thread starts.

    An operator's own ``MALLOC_ARENA_MAX`` wins (glibc has already applied it). Returns
    whether the limit is in force; it is not where the C library is not glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
        return False
    return True
