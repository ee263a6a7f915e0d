"""Pulls and garbage collection exclude each other; pulls run side by side.

A pull writes blobs and layers before its image record references them; a collection running
in between would see them as garbage. So pulls hold the gate shared and collection holds it
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class PullGate:
    def __init__(self) -> None:
        self._pulls = 0
        self._collecting = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def pulling(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._collecting)
            self._pulls += 1
        try:
            yield
        finally:
            async with self._changed:
                self._pulls -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def collecting(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._collecting and self._pulls == 0)
            self._collecting = True
        try:
            yield
        finally:
            async with self._changed:
                self._collecting = False
                self._changed.notify_all()
