"""The one SQLite database crisp keeps its records in.

Only this package opens the database file. All statements run on one dedicated thread so
the event loop never blocks on disk and sqlite3's connection stays on the thread that made
it. Every call to :meth:`Database.transaction` is atomic: it commits as a whole or not at all,
also when the disk is full (then it raises :class:`crisp.diskspace.DiskFull` and the records
stay as they were before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from crisp.diskspace import disk_full, is_disk_full
from crisp.state.schema import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]

DATABASE_NAME = "crisp.db"
# The database and the files SQLite keeps beside it in WAL mode: every container's config
# and environment is in them, so they must be root's alone (0600).
DATABASE_FILES = (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm")


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer crisp than this one."""


class Database:
    """An SQLite database in WAL mode, reached from asyncio through one worker thread."""

    def __init__(self, path: Path, connection: sqlite3.Connection, executor: ThreadPoolExecutor):
        self.path = path
        self._connection = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> Database:
        """Open (creating if needed) and migrate the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crisp-db")
        loop = asyncio.get_running_loop()
        connection = await loop.run_in_executor(executor, _connect, path)
        db = cls(path, connection, executor)
        await db.transaction(_migrate)
        return db

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one transaction on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_transaction, work)

    def _in_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        try:
            with connection:  # commits on success, rolls back on any exception
                return work(connection)
        except sqlite3.Error as error:
            if connection.in_transaction:  # a COMMIT that failed leaves the transaction open
                with contextlib.suppress(sqlite3.Error):
                    connection.rollback()
            if is_disk_full(error):
                raise disk_full(self.path, f"writing crisp's database {self.path}") from error
            raise

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return await self.transaction(lambda c: c.execute(sql, params).rowcount)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return await self.transaction(lambda c: c.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = await self.transaction(
            lambda c: c.execute(sql, params).fetchone()
        )
        return row

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._connection.close)
        self._executor.shutdown(wait=True)

    async def schema_version(self) -> int:
        return await self.transaction(_user_version)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=NORMAL")  # durable at WAL checkpoints, safe on crash
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


def _user_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _migrate(connection: sqlite3.Connection) -> None:
    current = _user_version(connection)
    if current > len(MIGRATIONS):
        raise SchemaTooNewError(
            f"database schema version {current} is newer than this crisp understands "
            f"({len(MIGRATIONS)}); upgrade crisp or restore an older database"
        )
    for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
        log.info("migrating database schema to version %d", version)
        for statement in statements:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version={version}")
