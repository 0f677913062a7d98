"""The store's schema versions: the version number in the file, the migrations up to it, the newer-file check.

The version is SQLite's `PRAGMA user_version`. Version 1 never set it, so 0 (with the tables present) reads as
1. Each entry of `MIGRATIONS` upgrades a store of the version before it and runs inside the opener's write
transaction, so two processes opening the same old file migrate it once. A file whose version is newer than
`SCHEMA_VERSION` was written by a newer build: `newer_schema` says so in one line, and the store then opens it
read-only and never writes to it.

    version 1  records, runs, run_members
    version 2  records.engine_version (indexed): from each row's record JSON, 'unknown' where it has none
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

SCHEMA_VERSION = 2  # the `PRAGMA user_version` this build reads and writes
UNKNOWN_ENGINE = "unknown"  # engine_version of records stored before records carried one

# (version, statements): each entry upgrades a store of the version before it to `version`, in order
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (2, (f"ALTER TABLE records ADD COLUMN engine_version TEXT NOT NULL DEFAULT '{UNKNOWN_ENGINE}'",
         "UPDATE records SET engine_version = "
         f"COALESCE(CAST(json_extract(record, '$.engine_version') AS TEXT), '{UNKNOWN_ENGINE}')",
         "CREATE INDEX IF NOT EXISTS records_by_engine ON records (engine_version)")),
)


def read_only_uri(path: Path) -> str:
    """The SQLite URI that opens `path` read-only (nothing written, not even a journal mode)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version; 0 (never set) means version 1, from before the schema was versioned."""
    return max(conn.execute("PRAGMA user_version").fetchone()[0], 1)


def newer_schema(path: Path) -> str | None:
    """The one-line refusal when the file at `path` has a schema newer than this build's, else None.

    Read through a read-only connection, so a newer store is not touched. A file SQLite cannot read gives None
    too: opening it for writing then fails with the error that says what is wrong.
    """
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(read_only_uri(path), uri=True)) as conn:
            version = schema_version(conn)
    except sqlite3.DatabaseError:
        return None
    if version <= SCHEMA_VERSION:
        return None
    return (f"store {path} was written by a newer Compression Explorer (schema {version}; this build reads "
            f"≤ {SCHEMA_VERSION}); upgrade or use another --store")


def migrate(conn: sqlite3.Connection) -> None:
    """Upgrade the store to SCHEMA_VERSION in place. Call inside a write transaction (BEGIN IMMEDIATE).

    The version is read again here, under the write lock: another process may have migrated meanwhile.
    """
    version = schema_version(conn)
    for target, statements in MIGRATIONS:
        if version < target <= SCHEMA_VERSION:
            for sql in statements:
                conn.execute(sql)
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
