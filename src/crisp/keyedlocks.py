"""One asyncio lock per key (an image name, a blob digest), forgotten once nobody uses it.

A plain ``dict.setdefault(key, Lock())`` keeps a lock for every key ever seen: on a node that
pulls for months, one per image name and per blob. Here an entry lives only while a task holds
or waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLocks:
    """Mutual exclusion per key; ``async with locks.hold(key): ...``."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def busy(self, key: str) -> bool:
        """Whether a task holds or waits for ``key``'s lock now."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
