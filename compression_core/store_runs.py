"""Runs in the result store: a sweep launch (id, label, meta) and the stored records it produced or reused.

A record can belong to several runs (a resumed or repeated sweep reuses stored records), which is what lets the
Runs page overlay two runs. `Store` gets these methods from `RunsMixin`.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid

from .store_schema import KEY_COLS, StoreError, key_cols, key_tuple


class RunsMixin:
    """The run methods of `Store`; they use its `_write()` transaction and `_query()`."""

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
        c.execute(f"INSERT OR IGNORE INTO run_members (run_id, {KEY_COLS}, added_at) VALUES (?,?,?,?,?,?,?)",
                  (run_id,) + key + (now,))

    def add_to_run(self, run_id: str, key: dict) -> None:
        """Make the stored record with `key` (or any record dict) a member of run `run_id`."""
        k = key_tuple(key)
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
            f"WHERE ({key_cols('m')}) = (?,?,?,?,?) ORDER BY r.created_at",
            key_tuple(key))
        return [r[0] for r in rows]

    def delete_run(self, run_id: str) -> bool:
        """Forget run `run_id` (its records stay in the store). Returns whether it existed."""
        with self._write() as c:
            c.execute("DELETE FROM run_members WHERE run_id = ?", (run_id,))
            return c.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0
