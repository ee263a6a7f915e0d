"""Typed access to crisp's tables, for the domain packages.

A table row is a JSON document plus the columns it is looked up by. Domain packages turn
documents into their own dataclasses; nothing here knows what a sandbox or an image is.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from crisp.state.database import Database

Document = dict[str, Any]

# Which columns each table is looked up by, besides its primary key (listed first).
_TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "images": ("id",),
    "layers": ("chain_id", "parent"),
    "sandboxes": ("id", "name", "state"),
    "containers": ("id", "sandbox_id", "name", "state"),
    "snapshots": ("key",),
}


class Records:
    """The JSON documents of one table."""

    def __init__(self, db: Database, table: str):
        if table not in _TABLE_KEYS:
            raise ValueError(f"unknown table {table!r}")
        self.db = db
        self.table = table
        self._keys = _TABLE_KEYS[table]
        self._primary = self._keys[0]

    async def get(self, key: str) -> Document | None:
        row = await self.db.fetchone(
            f"SELECT data FROM {self.table} WHERE {self._primary} = ?", (key,)
        )
        return None if row is None else _load(row)

    async def find(self, **where: str) -> list[Document]:
        """Every document whose key columns equal the given values (all of them, if none)."""
        self._check_columns(where)
        clause = " AND ".join(f"{column} = ?" for column in where) or "1"
        rows = await self.db.fetchall(
            f"SELECT data FROM {self.table} WHERE {clause} ORDER BY rowid", tuple(where.values())
        )
        return [_load(row) for row in rows]

    async def keys(self) -> list[str]:
        """Every document's key, in insertion order, without decoding the documents."""
        rows = await self.db.fetchall(
            f"SELECT {self._primary} FROM {self.table} ORDER BY rowid", ())
        return [str(row[self._primary]) for row in rows]

    async def put(self, key: str, data: Document, **columns: str | None) -> None:
        """Insert or replace the document stored under ``key``."""
        await self.db.transaction(lambda c: self.put_in(c, key, data, **columns))

    def put_in(
        self, connection: sqlite3.Connection, key: str, data: Document, **columns: str | None
    ) -> None:
        """Like :meth:`put`, inside a transaction the caller already holds."""
        self._check_columns(columns)
        names = [self._primary, *columns, "data"]
        values = [key, *columns.values(), json.dumps(data, sort_keys=True)]
        placeholders = ", ".join("?" for _ in names)
        updates = ", ".join(f"{name} = excluded.{name}" for name in names[1:])
        connection.execute(
            f"INSERT INTO {self.table} ({', '.join(names)}) VALUES ({placeholders}) "
            f"ON CONFLICT({self._primary}) DO UPDATE SET {updates}",
            values,
        )

    async def delete(self, key: str) -> bool:
        """Remove the document; return whether there was one."""
        changed = await self.db.execute(
            f"DELETE FROM {self.table} WHERE {self._primary} = ?", (key,)
        )
        return changed > 0

    def _check_columns(self, columns: dict[str, Any]) -> None:
        unknown = set(columns) - set(self._keys)
        if unknown:
            raise ValueError(f"{self.table} has no lookup column {sorted(unknown)}")


class Settings:
    """Small named values that must survive a restart (for example the pod CIDR)."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, key: str) -> str | None:
        row = await self.db.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    async def set(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _load(row: sqlite3.Row) -> Document:
    document: Document = json.loads(row["data"])
    return document
