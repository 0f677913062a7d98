"""The on-disk cache of decoded image folders: each image is decoded once, later loads read the uint8 arrays back.

Key: sha256 of the folder's resolved path, every listed image's relative path, size and mtime (ns), the transform
preset and `FORMAT`; changing, adding or removing an image, or another preset, is another key. One `.npz` file per
key (numpy arrays only, read with `allow_pickle=False`), written to a temporary file and renamed into place, so a
reader never sees half a file. Where: $COMPRESSION_EXPLORER_DECODED, else `<user cache dir>/compression-explorer/
decoded`. The cache only saves time: a cache that cannot be read or written is decoded around, never an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import platformdirs

ENV_VAR = "COMPRESSION_EXPLORER_DECODED"
FORMAT = 1  # bump when the decoding changes what the arrays hold


def default_cache_dir() -> Path:
    """$COMPRESSION_EXPLORER_DECODED if set, else `<user cache dir>/compression-explorer/decoded`."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("compression-explorer")) / "decoded"


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
    """({split: (x, y)}, images skipped) stored under `key`, or None when there is none or it cannot be read."""
    path = (cache_dir or default_cache_dir()) / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            splits = [name[2:] for name in data.files if name.startswith("x_")]
            return {s: (data[f"x_{s}"], data[f"y_{s}"]) for s in splits}, int(data["skipped"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def write_cache(key: str, cache_dir: Path | None, raw: dict[str, tuple[np.ndarray, np.ndarray]], skipped: int) -> None:
    """Store the decoded arrays under `key` atomically (temporary file + rename); a failure leaves no file."""
    folder = cache_dir or default_cache_dir()
    arrays = {f"{kind}_{split}": a for split, (x, y) in raw.items() for kind, a in (("x", x), ("y", y))}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, skipped=np.int64(skipped), **arrays)
            os.replace(tmp, folder / f"{key}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return  # a read-only or full disk: the next load decodes again
