"""Schema migrations, oldest first.

The database's ``user_version`` counts how many of these have run. Append new migrations at
the end; never edit one that has shipped. Each table keeps the few columns crisp looks rows up
by and puts the rest of the record in ``data`` as JSON, which the owning domain package reads
back into its own dataclass.
"""

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE images (
            id TEXT PRIMARY KEY,
            data TEXT NOT NULL
        )""",
        """CREATE TABLE image_names (
            name TEXT PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
        )""",
        "CREATE INDEX image_names_by_image ON image_names(image_id)",
        """CREATE TABLE layers (
            chain_id TEXT PRIMARY KEY,
            parent TEXT,
            data TEXT NOT NULL
        )""",
        """CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        """CREATE TABLE containers (
            id TEXT PRIMARY KEY,
            sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX containers_by_sandbox ON containers(sandbox_id)",
        """CREATE TABLE operations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            step TEXT NOT NULL,
            data TEXT NOT NULL,
            started_at REAL NOT NULL
        )""",
    ],
    [
        # container root filesystems (storage.SnapshotStore): which layers each one mounts,
        # so that removing an image or collecting garbage never pulls a layer from under it
        """CREATE TABLE snapshots (
            key TEXT PRIMARY KEY,
            data TEXT NOT NULL
        )""",
    ],
]
