"""The on-disk cache of decoded image folders: each image is decoded once, later loads read the uint8 arrays back.

Key: sha256 of the folder's resolved path, every listed image's relative path, size and mtime (ns), the transform
preset and `FORMAT`; changing, adding or removing an image, or another preset, is another key. One folder per key
holding, per split, `x_SPLIT.npy` (uint8 (N, C, H, W): memory-mappable, read back in batches) and `y_SPLIT.npy`,
plus `meta.json` (splits, images skipped). An entry is built in a temporary folder (`Entry`) and renamed into
place, so a reader never sees half an entry. Where: $COMPRESSION_EXPLORER_DECODED, else `<user cache dir>/
compression-explorer/decoded`.

Size cap: after each new entry, the oldest-used entries (a read marks an entry used) are removed until the cache
holds at most $COMPRESSION_EXPLORER_DECODED_MAX_GB gigabytes (default 20); the entry just written is never removed.
The cache only saves time: a cache that cannot be read or written is decoded around, never an error.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import platformdirs

ENV_VAR = "COMPRESSION_EXPLORER_DECODED"
MAX_GB_VAR = "COMPRESSION_EXPLORER_DECODED_MAX_GB"
DEFAULT_MAX_GB = 20.0
FORMAT = 2  # bump when the decoding or the layout changes what an entry holds (1: one .npz per key)
META = "meta.json"


def default_cache_dir() -> Path:
    """$COMPRESSION_EXPLORER_DECODED if set, else `<user cache dir>/compression-explorer/decoded`."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("compression-explorer")) / "decoded"


def max_bytes() -> int:
    """The cap in bytes: $COMPRESSION_EXPLORER_DECODED_MAX_GB (a number of 10^9 bytes; bad text = the default)."""
    try:
        gb = float(os.environ.get(MAX_GB_VAR, DEFAULT_MAX_GB))
    except ValueError:
        gb = DEFAULT_MAX_GB
    return int(max(gb, 0.0) * 1e9)


def cache_key(folder: Path, files: dict[str, list[tuple[Path, int]]], transform: str) -> str:
    """sha256 hex of the folder, its listed images (relative path, size, mtime_ns, label) per split and the preset."""
    listing = []
    for split, entries in files.items():
        for path, label in entries:
            stat = path.stat()
            listing.append([split, str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns, label])
    text = json.dumps([FORMAT, str(folder.resolve()), transform, listing], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(key: str, cache_dir: Path | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int] | None:
    """({split: (x memory-mapped read-only, y)}, images skipped) stored under `key`, or None when there is none or
    it cannot be read. Reading marks the entry used (its meta file's mtime), for the size cap."""
    entry = (cache_dir or default_cache_dir()) / key
    try:
        meta = json.loads((entry / META).read_text())
        splits = {s: (np.load(entry / f"x_{s}.npy", mmap_mode="r", allow_pickle=False),
                      np.load(entry / f"y_{s}.npy", allow_pickle=False)) for s in meta["splits"]}
        os.utime(entry / META)
        return splits, int(meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_used(array_file: str | os.PathLike) -> None:
    """Mark the entry holding `array_file` as just used (a streamed split does at each pass), so the size cap
    removes entries nobody reads before one a sweep is reading."""
    try:
        os.utime(Path(array_file).parent / META)
    except OSError:
        return  # not a cache entry (a temporary decode), or gone: nothing to mark


class Entry:
    """A cache entry being written: `writer(split, shape)` streams rows into x_SPLIT.npy, `save_labels` adds
    y_SPLIT.npy, `commit(skipped)` renames the finished folder into place (and applies the size cap).

    Files are written with plain writes (no memory map), so decoding a large folder keeps nothing resident.
    Without a usable cache folder, rows go to a private temporary folder removed when the process exits.
    """

    def __init__(self, key: str, cache_dir: Path | None = None):
        self.key, self.folder = key, cache_dir or default_cache_dir()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{key[:16]}.", suffix=".tmp"))
            self.cached = True
        except OSError:  # a read-only or full disk: decode into a temporary folder, removed when the process ends
            self.tmp = Path(tempfile.mkdtemp(prefix="compression-explorer-decoded."))
            atexit.register(shutil.rmtree, self.tmp, True)
            self.cached = False
        self.splits: list[str] = []

    def writer(self, split: str, row_shape: tuple[int, ...], n: int) -> "RowWriter":
        self.splits.append(split)
        return RowWriter(self.tmp / f"x_{split}.npy", row_shape, n)

    def save_labels(self, split: str, y: np.ndarray) -> None:
        np.save(self.tmp / f"y_{split}.npy", np.asarray(y, dtype=np.int64))

    def commit(self, skipped: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Finish the entry; returns its arrays ({split: (x memory-mapped, y)})."""
        (self.tmp / META).write_text(json.dumps({"splits": self.splits, "skipped": skipped}))
        where = self.tmp
        if self.cached:
            where = self.folder / self.key
            try:
                os.replace(self.tmp, where)
            except OSError:  # another process finished the same entry first: use theirs
                shutil.rmtree(self.tmp, ignore_errors=True)
            evict(self.folder, max_bytes(), keep=self.key)
        return {s: (np.load(where / f"x_{s}.npy", mmap_mode="r"), np.load(where / f"y_{s}.npy")) for s in self.splits}

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class RowWriter:
    """Writes the rows of one uint8 array (N, *row_shape) to a .npy file in order; `close(n_written)` fixes the
    header when fewer rows came than announced (images skipped as corrupt)."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], n: int):
        self.path, self.row_shape, self.n, self.written = path, tuple(row_shape), n, 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, _header((n, *self.row_shape)))
        self.data_start = self.file.tell()

    def write(self, row: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        self.written += 1

    def close(self) -> None:
        if self.written == self.n:
            self.file.close()
            return
        header = _header((self.written, *self.row_shape))
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(self.file, header)
        if self.file.tell() == self.data_start:  # same header length: the rows are where they belong
            self.file.truncate(self.data_start + self.written * int(np.prod(self.row_shape)))
            self.file.close()
            return
        self.file.close()
        _rewrite(self.path, header, self.data_start, self.written * int(np.prod(self.row_shape)))


def _header(shape: tuple[int, ...]) -> dict:
    return {"descr": "|u1", "fortran_order": False, "shape": shape}


def _rewrite(path: Path, header: dict, data_start: int, n_bytes: int, chunk: int = 1 << 24) -> None:
    """Copy the rows of `path` under a header of another length (chunked: bounded memory)."""
    tmp = path.with_suffix(".rewrite")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, header)
        src.seek(data_start)
        while n_bytes > 0:
            block = src.read(min(chunk, n_bytes))
            dst.write(block)
            n_bytes -= len(block)
    os.replace(tmp, path)


def _entry_bytes(entry: Path) -> int:
    return sum(f.stat().st_size for f in entry.iterdir() if f.is_file())


def evict(cache_dir: Path, limit: int, keep: str | None = None) -> list[str]:
    """Remove the oldest-used entries until the cache holds at most `limit` bytes; returns the removed keys.

    "Used" is the mtime of an entry's meta file (written when built, touched on every read); `keep` is never
    removed. Entries of other processes being built (`*.tmp`) and unreadable entries are left alone.
    """
    try:
        entries = [(e.joinpath(META).stat().st_mtime, e.name, _entry_bytes(e)) for e in cache_dir.iterdir()
                   if e.is_dir() and not e.name.endswith(".tmp") and e.joinpath(META).is_file()]
    except OSError:
        return []
    total, removed = sum(size for _, _, size in entries), []
    for _, name, size in sorted(entries):
        if total <= limit:
            break
        if name == keep:
            continue
        shutil.rmtree(cache_dir / name, ignore_errors=True)
        total -= size
        removed.append(name)
    return removed
