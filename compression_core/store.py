"""The result store: one SQLite row per evaluated (model fingerprint, dataset, split, limit, config hash, task).

The file is opened in WAL mode with a busy timeout, so a sweep process can write while the dashboard reads,
and a killed writer loses at most the transaction in flight. Records are kept as the full JSON the engine
produced. Sweeps group their records into *runs* (a run id + a label); a record can belong to several runs
(a resumed or repeated sweep reuses stored records), which is what lets the Runs page overlay two runs.
The tables and key columns are in `store_schema`, the run methods in `store_runs`, the claims that let
several sweeps share a store in `store_claims`; `Store` combines them.

Versions. Each record carries the `engine_version` that computed it (also a column); `get` serves only records
of this engine's version, so an upgrade recomputes instead of reusing old numbers (older records stay listed).
The file's schema version is `PRAGMA user_version` (0 with tables = version 1, before versioning); opening an
older store migrates it in place, and a store written by a newer build is opened read-only and never rewritten.

Example:
    >>> import pathlib, tempfile
    >>> from compression_core import CompressionConfig, Experiment, QuantSpec, load_dataset, load_model
    >>> exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), device="cpu")
    >>> config = CompressionConfig(quant=QuantSpec(bits=4))
    >>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "runs.sqlite")
    >>> store.put(exp.run(config))             # upsert by key
    >>> store.get(exp.key(config))["label"]    # the record dict, or None
    'int4 channel sym minmax'
    >>> run = store.new_run("int4 vs int8", meta={"model": "digits-cnn"})
    >>> store.add_to_run(run, exp.key(config))
    >>> store.count(), len(store.runs())
    (1, 1)
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from ._version import __version__
from .record import RECORD_FIELDS
from .store_claims import CLAIM_TTL_S, ClaimsMixin, new_owner
from .store_runs import RunsMixin
from .store_schema import (FULL_SPLIT, HIT, KEY_COLS, KEY_FIELDS, SCHEMA_VERSION, TABLES, UNKNOWN_ENGINE, StoreError,
                           key_cols, key_tuple, migrate, newer_schema, read_only_uri, schema_version,
                           split_config_col)

# importable from here as before the split into store_schema / store_runs / store_claims
__all__ = ["ANY", "CLAIM_TTL_S", "ENV_VAR", "FULL_SPLIT", "KEY_FIELDS", "SCHEMA_VERSION", "TRANSIENT_FIELDS", "Store",
           "StoreError", "default_store_path", "new_owner"]

ENV_VAR = "COMPRESSION_EXPLORER_STORE"
TRANSIENT_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.added_by)  # added after the run; not stored


class _Any:
    """Sentinel for `records(limit=ANY)`: do not filter on the evaluation subset size."""

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


def default_store_path() -> Path:
    """$COMPRESSION_EXPLORER_STORE if set, else `<user cache dir>/compression-explorer/runs.sqlite`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("compression-explorer")) / "runs.sqlite"


def _row_record(record_json: str, created_at: float, engine_version: str) -> dict:
    record = json.loads(record_json)
    record["created_at"] = created_at
    record["engine_version"] = engine_version  # the column: 'unknown' for records stored before versions
    return record


def _open_error(path: Path, error: Exception) -> StoreError:
    """One line naming the store file, what is wrong with it and what to do."""
    shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}…{str(path)[-40:]}"
    fix = f"give another path with --store or ${ENV_VAR}"
    text = str(error).lower()
    if os.path.isdir(path):  # never raises, even for a too-long path
        why = f"is a directory; {fix}, e.g. {shown}/runs.sqlite"
    elif "not a database" in text:
        why = f"is not a SQLite file; {fix}, or move the file away"
    elif "readonly" in text or isinstance(error, PermissionError):
        why = f"cannot be written (read-only); make it writable or {fix}"
    elif isinstance(error, OSError) and error.strerror:
        why = f"cannot be created ({error.strerror.lower()}); {fix}"
    else:
        why = f"cannot be opened ({text}: too long a path, a missing folder or no permission); {fix}"
    return StoreError(f"result store {shown} {why}")


def _retry_locked(operation, timeout_s: float):
    """Run `operation`, retrying while SQLite says the database is locked, for at most `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Store(RunsMixin, ClaimsMixin):
    """SQLite store of evaluation records; safe to share between threads and processes.

    Args:
        path: the SQLite file; None means `default_store_path()`. Parent folders are created.

    One connection is shared by all threads of a process behind a lock (SQLite calls are short); other
    processes are coordinated by SQLite itself (WAL, `busy_timeout`, `BEGIN IMMEDIATE` for writes).
    Records returned by the store carry an extra `created_at` (Unix seconds of the last `put`).
    `read_only` is the one-line refusal when the file's schema is newer than this build (reads work, every
    write raises StoreError with it), else None.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.read_only = newer_schema(self.path)
            if self.read_only:  # a newer build's store: read it, never write or migrate it
                self._conn = sqlite3.connect(read_only_uri(self.path), uri=True, timeout=timeout_s,
                                             isolation_level=None, check_same_thread=False)
                return
            # isolation_level=None: we issue BEGIN ourselves, so write transactions take the lock up front
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                         check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise _open_error(self.path, e) from None
        try:
            self._setup(timeout_s)
        except sqlite3.Error as e:
            self._conn.close()
            raise _open_error(self.path, e) from None

    def _setup(self, timeout_s: float) -> None:
        """Busy timeout, WAL, foreign keys, the schema and its migrations on a fresh connection."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        # switching a new file to WAL needs an exclusive lock, and SQLite answers "locked" at once (no busy
        # handler) when another process is opening the same new file: retry until the timeout
        _retry_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL"), timeout_s)
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._lock:
            try:
                _retry_locked(lambda: self._conn.executescript(TABLES), timeout_s)  # idempotent
                if schema_version(self._conn) < SCHEMA_VERSION:
                    _retry_locked(self._migrate, timeout_s)
            except sqlite3.OperationalError as e:
                # a read-only store that already has its records stays readable; each write then fails alone
                has_records = self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
                if "readonly" not in str(e) or not has_records:
                    raise

    # ---- plumbing ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Upgrade an older store in place, in one write transaction, so concurrent openers migrate it once."""
        with self._write() as c:
            migrate(c)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE write transaction under the thread lock: committed on success, rolled back on error."""
        if self.read_only:
            raise StoreError(self.read_only)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- records ----------------------------------------------------------------------------------
    def put(self, record: dict, run_id: str | None = None) -> None:
        """Insert or replace `record` (keyed by its fingerprint/dataset/split/limit/config_hash).

        Args:
            record: an engine record; must contain the key fields and `model`. Fields added after the run
                (`TRANSIENT_FIELDS`: `cached`, `created_at`) are not stored; a record without
                `engine_version` is stored as 'unknown' and is then never a cache hit.
            run_id: also add the record to this run (see `new_run`).
        """
        key = key_tuple(record)
        if "model" not in record:
            raise StoreError("record lacks field model")
        body = {k: v for k, v in record.items() if k not in TRANSIENT_FIELDS}
        engine = str(record.get("engine_version", UNKNOWN_ENGINE))
        now = time.time()
        with self._write() as c:
            c.execute(
                f"INSERT OR REPLACE INTO records ({KEY_COLS}, model, created_at, engine_version, record) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                key + (str(record["model"]), now, engine, json.dumps(body, sort_keys=True)),
            )
            c.execute(f"DELETE FROM claims WHERE ({KEY_COLS}) = (?,?,?,?,?)", key)  # computed: nobody holds it
            if run_id is not None:
                self._add_member(c, run_id, key, now)

    def get(self, key: dict) -> dict | None:
        """The cache lookup: the record stored for `key` by this engine version, or None.

        Args:
            key: a dict with fingerprint, dataset, split, limit, config_hash (a record will do).

        A record computed by another engine version is not a hit; it stays listed by `records()`.
        """
        rows = self._query(f"SELECT record, created_at, engine_version FROM records WHERE {HIT}",
                           key_tuple(key) + (__version__,))
        return _row_record(*rows[0]) if rows else None

    def __contains__(self, key: dict) -> bool:
        """Whether `get(key)` finds a record."""
        return bool(self._query(f"SELECT 1 FROM records WHERE {HIT}", key_tuple(key) + (__version__,)))

    def delete(self, key: dict) -> bool:
        """Remove the record for `key` (and its run memberships). Returns whether a row existed."""
        k = key_tuple(key)
        with self._write() as c:
            c.execute(f"DELETE FROM run_members WHERE ({KEY_COLS}) = (?,?,?,?,?)", k)
            return c.execute(f"DELETE FROM records WHERE ({KEY_COLS}) = (?,?,?,?,?)", k).rowcount > 0

    def _where(self, model, dataset, split, limit, fingerprint, run_id) -> tuple[str, tuple]:
        conds, params = [], []
        for col, val in (("r.model", model), ("r.dataset", dataset), ("r.split", split),
                         ("r.fingerprint", fingerprint)):
            if val is not None:
                conds.append(f"{col} = ?")
                params.append(val)
        if limit is not ANY:
            conds.append("r.limit_n = ?")
            params.append(FULL_SPLIT if limit is None else int(limit))
        join = ""
        if run_id is not None:
            join = f"JOIN run_members m ON ({key_cols('m')}) = ({key_cols('r')}) AND m.run_id = ?"
            params.insert(0, run_id)
        return join + (" WHERE " + " AND ".join(conds) if conds else ""), tuple(params)

    def records(self, model: str | None = None, dataset: str | None = None, split: str | None = None,
                limit=ANY, *, fingerprint: str | None = None, run_id: str | None = None) -> list[dict]:
        """Stored records of any engine version (each carries its `engine_version`), oldest first, filtered.

        Args:
            model, dataset, split, fingerprint: exact matches; None = any.
            limit: evaluation subset size; None = the full split only; ANY (default) = any.
            run_id: only records that belong to this run.
        """
        where, params = self._where(model, dataset, split, limit, fingerprint, run_id)
        rows = self._query(f"SELECT r.record, r.created_at, r.engine_version FROM records r {where} "
                           "ORDER BY r.created_at, r.rowid", params)
        return [_row_record(*row) for row in rows]

    def keys(self, model: str | None = None, dataset: str | None = None, split: str | None = None,
             limit=ANY, *, fingerprint: str | None = None, run_id: str | None = None) -> list[dict]:
        """Keys (model, fingerprint, dataset, split, limit, config_hash, task) of the matching records."""
        where, params = self._where(model, dataset, split, limit, fingerprint, run_id)
        rows = self._query(f"SELECT r.model, {key_cols('r')} FROM records r {where} ORDER BY r.created_at, r.rowid",
                           params)
        return [{"model": m, "fingerprint": f, "dataset": d, "split": s, "limit": None if n == FULL_SPLIT else n,
                 **dict(zip(("config_hash", "task"), split_config_col(h)))} for m, f, d, s, n, h in rows]

    def count(self, model: str | None = None, dataset: str | None = None, split: str | None = None,
              limit=ANY, *, fingerprint: str | None = None, run_id: str | None = None) -> int:
        """Number of matching records."""
        where, params = self._where(model, dataset, split, limit, fingerprint, run_id)
        return self._query(f"SELECT COUNT(*) FROM records r {where}", params)[0][0]
