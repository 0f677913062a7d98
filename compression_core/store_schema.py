"""The store's schema: its tables and key columns, the version number in the file, the migrations up to it.

A record's key is (model fingerprint, dataset, split, limit, config hash, task); `key_tuple` turns a key or record
dict into the values of the key columns `KEY_COLS`, which every table shares (the task rides in the config hash
column, see `key_tuple`).

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

KEY_FIELDS = ("fingerprint", "dataset", "split", "limit", "config_hash")
FULL_SPLIT = -1  # stored in the `limit_n` column when the whole split was evaluated (limit None)
SCHEMA_VERSION = 2  # the `PRAGMA user_version` this build reads and writes
DEFAULT_TASK = "classify"  # the task of a key that names none (records from before tasks)
UNKNOWN_ENGINE = "unknown"  # engine_version of records stored before records carried one


class StoreError(ValueError):
    """The store file cannot be used, or a record or key lacks a field; the one-line message says which."""


# Version 1's tables, created on every open (idempotent); changes to existing tables go in MIGRATIONS
TABLES = """
CREATE TABLE IF NOT EXISTS records (
    fingerprint TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    split       TEXT NOT NULL,
    limit_n     INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (fingerprint, dataset, split, limit_n, config_hash)
);
CREATE INDEX IF NOT EXISTS records_by_model ON records (model, dataset, split);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    label      TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_members (
    run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    split       TEXT NOT NULL,
    limit_n     INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    added_at    REAL NOT NULL,
    PRIMARY KEY (run_id, fingerprint, dataset, split, limit_n, config_hash)
);
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    split       TEXT NOT NULL,
    limit_n     INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    owner       TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (fingerprint, dataset, split, limit_n, config_hash)
);
"""
KEY_COLS = "fingerprint, dataset, split, limit_n, config_hash"
HIT = f"({KEY_COLS}) = (?,?,?,?,?) AND engine_version = ?"  # a cache hit: same key, this engine's version


def key_cols(alias: str) -> str:
    """The key columns qualified by a table alias, e.g. 'm.fingerprint, m.dataset, ...'."""
    return ", ".join(f"{alias}.{c}" for c in KEY_COLS.split(", "))


def key_tuple(key: dict) -> tuple:
    """(fingerprint, dataset, split, limit_n, config_hash column) from a key or record dict.

    The task is part of the key without a column of its own: the config_hash column holds `HASH` for task
    classify (or a key without a task: every record before tasks existed) and `HASH:TASK` for the others, so a
    store keeps serving its classify records unchanged and records of two tasks never collide.
    """
    missing = [f for f in KEY_FIELDS if f not in key]
    if missing:
        raise StoreError(f"record/key lacks field(s) {', '.join(missing)}; a key needs {', '.join(KEY_FIELDS)}")
    limit, task = key["limit"], key.get("task") or DEFAULT_TASK
    config_col = str(key["config_hash"]) if task == DEFAULT_TASK else f"{key['config_hash']}:{task}"
    return (str(key["fingerprint"]), str(key["dataset"]), str(key["split"]),
            FULL_SPLIT if limit is None else int(limit), config_col)


def split_config_col(value: str) -> tuple[str, str]:
    """(config_hash, task) of a config_hash column value (see `key_tuple`)."""
    config_hash, _, task = value.partition(":")
    return config_hash, task or DEFAULT_TASK


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
