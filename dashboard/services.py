"""The dashboard's service layer: the only place with Streamlit caches, between the pages and the engine.

`st.cache_resource` holds the pristine, shared objects (datasets, loaded models, `Experiment`s, compressed
models): one copy per server process, shared by every browser session and never mutated — the engine's
`compress` is out-of-place and the UI only reads them. `st.cache_data` holds results (records, histograms,
sensitivity tables) keyed on the selection and the config JSON, so repeating a config is instant.

Every function takes a `frame.Selection` (model, dataset, device, limit, factory, weights_id, num_classes) and,
where a config is involved, the config as canonical JSON (`CompressionConfig.to_json()`), which is also its cache key.
User mistakes raise one of `USER_ERRORS`; pages show `error_line(e)` with `st.error` and carry on.

Model factories name code, so the dashboard loads them only from the module prefixes the operator lists in
`$COMPRESSION_EXPLORER_ALLOWED_FACTORIES` (none by default); `frame` loads a spec only after a Load click.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd
import streamlit as st
import torch

from compression_core import histograms, sensitivity
from compression_core.compressed import CompressedModel, LayerCompression
from compression_core.config import CompressionConfig, ConfigError
from compression_core.datasets import Dataset, DatasetUnavailable, list_datasets, load_dataset
from compression_core.evaluate import DeviceUnavailable
from compression_core.experiment import Experiment, ExperimentError
from compression_core.models import LoadedModel, ModelLoadError, check_model_name, list_models, load_model
from compression_core.models.specs import USER_CODE_ERRORS, is_module_prefix
from compression_core.store import Store, StoreError

if TYPE_CHECKING:
    from dashboard.frame import Selection

USER_ERRORS = (ModelLoadError, DatasetUnavailable, ConfigError, DeviceUnavailable, StoreError, ExperimentError)
UPLOAD_DIR = Path(tempfile.gettempdir()) / "compression-explorer-uploads"  # files live here only while loading
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_UPLOADS_PER_SESSION = 8  # distinct weight files one browser session may upload
MAX_UPLOAD_BYTES_PER_SESSION = 1 << 30  # 1 GiB in all (one file is capped by server.maxUploadSize)
MAX_HELD_UPLOADS = 4  # uploads held in memory, waiting to be loaded, for the whole server
ALLOWED_FACTORIES_ENV = "COMPRESSION_EXPLORER_ALLOWED_FACTORIES"  # comma list of module prefixes; unset = none


def error_line(error: BaseException) -> str:
    """The one line shown to the user for an engine error (its first line, without the traceback)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---- what can be chosen ----------------------------------------------------------------------------
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


@st.cache_data(show_spinner=False, ttl=300)
def models() -> list[dict]:
    """Built-in models (`compression_core.models.list_models`): name, datasets, description, n_params, accuracy."""
    return list_models()


@st.cache_data(show_spinner=False, ttl=300)
def datasets() -> list[dict]:
    """All registry datasets with `available` and, when not, the `reason` (how to get it)."""
    return list_datasets()


def compatible_datasets(model: str, factory: str | None, weights_id: str | None,
                        num_classes: int | None = None) -> list[dict]:
    """The datasets a model can run on, each `{name, available, reason}`.

    Built-ins: the datasets they have checkpoints for. Bring-your-own: every installed dataset whose input
    shape the model accepts and whose class count matches its output (one forward pass of zeros), plus the
    datasets that are not installed, with the reason.

    Raises:
        ModelLoadError: the model cannot be loaded, or its factory is not under the allowed module prefixes.
    """
    return _compatible_datasets(model, factory, weights_id, num_classes, allowed_factories())


@st.cache_data(show_spinner=False, max_entries=64)
def _compatible_datasets(model: str, factory: str | None, weights_id: str | None, num_classes: int | None,
                         allowed: tuple[str, ...]) -> list[dict]:
    """compatible_datasets, cached per operator setting too: a result never outlives the allow-list it passed."""
    registry = {d["name"]: d for d in datasets()}
    if factory is None:
        wanted = next((m["datasets"] for m in models() if m["name"] == model), [])
        return [{"name": n, "available": registry.get(n, {}).get("available", False),
                 "reason": registry.get(n, {}).get("reason") or ""} for n in wanted]
    net = _loaded_model(model, None, factory, weights_id, num_classes, allowed).model
    choices = []
    for d in registry.values():
        if not d["available"]:
            choices.append({"name": d["name"], "available": False, "reason": d.get("reason") or ""})
            continue
        with torch.inference_mode():
            try:
                fits = tuple(net(torch.zeros(1, *d["input_shape"])).shape) == (1, d["num_classes"])
            except USER_CODE_ERRORS:  # the forward pass is user code: any failure means "does not fit"
                fits = False
        if fits:
            choices.append({"name": d["name"], "available": True, "reason": ""})
    return choices


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


def _load_upload(factory: str, weights_id: str, num_classes: int | None, allowed: tuple[str, ...]) -> LoadedModel:
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


# ---- pristine shared objects (cache_resource: never mutated) ---------------------------------------
@st.cache_resource(show_spinner=False, max_entries=8)
def _loaded_model(model: str, dataset: str | None, factory: str | None, weights_id: str | None,
                  num_classes: int | None, allowed: tuple[str, ...]) -> LoadedModel:
    """A built-in, or a bring-your-own spec (torchvision:NAME, or a factory under the `allowed` module prefixes)
    keyed on its weights' content id (the model is kept, not a file)."""
    if factory is None:
        return load_model(model, dataset=dataset)
    return _load_upload(factory, weights_id, num_classes, allowed)


@st.cache_resource(show_spinner=False, max_entries=8)
def _dataset(name: str) -> Dataset:
    return load_dataset(name)


@st.cache_resource(show_spinner="Loading the model and the evaluation data…", max_entries=8)
def get_experiment(selection: Selection) -> Experiment:
    """The `Experiment` for a selection: pristine model + evaluation subset on the device, shared by all sessions.

    Raises:
        ModelLoadError, DatasetUnavailable, DeviceUnavailable: one line saying what is wrong.
    """
    loaded = _loaded_model(selection.model, None if selection.factory else selection.dataset,
                           selection.factory, selection.weights_id, selection.num_classes, allowed_factories())
    return Experiment(loaded, _dataset(selection.dataset), split="test", limit=selection.limit,
                      device=selection.device)


@st.cache_resource(show_spinner=False, max_entries=16)
def compress(selection: Selection, config_json: str) -> CompressedModel:
    """The compressed model for a config (shared; read it, never modify it). For details and histograms."""
    return get_experiment(selection).compress(CompressionConfig.from_json(config_json))


@st.cache_resource(show_spinner=False)
def store() -> Store:
    """The result store at its default path ($COMPRESSION_EXPLORER_STORE or the user cache dir).

    Raises:
        StoreError: the file cannot be used (a directory, not SQLite, ...); one line saying what to do.
    """
    return Store()


# ---- results (cache_data: keyed on selection + config) --------------------------------------------
@st.cache_data(show_spinner=False, max_entries=2048)
def evaluate(selection: Selection, config_json: str) -> dict:
    """The engine's record (issue #2 fields, plus `layers`) for one config on the selection's live subset.

    Raises:
        ConfigError: the config is invalid (e.g. 1-bit symmetric).
    """
    # the compressed model is cached for the histograms anyway: compress once, evaluate that
    return get_experiment(selection).run(CompressionConfig.from_json(config_json),
                                         compressed=compress(selection, config_json))


def baseline(selection: Selection) -> dict:
    """The fp32 record (bits 32, no pruning) of the selection."""
    return evaluate(selection, CompressionConfig().to_json())


def _layer_weight(selection: Selection, layer: str) -> torch.Tensor:
    modules = dict(get_experiment(selection).model.named_modules())
    if layer not in modules or not hasattr(modules[layer], "weight"):
        raise ConfigError(f"layer {layer!r} is not a layer of {selection.model}")
    return modules[layer].weight.detach()


def histogram_view(before: torch.Tensor, layer: LayerCompression, bins: int = 80,
                   hide_zeros: bool = False) -> tuple[pd.DataFrame, dict]:
    """What a weight-histogram chart needs, from the engine's `histograms` module (not cached; pure).

    Returns:
        (frame with columns left, right, center, before, after;
         {"levels": [...], "clip": [lo, hi] | None, "threshold": float | None, "channel": int | None,
          "hidden_zeros_before": int, "hidden_zeros_after": int})
    """
    hist = histograms.weight_histograms(before, layer.weight, bins=bins, hide_zeros=hide_zeros)
    grid = histograms.grid_levels(layer, before=before)
    return hist.to_frame(), {
        "levels": list(grid.levels), "clip": list(grid.clip) if grid.clip else None,
        "threshold": grid.threshold, "channel": grid.channel,
        "hidden_zeros_before": hist.hidden_zeros_before, "hidden_zeros_after": hist.hidden_zeros_after,
    }


@st.cache_data(show_spinner=False, max_entries=512)
def layer_histogram(selection: Selection, config_json: str, layer: str, bins: int = 80,
                    hide_zeros: bool = False) -> tuple[pd.DataFrame, dict]:
    """A layer's weight histogram before vs after compression on shared bins, and its grid (see histogram_view)."""
    return histogram_view(_layer_weight(selection, layer), compress(selection, config_json).layers[layer],
                          bins=bins, hide_zeros=hide_zeros)


@st.cache_data(show_spinner=False, max_entries=128)
def channel_ranges(selection: Selection, layer: str) -> pd.DataFrame:
    """Per-output-channel min / max / absmax of a layer's original weight (columns channel, min, max, absmax)."""
    return histograms.channel_ranges(_layer_weight(selection, layer))


class _CachedExperiment:
    """The selection's `Experiment` seen through the cached `evaluate`: what the engine's sweeps need."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.experiment = get_experiment(selection)
        self.layer_names = list(self.experiment.layer_names)

    def key(self, config: CompressionConfig) -> dict:
        return self.experiment.key(config)

    def run(self, config: CompressionConfig) -> dict:
        return evaluate(self.selection, config.to_json())


def layer_sensitivity(selection: Selection, settings_json: list[str],
                      progress: Callable[[int, int, float | None, str | None], None] | None = None) -> list[dict]:
    """One layer compressed at a time over the given settings (configs as JSON): the engine's tagged records.

    Each (layer, setting) probe goes through the cached `evaluate`, so a repeat is instant and probes are shared
    with Explore and other sessions; `progress(done, total, eta_seconds, label)` is called as probes finish.
    Each record has `layer`, `setting` (label), `setting_hash`, `accuracy_drop_pts` and the rest of a record.
    """
    settings = [CompressionConfig.from_json(s) for s in settings_json]
    return sensitivity.layer_sensitivity(_CachedExperiment(selection), settings, progress=progress)
