"""The sandboxes and containers crisp knows: kept in memory for reads, written through to SQLite.

Reads (status, list) never touch the database; every change is saved before the call that made
it returns, so a restart loads exactly what clients were told. One lock per object serializes
the operations on it; names are reserved in memory before any slow work so that two concurrent
creates of one name cannot both pass the uniqueness check.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from crisp.errors import AlreadyExists, NotFound
from crisp.pods.codec import from_document, to_document
from crisp.pods.model import Container, Sandbox
from crisp.state import Database, Records


class PodStore:
    def __init__(self, db: Database):
        self._sandbox_records = Records(db, "sandboxes")
        self._container_records = Records(db, "containers")
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._names: dict[str, str] = {}  # reserved or taken name -> id
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def load(self) -> None:
        for document in await self._sandbox_records.find():
            sandbox = from_document(Sandbox, document)
            self.sandboxes[sandbox.id] = sandbox
            self._names[f"pod:{sandbox.name}"] = sandbox.id
        for document in await self._container_records.find():
            container = from_document(Container, document)
            self.containers[container.id] = container
            self._names[f"ctr:{container.unique_name}"] = container.id

    def lock(self, object_id: str) -> asyncio.Lock:
        return self._locks[object_id]

    def forget_lock(self, object_id: str) -> None:
        lock = self._locks.get(object_id)
        if lock is not None and not lock.locked():
            del self._locks[object_id]

    # Names

    def reserve(self, kind: str, name: str, object_id: str) -> None:
        """Claim ``name`` for ``object_id``; AlreadyExists names the current holder."""
        key = f"{kind}:{name}"
        holder = self._names.get(key)
        if holder is not None and holder != object_id:
            what = "pod sandbox" if kind == "pod" else "container"
            raise AlreadyExists(
                f"{what} name {name!r} is already used by {holder}; remove it first"
            )
        self._names[key] = object_id

    def release(self, kind: str, name: str, object_id: str) -> None:
        key = f"{kind}:{name}"
        if self._names.get(key) == object_id:
            del self._names[key]

    # Sandboxes

    def sandbox(self, sandbox_id: str) -> Sandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} does not exist")
        return sandbox

    async def save_sandbox(self, sandbox: Sandbox) -> None:
        await self._sandbox_records.put(
            sandbox.id, to_document(sandbox), name=sandbox.name, state=str(sandbox.state)
        )
        self.sandboxes[sandbox.id] = sandbox

    async def delete_sandbox(self, sandbox: Sandbox) -> None:
        await self._sandbox_records.delete(sandbox.id)
        self.sandboxes.pop(sandbox.id, None)
        self.release("pod", sandbox.name, sandbox.id)

    # Containers

    def container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id!r} does not exist")
        return container

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return [c for c in self.containers.values() if c.sandbox_id == sandbox_id]

    async def save_container(self, container: Container) -> None:
        await self._container_records.put(
            container.id, to_document(container), sandbox_id=container.sandbox_id,
            name=container.unique_name, state=str(container.state),
        )
        self.containers[container.id] = container

    async def delete_container(self, container: Container) -> None:
        await self._container_records.delete(container.id)
        self.containers.pop(container.id, None)
        self.release("ctr", container.unique_name, container.id)
