"""Image records: the ``images`` table (one row per image id) and ``image_names``.

A name is ``repo:tag`` or ``repo@digest`` and points at exactly one image; an image has any
number of names. Saving an image and its names is one transaction, so a tag never points at
an image that is not recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from crisp.images.model import Image
from crisp.state import Database, Records


class ImageStore:
    def __init__(self, db: Database, is_pinned: Callable[[list[str]], bool]):
        self.db = db
        self.records = Records(db, "images")
        self._is_pinned = is_pinned

    async def save(self, image: Image, names: list[str]) -> None:
        """Record ``image`` and point ``names`` at it (moving them from other images)."""
        document = image.to_document()

        def work(connection: sqlite3.Connection) -> None:
            self.records.put_in(connection, image.id, document)
            for name in names:
                connection.execute(
                    "INSERT INTO image_names (name, image_id) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                    (name, image.id),
                )

        await self.db.transaction(work)

    async def _names(self, image_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,)
        )
        return [str(row["name"]) for row in rows]

    async def get(self, image_id: str) -> Image | None:
        document = await self.records.get(image_id)
        if document is None:
            return None
        names = await self._names(image_id)
        return Image.from_document(document, names, self._is_pinned(names))

    async def id_for_name(self, name: str) -> str | None:
        row = await self.db.fetchone("SELECT image_id FROM image_names WHERE name = ?", (name,))
        return None if row is None else str(row["image_id"])

    async def ids_with_prefix(self, prefix: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT id FROM images WHERE id LIKE ? ESCAPE '\\'",
            ("sha256:" + prefix.replace("%", "").replace("_", "\\_") + "%",),
        )
        return [str(row["id"]) for row in rows]

    async def all(self) -> list[Image]:
        documents = await self.records.find()
        rows = await self.db.fetchall("SELECT name, image_id FROM image_names ORDER BY name")
        names: dict[str, list[str]] = {}
        for row in rows:
            names.setdefault(str(row["image_id"]), []).append(str(row["name"]))
        result = []
        for document in documents:
            image_names = names.get(document["id"], [])
            result.append(Image.from_document(document, image_names,
                                              self._is_pinned(image_names)))
        return result

    async def delete(self, image_id: str) -> bool:
        """Remove the image and all its names; False if it was not there."""

        def work(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM image_names WHERE image_id = ?", (image_id,))
            return connection.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount > 0

        return await self.db.transaction(work)
