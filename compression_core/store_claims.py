"""Claims in the result store: which process computes a config, so overlapping sweeps compute each config once.

A claim is a row (key, owner, expires_at). A sweep claims configs before it runs them, renews its claims while it
runs (a heartbeat) and releases them at the end; a claim not renewed within its lifetime, or whose owner process
on this host has died, is free again. `Store` gets these methods from `ClaimsMixin`.
"""
from __future__ import annotations

import os
import socket
import time
import uuid

from ._version import __version__
from .store_schema import HIT, KEY_COLS, key_tuple


CLAIM_TTL_S = 60.0  # a claim not renewed for this long is free again (its owner stopped heartbeating)


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


class ClaimsMixin:
    """The claim methods of `Store`; they use its `_write()` transaction and `_query()`."""

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
        k = key_tuple(key)
        now = time.time()
        with self._write() as c:
            if c.execute(f"SELECT 1 FROM records WHERE {HIT}", k + (__version__,)).fetchone():
                return False  # this engine already has it; a record of another engine version is recomputed
            row = c.execute(f"SELECT owner, expires_at FROM claims WHERE ({KEY_COLS}) = (?,?,?,?,?)", k).fetchone()
            if row and row[0] != owner and row[1] > now and _owner_alive(row[0]):
                return False
            c.execute(f"INSERT OR REPLACE INTO claims ({KEY_COLS}, owner, expires_at) VALUES (?,?,?,?,?,?,?)",
                      k + (owner, now + ttl_s))
            return True

    def claim_owner(self, key: dict) -> str | None:
        """The owner holding a live claim on `key`, or None (no claim, expired, or its process died)."""
        rows = self._query(f"SELECT owner, expires_at FROM claims WHERE ({KEY_COLS}) = (?,?,?,?,?)",
                           key_tuple(key))
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
