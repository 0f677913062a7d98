"""The dashboard's per-layer services: weight histograms, channel ranges, layer sensitivity and bit allocation, cached
like the rest of `dashboard.services` (whose shared experiments and compressed models they read, never mutate)."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st
import torch

from compression_core import allocate as allocation
from compression_core import histograms, sensitivity
from compression_core.compressed import LayerCompression
from compression_core.config import CompressionConfig, ConfigError
from compression_core.methods import quantizer_info
from dashboard import services
from dashboard.selection import Selection


def _layer_weight(selection: Selection, layer: str) -> torch.Tensor:
    modules = dict(services.get_experiment(selection).model.named_modules())
    if layer not in modules or not hasattr(modules[layer], "weight"):
        raise ConfigError(f"layer {layer!r} is not a layer of {selection.model}")
    return modules[layer].weight.detach()


def pruned_positions(before: torch.Tensor, layer: LayerCompression) -> torch.Tensor:
    """Bool, the shape of `layer.weight`: True where pruning removed the weight, or the original was already 0.

    Weights that quantization rounded to 0 are False: "Hide pruned" keeps them visible. Channels that
    structured pruning removed are not in the smaller `layer.weight` at all.
    """
    weight = layer.weight
    mask = layer.mask
    pruned = ~mask if mask is not None and mask.shape == weight.shape else torch.zeros_like(weight, dtype=torch.bool)
    return pruned | (before == 0) if before.shape == weight.shape else pruned


def histogram_view(before: torch.Tensor, layer: LayerCompression, bins: int = 80,
                   hide_zeros: bool = False) -> tuple[pd.DataFrame, dict]:
    """What a weight-histogram chart needs, from the engine's `histograms` module (not cached; pure).

    `hide_zeros` leaves out the pruned weights (`pruned_positions`), not those quantization rounded to 0.

    Returns:
        (frame with columns left, right, center, before, after;
         {"levels": [...], "clip": [lo, hi] | None, "threshold": float | None, "channel": int | None,
          "block": int | None, "hidden_zeros_before": int, "hidden_zeros_after": int})
    """
    hist = histograms.weight_histograms(before, layer.weight, bins=bins, hide_zeros=hide_zeros,
                                        pruned=pruned_positions(before, layer))
    grid = histograms.grid_levels(layer, before=before)
    return hist.to_frame(), {
        "levels": list(grid.levels), "clip": list(grid.clip) if grid.clip else None,
        "threshold": grid.threshold, "channel": grid.channel, "block": grid.block,
        "hidden_zeros_before": hist.hidden_zeros_before, "hidden_zeros_after": hist.hidden_zeros_after,
    }


@st.cache_data(show_spinner=False, max_entries=512)
def layer_histogram(selection: Selection, config_json: str, layer: str, bins: int = 80,
                    hide_zeros: bool = False) -> tuple[pd.DataFrame, dict]:
    """A layer's weight histogram before vs after compression on shared bins, and its grid (see histogram_view)."""
    compressed = services.compress(selection, config_json).layers[layer]
    return histogram_view(_layer_weight(selection, layer), compressed, bins=bins, hide_zeros=hide_zeros)


@st.cache_data(show_spinner=False, max_entries=128)
def channel_ranges(selection: Selection, layer: str) -> pd.DataFrame:
    """Per-output-channel min / max / absmax of a layer's original weight (columns channel, min, max, absmax)."""
    return histograms.channel_ranges(_layer_weight(selection, layer))


class _CachedExperiment:
    """The selection's `Experiment` seen through the cached `evaluate`: what the engine's sweeps need."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.experiment = services.get_experiment(selection)
        self.layer_names = list(self.experiment.layer_names)

    def key(self, config: CompressionConfig) -> dict:
        return self.experiment.key(config)

    def run(self, config: CompressionConfig) -> dict:
        return services.evaluate(self.selection, config.to_json())


def layer_sensitivity(selection: Selection, settings_json: list[str],
                      progress: Callable[[int, int, float | None, str | None], None] | None = None
                      ) -> tuple[list[dict], pd.DataFrame]:
    """One layer compressed at a time over the given settings (configs as JSON): the engine's tagged records.

    Each (layer, setting) probe goes through the cached `evaluate`, so a repeat is instant and probes are shared
    with Explore and other sessions; `progress(done, total, eta_seconds, label)` is called as probes finish.

    Returns:
        (records, table): each record has `layer`, `setting` (label), `setting_hash`, `config` (the probe's,
        only that layer compressed), `metric_harm` (`compression_core.sensitivity.metric_harm`: accuracy drop in
        points for classify, else the task metric's change for the worse) and the rest of a record; the table is
        the layer x setting `metric_harm` (`compression_core.sensitivity.sensitivity_table`).
    """
    settings = [CompressionConfig.from_json(s) for s in settings_json]
    records = sensitivity.layer_sensitivity(_CachedExperiment(selection), settings, progress=progress)
    records = [{**r, "metric_harm": sensitivity.metric_harm(r)} for r in records]
    return records, sensitivity.sensitivity_table(records, "metric_harm")


@st.cache_data(show_spinner="Allocating bits: sizing every layer at each width…", max_entries=64)
def allocate(selection: Selection, config_json: str, settings_json: tuple[str, ...], budget_bytes: int) -> dict:
    """Per-layer widths under `budget_bytes` from the Layers page's sensitivity (`layer_sensitivity` over
    `settings_json`, cached): the widths its weight-only settings measured that the config's quantizer takes, and
    32 (fp32, skipped).

    Returns:
        {"bits": [[layer, width], ...] in model order, "size_bytes": the allocated config's measured size,
         "drop_sum": the sum of the layers' measured drops, "budget_bytes"}.

    Raises:
        AllocationError: the budget cannot be met, or the quantizer has no choice of widths; one line.
    """
    config = CompressionConfig.from_json(config_json)
    records, _ = layer_sensitivity(selection, list(settings_json))
    drops = allocation.drops_from_sensitivity(records)
    takes = quantizer_info(config.quant.quantizer).bits
    widths = sorted({b for row in drops.values() for b in row if b in takes}) + [allocation.FP32]
    result = allocation.allocate_bits(services.get_experiment(selection), config, drops, budget_bytes, widths)
    return {"bits": [list(pair) for pair in result.bits], "size_bytes": result.size_bytes,
            "drop_sum": result.drop_sum, "budget_bytes": result.budget_bytes}
