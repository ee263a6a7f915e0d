"""Bound glibc's malloc arenas so the daemon's RSS stays flat under long churn.

glibc gives each thread that contends for the heap an arena of its own, up to eight per
core. grpcio's and asyncio's executor threads allocate and free in bursts, and freed memory
in an extra arena is seldom returned to the kernel: a 30-minute soak grew the daemon's RSS by
13% with no growth in Python objects, while the same soak with two arenas stayed flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc's malloc.h)
DAEMON_ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (find_library runs ldconfig)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name is not None else None


def limit_malloc_arenas(arenas: int = DAEMON_ARENAS) -> bool:
    """Cap malloc arenas for this process; call before the first thread starts.

    An operator's own ``MALLOC_ARENA_MAX`` wins (glibc has already applied it). Returns
    whether the limit is in force; it is not where the C library is not glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
        return False
    return True


def trim() -> bool:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim).

    A pull's buffers are freed when it ends, but glibc keeps the pages: called once the last
    pull is done, so an idle daemon's RSS drops back. Blocking (walks the arenas): run it off
    the event loop. False where the C library has no malloc_trim.
    """
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
