"""KeyedLocks: exclusion per key, and no entry left once nobody holds or waits."""

from __future__ import annotations

import asyncio

from crisp.keyedlocks import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept_afterwards() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap = []

    async def work(key: str) -> None:
        async with locks.hold(key):
            if key in inside:
                overlap.append(key)
            inside.append(key)
            await asyncio.sleep(0.01)
            inside.remove(key)

    await asyncio.gather(*(work(key) for key in ["a", "a", "b", "a", "b"]))
    assert not overlap
    assert len(locks) == 0


async def test_entry_forgotten_when_the_holder_fails() -> None:
    locks = KeyedLocks()
    try:
        async with locks.hold("x"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
