"""Layers: which layers suffer most when compressed alone (sensitivity, in the task's own metric), and why
per-channel grids help."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from compression_core.config import ALLOWED_BITS, GRANULARITIES, CompressionConfig, PruneSpec, QuantSpec
from dashboard import components, frame, layer_services, services
from dashboard.charts import layers as layer_charts
from dashboard.charts.common import metric_axis, option_label, percent_label
from dashboard.selection import Selection

SETTINGS_KEY = "layers_settings"  # {selection key: [config JSON, ...]} of the last run sensitivity
SPARSITIES = (0.25, 0.5, 0.75, 0.9, 0.95)
TOP_LAYERS = 4  # small multiples for this many most affected layers


def settings_form() -> list[str] | None:
    """The settings chooser; returns the settings as canonical config JSON when the form is submitted."""
    with st.form("layers_form", border=True):
        c = st.columns([2, 2, 1])
        bits = c[0].multiselect("Weight bits (uniform, symmetric)", [b for b in ALLOWED_BITS if 2 <= b <= 16],
                                default=[2, 4, 8], key="layers_bits", bind="query-params")
        sparsity = c[1].multiselect("Sparsity (magnitude pruning)", SPARSITIES, default=[0.5, 0.9],
                                    format_func=percent_label, key="layers_sparsity", bind="query-params")
        granularity = c[2].selectbox("Granularity", GRANULARITIES, index=1, key="layers_granularity",
                                     bind="query-params", format_func=option_label)
        submitted = st.form_submit_button("Run sensitivity", type="primary")
    if not submitted:
        return None
    configs = [CompressionConfig(quant=QuantSpec(bits=b, granularity=granularity)) for b in sorted(bits)]
    configs += [CompressionConfig(prune=PruneSpec(sparsity=s)) for s in sorted(sparsity)]
    return [c.to_json() for c in configs]


def run_sensitivity(selection: Selection, settings: list[str]) -> tuple[list[dict], pd.DataFrame]:
    """The engine's sensitivity records and layer x setting table (cached), with a progress bar meanwhile."""
    bar = st.empty()

    def progress(done: int, total: int, eta: float | None, label: str | None) -> None:
        text = f"{done} / {total} layer × setting pairs" + (f" · about {eta:.0f} s left" if eta else "")
        bar.progress(done / max(total, 1), text=text)

    result = layer_services.layer_sensitivity(selection, settings, progress=progress)
    bar.empty()
    return result


def show_sensitivity(selection: Selection, records: list[dict], table: pd.DataFrame) -> None:
    """The layer x setting heatmap, then each most affected layer's weights at its worst setting."""
    axis = metric_axis(records[0].get("metric", "accuracy") if records else "accuracy")
    harm = layer_charts.harm_title(axis).removesuffix(" (pts)")
    st.plotly_chart(layer_charts.sensitivity_heatmap(table, title=f"{harm} when only this layer is compressed",
                                                     axis=axis),
                    key="layers_heatmap", config=components.CHART_CONFIG)
    worst = table.max(axis=1).sort_values(ascending=False).head(TOP_LAYERS)
    probes = {(r["layer"], r["setting"]): r["config"] for r in records}  # the config each probe was run with
    hists = {}
    for layer in worst.index:
        label = table.loc[layer].idxmax()
        probe = CompressionConfig.from_dict(probes[layer, label]).to_json()
        amount = (f"−{worst[layer]:.1f} pts" if axis.field == "accuracy"
                  else f"{axis.name} {'−' if axis.higher_is_better else '+'}{worst[layer]:.{axis.digits}f}")
        hists[f"{layer} @ {label} ({amount})"] = layer_services.layer_histogram(
            selection, probe, layer, bins=60, hide_zeros=True)
    st.subheader("Most affected layers")
    st.caption("Each layer at its worst setting: weights before vs after (pruned weights hidden); dashed lines "
               "mark the clip range, dotted lines the pruning threshold.")
    st.plotly_chart(layer_charts.histogram_grid(hists), key="layers_small_multiples", config=components.CHART_CONFIG)


def show_channel_ranges(selection: Selection) -> None:
    st.subheader("Per-channel weight ranges")
    st.caption("Per-channel quantization gives every output channel its own scale, so channels with a small "
               "range keep fine steps instead of sharing the coarse step the widest channel forces on the "
               "whole tensor.")
    names = list(services.get_experiment(selection).layer_names)
    layer = st.selectbox("Layer", names, key="layers_channel_layer", bind="query-params")
    ranges = layer_services.channel_ranges(selection, layer)
    st.plotly_chart(layer_charts.channel_range_figure(ranges, title=f"{layer}: weight range per output channel"),
                    key="layers_channel_ranges", config=components.CHART_CONFIG)
    spread = ranges["absmax"].max() / max(ranges["absmax"].min(), 1e-12)
    st.caption(f"The widest channel's max |w| is {spread:.1f}× the narrowest one's.")


selection = frame.require_selection()
st.title("Layers")
components.selection_caption(selection, "one layer compressed at a time, all others left fp32.")
submitted = settings_form()
saved = dict(st.session_state.get(SETTINGS_KEY, {}))
if submitted is not None:
    saved[selection.key] = submitted
    st.session_state[SETTINGS_KEY] = saved
settings = saved.get(selection.key)
if not settings:
    st.info("Choose the settings to probe and press **Run sensitivity**: each layer is compressed alone with "
            "each setting and how much worse the task's metric gets (accuracy drop for classify, cosine lost for "
            "fidelity, perplexity gained for lm) is shown as a layer × setting heatmap.")
else:
    try:
        show_sensitivity(selection, *run_sensitivity(selection, settings))
    except services.USER_ERRORS as e:
        components.show_error(e)
show_channel_ranges(selection)
