"""Per-layer sensitivity: compress one layer at a time (all others left fp32) and measure how much worse the
task's metric gets (the accuracy drop for classify; `metric_harm` for any task).

For layer L and setting S the config is S itself with every other layer skipped (`LayerOverride(skip=True)`),
so S's own choices (scheme, range, act_bits on L's input, ...) apply to L alone. The result is a layer x setting
table; a large drop marks a layer that should keep more bits or fewer pruned weights.

Example:
    >>> from compression_core import Experiment, load_dataset, load_model
    >>> exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), device="cpu")
    >>> recs = layer_sensitivity(exp, [QuantSpec(bits=2), (QuantSpec(bits=4), PruneSpec(sparsity=0.5))])
    >>> table = sensitivity_table(recs)  # rows: layers in model order, columns: setting labels
    >>> list(table.index), table.shape
    (['conv1', 'conv2', 'fc1', 'fc2'], (4, 2))
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, Union

import pandas as pd

from .config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec
from .store import Store
from .sweep import ProgressFn, sweep
from .tasks import METRICS

Setting = Union[CompressionConfig, QuantSpec, PruneSpec, tuple]


class LayeredExperiment(Protocol):
    """What `layer_sensitivity` needs: an `Experiment` with its compressible layer names."""

    layer_names: list[str]

    def key(self, config: CompressionConfig) -> dict: ...

    def run(self, config: CompressionConfig) -> dict: ...


def as_config(setting: Setting) -> CompressionConfig:
    """A sensitivity setting as a config: a config as is, a QuantSpec / PruneSpec alone, or (QuantSpec, PruneSpec)."""
    if isinstance(setting, CompressionConfig):
        return setting
    if isinstance(setting, QuantSpec):
        return CompressionConfig(quant=setting)
    if isinstance(setting, PruneSpec):
        return CompressionConfig(prune=setting)
    if (isinstance(setting, tuple) and len(setting) == 2 and isinstance(setting[0], QuantSpec)
            and isinstance(setting[1], PruneSpec)):
        return CompressionConfig(quant=setting[0], prune=setting[1])
    raise ConfigError(f"a sensitivity setting must be a CompressionConfig, QuantSpec, PruneSpec or "
                      f"(QuantSpec, PruneSpec); got {setting!r}")


def only_layer(config: CompressionConfig, layer: str, layer_names: Sequence[str]) -> CompressionConfig:
    """`config` applied to `layer` alone: every other layer skipped (the layer's own override, if any, kept)."""
    if layer not in layer_names:
        raise ConfigError(f"layer {layer!r} is not a compressible layer; layers are {list(layer_names)}")
    own = tuple(o for o in config.overrides if o.name == layer)
    skips = tuple(LayerOverride(name=n, skip=True) for n in layer_names if n != layer)
    return replace(config, overrides=own + skips)


def layer_sensitivity(
    experiment: LayeredExperiment,
    settings: Sequence[Setting],
    *,
    layers: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    store: Store | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Evaluate every (layer, setting) pair with only that layer compressed.

    Args:
        experiment: an `Experiment` (needs `layer_names`, `key`, `run`).
        settings: what to apply to each layer (see `as_config`).
        layers: the layers to probe, default all of `experiment.layer_names`.
        progress, cancel, store, on_record: as in `sweep.sweep` (stored pairs are not recomputed).

    Returns:
        Records (layer-major, then settings in order; only the finished ones when cancelled), each the
        experiment's full record plus `layer` (the compressed layer), `setting` (the setting's label) and
        `setting_hash` (the setting's config hash).
    """
    names = list(experiment.layer_names)
    configs = [as_config(s) for s in settings]
    jobs: dict[str, list[tuple[str, CompressionConfig]]] = {}  # probe config hash -> [(layer, setting)]
    probes: list[CompressionConfig] = []
    for layer in (layers if layers is not None else names):
        for setting in configs:
            probe = only_layer(setting, layer, names)
            if probe.config_hash not in jobs:
                probes.append(probe)
            jobs.setdefault(probe.config_hash, []).append((layer, setting))

    def tag(record: dict) -> list[dict]:
        return [{**record, "layer": layer, "setting": setting.label, "setting_hash": setting.config_hash}
                for layer, setting in jobs[record["config_hash"]]]

    def forward(record: dict) -> None:
        for r in tag(record):
            on_record(r)

    done = sweep(experiment, probes, store=store, progress=progress, cancel=cancel,
                 on_record=forward if on_record else None)
    return [r for record in done for r in tag(record)]


def metric_harm(record: dict) -> float:
    """How much worse than fp32 a record is in its task's headline metric (positive = worse).

    Accuracy: the drop in percentage points (`accuracy_drop_pts`); any other metric: its change in its own unit
    in the worse direction (cosine lost, perplexity or KL gained).

    Example:
        >>> metric_harm({"metric": "perplexity", "metric_value": 31.5, "baseline_metric_value": 30.0})
        1.5
    """
    metric = record.get("metric", "accuracy")
    if metric == "accuracy":
        return record["accuracy_drop_pts"]
    change = record["metric_value"] - record["baseline_metric_value"]
    return -change if METRICS[metric].higher_is_better else change


def sensitivity_table(records: Sequence[dict], value: str = "accuracy_drop_pts") -> pd.DataFrame:
    """Layer x setting table of `value` (rows and columns in first-seen order) for a heatmap."""
    frame = pd.DataFrame([{"layer": r["layer"], "setting": r["setting"], value: r[value]} for r in records])
    if frame.empty:
        return pd.DataFrame()
    table = frame.pivot_table(index="layer", columns="setting", values=value, aggfunc="first", sort=False)
    table.columns.name = None
    return table
