"""Merging result stores: the records and runs of several store files unioned into one, e.g. one store per Slurm job.

One row per key — model fingerprint, dataset, split, limit, config hash and task, the store's own key: a key `into`
lacks is added; a key both hold keeps the record the store wrote last (its `created_at`; on a tie the one already
in `into` stays), as a later `put` would have. Records are copied as stored, `created_at` and `engine_version`
included, so merging the same stores again, or a store into a copy of itself, changes nothing. Runs (id, label,
meta) and their memberships are carried across (run ids are random: an equal id is the same run); claims are not
(they belong to sweeps of the source). All inputs go in one write transaction: a merge that fails changes nothing.

Inputs must have this build's schema version (`store_schema.SCHEMA_VERSION`); an older one is upgraded in place
first with `upgrade_store` (CLI: `store upgrade PATH`), a newer one is merged by the build that wrote it. `into`
may be a new file or an existing store (an older one is upgraded, as every command that opens it does).

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name, h in (("shard-1.db", "aaaa"), ("shard-2.db", "bbbb")):
    ...     with Store(folder / name) as s:
    ...         s.put({"model": "m", "fingerprint": "f", "dataset": "d", "split": "test", "limit": None,
    ...                "config_hash": h}, run_id=s.new_run(name))
    >>> summary = merge_stores([folder / "shard-1.db", folder / "shard-2.db"], folder / "all.db")
    >>> summary.added, summary.kept, summary.runs_added, summary.records
    (2, 0, 2, 2)
    >>> merge_stores([folder / "shard-1.db"], folder / "all.db").added    # again: nothing new
    0
"""
from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import error_line, shown
from .store import Store
from .store_schema import KEY_COLS, SCHEMA_VERSION, StoreError, schema_version

STORE_TABLES = ("records", "runs", "run_members")  # what makes a SQLite file a result store
RECORD_COLS = f"{KEY_COLS}, model, created_at, engine_version, record"
MEMBER_COLS = f"run_id, {KEY_COLS}, added_at"


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_stores` did; `line()` is the one-line summary the CLI prints.

    Attributes:
        into: the store merged into.
        sources: how many input stores were read.
        added: records whose key `into` lacked.
        replaced: records `into` held (or an earlier input brought) that a newer one replaced.
        kept: records `into` already had as new or newer; nothing changed for them.
        runs_added, members_added: runs and run memberships new to `into`.
        records, runs: what `into` holds after the merge.
    """

    into: str
    sources: int
    added: int
    replaced: int
    kept: int
    runs_added: int
    members_added: int
    records: int
    runs: int

    def line(self) -> str:
        return (f"merged {self.sources} store(s) into {self.into}: {self.added} records added, "
                f"{self.kept + self.replaced} already there ({self.replaced} replaced by a newer record), "
                f"{self.runs_added} runs added; it holds {self.records} records in {self.runs} runs")


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that only reads `path` (query_only). Not a read-only URI: that one would leave the -wal and -shm
    files of a WAL store behind, where closing the last ordinary connection removes them."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA query_only = ON")
        yield conn


def store_version(path: Path, role: str = "store") -> int:
    """The schema version of the result store file at `path`, read without writing to it.

    Args:
        path: the file.
        role: how messages name it ("input", "--into").

    Raises:
        StoreError: one line when the file is missing, a folder, not SQLite or SQLite without the store's tables.
    """
    name = f"{role} {shown(str(path))}"
    if not path.exists():
        raise StoreError(f"{name} does not exist; give result store files (SQLite, written by sweep --store)")
    if path.is_dir():
        raise StoreError(f"{name} is a folder; give a result store file, e.g. {shown(str(path / 'runs.sqlite'))}")
    try:
        with _reading(path) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = schema_version(conn)
    except sqlite3.Error as err:
        why = "not a SQLite file" if "not a database" in str(err) else error_line(err, first_line=True)
        raise StoreError(f"{name} is not a result store ({why}); give store files written by sweep --store") from None
    missing = [t for t in STORE_TABLES if t not in tables]
    if missing:
        raise StoreError(f"{name} is a SQLite file but not a result store (no {', '.join(missing)} table); give "
                         "store files written by sweep --store")
    return version


def _require_current(path: Path, version: int) -> None:
    """Refuse an input whose schema is not this build's, saying which versions and what to do."""
    name = shown(str(path))
    if version > SCHEMA_VERSION:
        raise StoreError(f"input {name} has store schema {version}, newer than this build's {SCHEMA_VERSION}; "
                         "merge it with the newer Compression Explorer that wrote it (or upgrade this one)")
    if version < SCHEMA_VERSION:
        raise StoreError(f"input {name} has store schema {version} and this build merges schema {SCHEMA_VERSION}; "
                         f"upgrade it in place first: python -m compression_core store upgrade {name}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def merge_stores(sources: Iterable[str | os.PathLike], into: str | os.PathLike) -> MergeSummary:
    """Union the records and runs of the `sources` stores into the store `into` (see the module docstring).

    Args:
        sources: store files of this build's schema version; the same file twice is merged once more, harmlessly.
        into: a new file (created) or an existing store (merged into); never one of `sources`.

    Returns:
        A `MergeSummary` of what was added, kept and replaced.

    Raises:
        StoreError: one line for a missing input, a file that is not a store, an input of another schema version,
            `into` equal to an input or a store `into` that cannot be written (newer schema, read-only). Nothing
            is written then.
    """
    paths = [Path(s).expanduser() for s in sources]
    target = Path(into).expanduser()
    if not paths:
        raise StoreError("store merge needs at least one input store")
    for path in paths:
        if _same_file(path, target):
            raise StoreError(f"--into {shown(str(target))} is also an input; merge into another file (a new one is "
                             "created) or leave it out of the inputs")
        _require_current(path, store_version(path, "input"))
    if target.exists() and (target.is_dir() or target.stat().st_size):
        store_version(target, "--into")  # a file that is not a store is refused before it is opened for writing
    counts: Counter[str] = Counter()
    with Store(target) as store:
        with store._write() as c:  # one transaction for every input
            for path in paths:
                _copy(path, c, counts)
        return MergeSummary(into=str(target), sources=len(paths), added=counts["added"],
                            replaced=counts["replaced"], kept=counts["kept"], runs_added=counts["runs"],
                            members_added=counts["members"], records=store.count(), runs=len(store.runs()))


def _copy(source: Path, c: sqlite3.Connection, counts: Counter[str]) -> None:
    """Copy the records, runs and run memberships of `source` through the target's write connection `c`."""
    with _reading(source) as src:
        src.execute("BEGIN")  # one snapshot of the source, even while a sweep still writes to it
        for row in src.execute(f"SELECT {RECORD_COLS} FROM records"):
            key, created_at = row[:5], row[6]
            held = c.execute(f"SELECT created_at FROM records WHERE ({KEY_COLS}) = (?,?,?,?,?)", key).fetchone()
            if held is not None and held[0] >= created_at:
                counts["kept"] += 1
                continue
            counts["added" if held is None else "replaced"] += 1
            c.execute(f"INSERT OR REPLACE INTO records ({RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?)", row)
        for row in src.execute("SELECT run_id, label, created_at, meta FROM runs"):
            counts["runs"] += c.execute("INSERT OR IGNORE INTO runs (run_id, label, created_at, meta) "
                                        "VALUES (?,?,?,?)", row).rowcount
        for row in src.execute(f"SELECT {MEMBER_COLS} FROM run_members"):
            counts["members"] += c.execute(f"INSERT OR IGNORE INTO run_members ({MEMBER_COLS}) "
                                           "VALUES (?,?,?,?,?,?,?)", row).rowcount


def upgrade_store(path: str | os.PathLike) -> tuple[int, int]:
    """Migrate the store at `path` in place to this build's schema (what opening it with `Store` does).

    Returns:
        (schema version before, version after); equal when it was already current.

    Raises:
        StoreError: the file is missing or not a store (one line), or its schema is newer than this build's.
    """
    store_path = Path(path).expanduser()
    before = store_version(store_path)
    if before > SCHEMA_VERSION:
        raise StoreError(f"store {shown(str(store_path))} has schema {before}, newer than this build's "
                         f"{SCHEMA_VERSION}; it needs no upgrade, only a newer Compression Explorer")
    with Store(store_path):
        pass
    return before, SCHEMA_VERSION
