"""The SQLite state layer: migrations, records, settings and the intent journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crisp.state import Database, Journal, Records, SchemaTooNewError, Settings
from crisp.state.schema import MIGRATIONS


async def test_open_migrates_and_enables_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        assert await db.schema_version() == len(MIGRATIONS)
        assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
    finally:
        await db.close()
    reopened = await Database.open(tmp_path / "crisp.db")  # migrating twice is a no-op
    await reopened.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crisp.db"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    connection.close()
    with pytest.raises(SchemaTooNewError, match="newer than this crisp"):
        await Database.open(path)


async def test_records_round_trip_and_lookup(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        sandboxes = Records(db, "sandboxes")
        await sandboxes.put("a", {"labels": {"app": "x"}}, name="pod-a", state="ready")
        await sandboxes.put("b", {"labels": {}}, name="pod-b", state="notready")
        assert await sandboxes.get("a") == {"labels": {"app": "x"}}
        assert await sandboxes.find(state="ready") == [{"labels": {"app": "x"}}]
        assert len(await sandboxes.find()) == 2
        await sandboxes.put("a", {"labels": {}}, name="pod-a", state="notready")
        assert len(await sandboxes.find(state="notready")) == 2
        with pytest.raises(sqlite3.IntegrityError):
            await sandboxes.put("c", {}, name="pod-a", state="ready")
        with pytest.raises(ValueError, match="no lookup column"):
            await sandboxes.find(colour="red")
        assert await sandboxes.delete("a")
        assert not await sandboxes.delete("a")
        assert await sandboxes.get("a") is None
    finally:
        await db.close()


async def test_foreign_keys_protect_containers_of_a_sandbox(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await Records(db, "containers").put("c", {}, sandbox_id="nope", name="c", state="x")
    finally:
        await db.close()


async def test_settings(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        settings = Settings(db)
        assert await settings.get("pod_cidr") is None
        await settings.set("pod_cidr", "10.0.0.0/24")
        await settings.set("pod_cidr", "10.1.0.0/24")
        assert await settings.get("pod_cidr") == "10.1.0.0/24"
    finally:
        await db.close()


async def test_journal_keeps_unfinished_operations_across_reopen(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    journal = Journal(db)
    done = await journal.begin("create", "c1", "bundle", {"n": 1})
    interrupted = await journal.begin("remove", "c2", "stop", {})
    await journal.advance(interrupted, "unmount", {"mounted": True})
    await journal.finish(done)
    await db.close()

    db = await Database.open(tmp_path / "crisp.db")
    try:
        (operation,) = await Journal(db).pending()
        assert (operation.kind, operation.object_id, operation.step) == ("remove", "c2", "unmount")
        assert operation.data == {"mounted": True}
        assert await Journal(db).pending("create") == []
    finally:
        await db.close()


async def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        images = Records(db, "images")

        def half_done(connection: sqlite3.Connection) -> None:
            images.put_in(connection, "sha256:a", {"size": 1})
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            await db.transaction(half_done)
        assert await images.get("sha256:a") is None
    finally:
        await db.close()
