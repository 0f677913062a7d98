"""Bring-your-own inputs: the operator's allow-list of model factories and uploaded weight files.

Uploaded weights are held in memory by content id (the newest `MAX_HELD_UPLOADS` for the whole server) until the
model loads; they reach disk only as a private temp file while `load_upload` reads them. Each browser session may
upload `MAX_UPLOADS_PER_SESSION` files, `MAX_UPLOAD_BYTES_PER_SESSION` bytes in all.

Model factories name code, so they load only from the module prefixes the operator lists in
`$COMPRESSION_EXPLORER_ALLOWED_FACTORIES` (none by default).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st

from compression_core.models import WEIGHT_SUFFIXES, LoadedModel, ModelLoadError, check_model_name, load_model
from compression_core.models.specs import is_module_prefix

UPLOAD_DIR = Path(tempfile.gettempdir()) / "compression-explorer-uploads"  # files live here only while loading
MAX_UPLOADS_PER_SESSION = 8  # distinct weight files one browser session may upload
MAX_UPLOAD_BYTES_PER_SESSION = 1 << 30  # 1 GiB in all (one file is capped by server.maxUploadSize)
MAX_HELD_UPLOADS = 4  # uploads held in memory, waiting to be loaded, for the whole server
ALLOWED_FACTORIES_ENV = "COMPRESSION_EXPLORER_ALLOWED_FACTORIES"  # comma list of module prefixes; unset = none


def allowed_factories() -> tuple[str, ...]:
    """The module prefixes the operator allows model factories from (`$COMPRESSION_EXPLORER_ALLOWED_FACTORIES`).

    Returns:
        e.g. ("mypkg.models", "team_nets"); empty (the default) allows no factory: built-ins, `torchvision:NAME`
        architectures and uploaded state dicts only.

    Raises:
        ModelLoadError: an entry is not a dotted module name.
    """
    prefixes = tuple(p.strip() for p in os.environ.get(ALLOWED_FACTORIES_ENV, "").split(",") if p.strip())
    bad = [p for p in prefixes if not is_module_prefix(p)]
    if bad:
        raise ModelLoadError(f"{ALLOWED_FACTORIES_ENV} holds {bad[0]!r}, not a dotted module name like "
                             "mypkg.models; the operator must fix this server setting")
    return prefixes


class _HeldUploads:
    """Uploaded weights waiting to be loaded, in memory by content id (name, bytes): the newest few only."""

    def __init__(self, max_held: int = MAX_HELD_UPLOADS) -> None:
        self._files: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_held = max_held

    def put(self, weights_id: str, name: str, data: bytes) -> None:
        with self._lock:
            self._files[weights_id] = (name, data)
            self._files.move_to_end(weights_id)
            while len(self._files) > self.max_held:
                self._files.popitem(last=False)

    def take(self, weights_id: str) -> tuple[str, bytes] | None:
        with self._lock:
            return self._files.pop(weights_id, None)


@st.cache_resource(show_spinner=False)
def _held_uploads() -> _HeldUploads:
    return _HeldUploads()


def save_upload(filename: str, data: bytes, session_uploads: dict[str, int]) -> str:
    """Hold uploaded weights in memory for loading and return their content id (same bytes -> same id).

    Nothing is written to disk here; the bytes reach a private temp file only while the model loads.

    Args:
        filename: the name the user uploaded, e.g. "net.safetensors".
        data: the file's bytes.
        session_uploads: this session's uploads so far, {content id: bytes} (session state); updated.

    Raises:
        ModelLoadError: the name does not end in .safetensors, .pt or .pth, or the session's upload quota
            (MAX_UPLOADS_PER_SESSION files, MAX_UPLOAD_BYTES_PER_SESSION bytes) would be exceeded.
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(f"weights file {filename!r} must end in {', '.join(WEIGHT_SUFFIXES)}")
    weights_id = f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    if weights_id not in session_uploads:
        if len(session_uploads) >= MAX_UPLOADS_PER_SESSION:
            raise ModelLoadError(f"this session has uploaded {len(session_uploads)} weight files, the limit is "
                                 f"{MAX_UPLOADS_PER_SESSION}; reload the page to start a new session")
        used = sum(session_uploads.values())
        if used + len(data) > MAX_UPLOAD_BYTES_PER_SESSION:
            raise ModelLoadError(f"{filename} ({len(data) / 2**20:.1f} MiB) would take this session's uploads past "
                                 f"{MAX_UPLOAD_BYTES_PER_SESSION / 2**20:.0f} MiB ({used / 2**20:.1f} MiB used); "
                                 f"reload the page to start a new session")
        session_uploads[weights_id] = len(data)
    _held_uploads().put(weights_id, filename, data)
    return weights_id


def load_upload(factory: str, weights_id: str, num_classes: int | None, allowed: tuple[str, ...]) -> LoadedModel:
    """Build `factory` with the held upload `weights_id`, through a temp file deleted as soon as it is read."""
    check_model_name(factory, allowed_factories=allowed)  # a refused spec is refused before the upload is touched
    held = _held_uploads().take(weights_id)
    if held is None:
        raise ModelLoadError(f"the uploaded weights {weights_id} are no longer held by the server; upload the "
                             f"file again")
    name, data = held
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=UPLOAD_DIR) as folder:  # private to this load; removed, even on error
        path = Path(folder) / f"weights{Path(weights_id).suffix}"
        path.write_bytes(data)
        try:
            return load_model(factory, weights=str(path), num_classes=num_classes, allowed_factories=allowed)
        except ModelLoadError as e:  # name the file as the user knows it, not by its temp path
            raise ModelLoadError(str(e).replace(str(path), name)) from None
