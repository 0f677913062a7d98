"""The result store: one SQLite row per evaluated (model fingerprint, dataset, split, limit, config hash).

The file is opened in WAL mode with a busy timeout, so a sweep process can write while the dashboard reads,
and a killed writer loses at most the transaction in flight. Records are kept as the full JSON the engine
produced. Sweeps group their records into *runs* (a run id + a label); a record can belong to several runs
(a resumed or repeated sweep reuses stored records), which is what lets the Runs page overlay two runs.

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
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from ._version import __version__
from .record import RECORD_FIELDS
from .store_schema import SCHEMA_VERSION, UNKNOWN_ENGINE, migrate, newer_schema, read_only_uri, schema_version

ENV_VAR = "COMPRESSION_EXPLORER_STORE"
KEY_FIELDS = ("fingerprint", "dataset", "split", "limit", "config_hash")
FULL_SPLIT = -1  # stored in the `limit_n` column when the whole split was evaluated (limit None)
TRANSIENT_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.added_by)  # added after the run; not stored


CLAIM_TTL_S = 60.0  # a claim not renewed for this long is free again (its owner stopped heartbeating)


class StoreError(ValueError):
    """The store file cannot be used, or a record or key lacks a field; the one-line message says which."""


class _Any:
    """Sentinel for `records(limit=ANY)`: do not filter on the evaluation subset size."""

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()

# Version 1's tables, created on every open (idempotent); changes to existing tables go in store_schema.MIGRATIONS
_SCHEMA = """
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
_KEY_COLS = "fingerprint, dataset, split, limit_n, config_hash"
_HIT = f"({_KEY_COLS}) = (?,?,?,?,?) AND engine_version = ?"  # a cache hit: same key, this engine's version


def _cols(alias: str) -> str:
    """The key columns qualified by a table alias, e.g. 'm.fingerprint, m.dataset, ...'."""
    return ", ".join(f"{alias}.{c}" for c in _KEY_COLS.split(", "))


def default_store_path() -> Path:
    """$COMPRESSION_EXPLORER_STORE if set, else `<user cache dir>/compression-explorer/runs.sqlite`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("compression-explorer")) / "runs.sqlite"


def _key_tuple(key: dict) -> tuple:
    """(fingerprint, dataset, split, limit_n, config_hash) from a key or record dict."""
    missing = [f for f in KEY_FIELDS if f not in key]
    if missing:
        raise StoreError(f"record/key lacks field(s) {', '.join(missing)}; a key needs {', '.join(KEY_FIELDS)}")
    limit = key["limit"]
    return (str(key["fingerprint"]), str(key["dataset"]), str(key["split"]),
            FULL_SPLIT if limit is None else int(limit), str(key["config_hash"]))


def _row_record(record_json: str, created_at: float, engine_version: str) -> dict:
    record = json.loads(record_json)
    record["created_at"] = created_at
    record["engine_version"] = engine_version  # the column: 'unknown' for records stored before versions
    return record


def new_owner() -> str:
    """A claim owner id, 'host:pid:random': unique per sweep; its pid lets this host spot a dead owner at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str) -> bool:
    """False when `owner` names a process of this host that no longer exists; True otherwise (or unknown)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: only the claim's expiry can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


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


class Store:
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
                _retry_locked(lambda: self._conn.executescript(_SCHEMA), timeout_s)  # idempotent
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
        key = _key_tuple(record)
        if "model" not in record:
            raise StoreError("record lacks field model")
        body = {k: v for k, v in record.items() if k not in TRANSIENT_FIELDS}
        engine = str(record.get("engine_version", UNKNOWN_ENGINE))
        now = time.time()
        with self._write() as c:
            c.execute(
                f"INSERT OR REPLACE INTO records ({_KEY_COLS}, model, created_at, engine_version, record) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                key + (str(record["model"]), now, engine, json.dumps(body, sort_keys=True)),
            )
            c.execute(f"DELETE FROM claims WHERE ({_KEY_COLS}) = (?,?,?,?,?)", key)  # computed: nobody holds it
            if run_id is not None:
                self._add_member(c, run_id, key, now)

    def get(self, key: dict) -> dict | None:
        """The cache lookup: the record stored for `key` by this engine version, or None.

        Args:
            key: a dict with fingerprint, dataset, split, limit, config_hash (a record will do).

        A record computed by another engine version is not a hit; it stays listed by `records()`.
        """
        rows = self._query(f"SELECT record, created_at, engine_version FROM records WHERE {_HIT}",
                           _key_tuple(key) + (__version__,))
        return _row_record(*rows[0]) if rows else None

    def __contains__(self, key: dict) -> bool:
        """Whether `get(key)` finds a record."""
        return bool(self._query(f"SELECT 1 FROM records WHERE {_HIT}", _key_tuple(key) + (__version__,)))

    def delete(self, key: dict) -> bool:
        """Remove the record for `key` (and its run memberships). Returns whether a row existed."""
        k = _key_tuple(key)
        with self._write() as c:
            c.execute(f"DELETE FROM run_members WHERE ({_KEY_COLS}) = (?,?,?,?,?)", k)
            return c.execute(f"DELETE FROM records WHERE ({_KEY_COLS}) = (?,?,?,?,?)", k).rowcount > 0

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
            join = f"JOIN run_members m ON ({_cols('m')}) = ({_cols('r')}) AND m.run_id = ?"
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
        """Keys (model, fingerprint, dataset, split, limit, config_hash) of the matching records."""
        where, params = self._where(model, dataset, split, limit, fingerprint, run_id)
        rows = self._query(f"SELECT r.model, {_cols('r')} FROM records r {where} ORDER BY r.created_at, r.rowid",
                           params)
        return [{"model": m, "fingerprint": f, "dataset": d, "split": s,
                 "limit": None if n == FULL_SPLIT else n, "config_hash": h} for m, f, d, s, n, h in rows]

    def count(self, model: str | None = None, dataset: str | None = None, split: str | None = None,
              limit=ANY, *, fingerprint: str | None = None, run_id: str | None = None) -> int:
        """Number of matching records."""
        where, params = self._where(model, dataset, split, limit, fingerprint, run_id)
        return self._query(f"SELECT COUNT(*) FROM records r {where}", params)[0][0]

    # ---- runs -------------------------------------------------------------------------------------
    def new_run(self, label: str, meta: dict | None = None) -> str:
        """Register a sweep launch; returns its run id (12 hex characters).

        Args:
            label: what the user calls it, e.g. "lenet5 · int2-8 × 0-90 %".
            meta: anything JSON-serialisable worth keeping (model, dataset, the grid that was asked for).
        """
        run_id = uuid.uuid4().hex[:12]
        with self._write() as c:
            c.execute("INSERT INTO runs (run_id, label, created_at, meta) VALUES (?,?,?,?)",
                      (run_id, str(label), time.time(), json.dumps(meta or {}, sort_keys=True)))
        return run_id

    def _add_member(self, c: sqlite3.Connection, run_id: str, key: tuple, now: float) -> None:
        if not c.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            raise StoreError(f"run_id {run_id!r} is unknown; create it with Store.new_run(label)")
        c.execute(f"INSERT OR IGNORE INTO run_members (run_id, {_KEY_COLS}, added_at) VALUES (?,?,?,?,?,?,?)",
                  (run_id,) + key + (now,))

    def add_to_run(self, run_id: str, key: dict) -> None:
        """Make the stored record with `key` (or any record dict) a member of run `run_id`."""
        k = _key_tuple(key)
        with self._write() as c:
            self._add_member(c, run_id, k, time.time())

    def runs(self) -> list[dict]:
        """All runs, newest first: run_id, label, created_at, meta, n_records."""
        return self._runs()

    def _runs(self, run_id: str | None = None) -> list[dict]:
        where, params = ("WHERE r.run_id = ?", (run_id,)) if run_id is not None else ("", ())
        rows = self._query(
            "SELECT r.run_id, r.label, r.created_at, r.meta, COUNT(m.run_id) FROM runs r "
            f"LEFT JOIN run_members m ON m.run_id = r.run_id {where} GROUP BY r.run_id ORDER BY r.created_at DESC",
            params)
        return [{"run_id": i, "label": l, "created_at": t, "meta": json.loads(meta), "n_records": n}
                for i, l, t, meta, n in rows]

    def run(self, run_id: str) -> dict | None:
        """The run `run_id` as in `runs()` (run_id, label, created_at, meta, n_records), or None if unknown."""
        found = self._runs(run_id)
        return found[0] if found else None

    def run_ids(self, key: dict) -> list[str]:
        """Ids of the runs the record with `key` belongs to, oldest run first."""
        rows = self._query(
            f"SELECT m.run_id FROM run_members m JOIN runs r ON r.run_id = m.run_id "
            f"WHERE ({_cols('m')}) = (?,?,?,?,?) ORDER BY r.created_at",
            _key_tuple(key))
        return [r[0] for r in rows]

    def delete_run(self, run_id: str) -> bool:
        """Forget run `run_id` (its records stay in the store). Returns whether it existed."""
        with self._write() as c:
            c.execute("DELETE FROM run_members WHERE run_id = ?", (run_id,))
            return c.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0


    # ---- claims: which process computes a config ----------------------------------------------------
    def claim(self, key: dict, owner: str, ttl_s: float = CLAIM_TTL_S) -> bool:
        """Reserve the config of `key` for `owner` unless this engine's record is stored or another live owner holds it.

        Args:
            key: a key or record dict (fingerprint, dataset, split, limit, config_hash).
            owner: who computes it, from `new_owner()`.
            ttl_s: the claim lapses this many seconds from now unless renewed (`renew_claims`).

        Returns:
            True when `owner` now holds the claim (renewed if it already did); False when the record is stored or
            another owner holds an unexpired claim and its process is not known to be dead.
        """
        k = _key_tuple(key)
        now = time.time()
        with self._write() as c:
            if c.execute(f"SELECT 1 FROM records WHERE {_HIT}", k + (__version__,)).fetchone():
                return False  # this engine already has it; a record of another engine version is recomputed
            row = c.execute(f"SELECT owner, expires_at FROM claims WHERE ({_KEY_COLS}) = (?,?,?,?,?)", k).fetchone()
            if row and row[0] != owner and row[1] > now and _owner_alive(row[0]):
                return False
            c.execute(f"INSERT OR REPLACE INTO claims ({_KEY_COLS}, owner, expires_at) VALUES (?,?,?,?,?,?,?)",
                      k + (owner, now + ttl_s))
            return True

    def claim_owner(self, key: dict) -> str | None:
        """The owner holding a live claim on `key`, or None (no claim, expired, or its process died)."""
        rows = self._query(f"SELECT owner, expires_at FROM claims WHERE ({_KEY_COLS}) = (?,?,?,?,?)",
                           _key_tuple(key))
        if not rows or rows[0][1] <= time.time() or not _owner_alive(rows[0][0]):
            return None
        return rows[0][0]

    def renew_claims(self, owner: str, ttl_s: float = CLAIM_TTL_S) -> int:
        """Push the expiry of every claim of `owner` to `ttl_s` from now (its heartbeat). Returns how many."""
        with self._write() as c:
            return c.execute("UPDATE claims SET expires_at = ? WHERE owner = ?", (time.time() + ttl_s, owner)).rowcount

    def release_claims(self, owner: str) -> int:
        """Drop every claim of `owner` (its sweep ended). Returns how many there were."""
        with self._write() as c:
            return c.execute("DELETE FROM claims WHERE owner = ?", (owner,)).rowcount
