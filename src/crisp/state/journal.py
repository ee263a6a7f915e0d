"""The intent journal that makes multi-step operations recoverable.

Before a multi-step operation touches the world (mounts, processes, namespaces, files) it
records what it is about to do; it updates the step as it goes and removes the entry when it
is done. On start-up, whatever is still in the journal was interrupted by a crash, and the
owning domain package finishes or rolls it back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from crisp.state.database import Database


@dataclass(frozen=True)
class Operation:
    """One interrupted or running multi-step operation."""

    id: int
    kind: str
    object_id: str
    step: str
    data: dict[str, Any]
    started_at: float


class Journal:
    """Write-ahead records of multi-step operations."""

    def __init__(self, db: Database):
        self.db = db

    async def begin(self, kind: str, object_id: str, step: str, data: dict[str, Any]) -> int:
        """Record that an operation starts; return its id for later steps."""

        def insert(connection: Any) -> int:
            cursor = connection.execute(
                "INSERT INTO operations (kind, object_id, step, data, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, object_id, step, json.dumps(data, sort_keys=True), time.time()),
            )
            return int(cursor.lastrowid)

        return await self.db.transaction(insert)

    async def advance(
        self, operation_id: int, step: str, data: dict[str, Any] | None = None
    ) -> None:
        """Record that the operation reached ``step`` (and, optionally, new data)."""
        if data is None:
            await self.db.execute(
                "UPDATE operations SET step = ? WHERE id = ?", (step, operation_id)
            )
        else:
            await self.db.execute(
                "UPDATE operations SET step = ?, data = ? WHERE id = ?",
                (step, json.dumps(data, sort_keys=True), operation_id),
            )

    async def finish(self, operation_id: int) -> None:
        await self.db.execute("DELETE FROM operations WHERE id = ?", (operation_id,))

    async def pending(self, kind: str | None = None) -> list[Operation]:
        """Operations that were started and never finished, oldest first."""
        if kind is None:
            rows = await self.db.fetchall("SELECT * FROM operations ORDER BY id")
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM operations WHERE kind = ? ORDER BY id", (kind,)
            )
        return [
            Operation(
                id=row["id"],
                kind=row["kind"],
                object_id=row["object_id"],
                step=row["step"],
                data=json.loads(row["data"]),
                started_at=row["started_at"],
            )
            for row in rows
        ]
