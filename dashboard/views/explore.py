"""Explore: move the compression controls and see accuracy, honest size and per-layer effects on the live subset.

The controls, metrics, explored-points chart and layer details sit in one `st.fragment`, so moving a slider
reruns only this part. Control values are bound to the URL (`explore_bits=4&explore_sparsity=0.5&...`).
Every config evaluated in this browser session is kept, as plain dicts, in `st.session_state["explore_history"]`.
"""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from compression_core import methods
from compression_core.config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES,
                                     SCHEMES, SCOPES, CompressionConfig, PruneSpec, QuantSpec)
from compression_core.pareto import pareto_front, staircase
from dashboard import frame, services
from dashboard.charts import explore as explore_charts
from dashboard.charts import layers as layer_charts
from dashboard.charts.common import act_bits_label, option_label

HISTORY_KEY = "explore_history"  # {selection key: [point dicts]}
POINT_FIELDS = ("config_hash", "label", "bits", "quantizer", "prune_method", "sparsity", "accuracy",
                "accuracy_ci_low", "accuracy_ci_high", "size_bytes", "compression_ratio")
NM_PATTERNS = ("2:4", "1:4", "4:8", "2:8")


def _state(key: str, default):
    return st.session_state.get(key, default)


def controls() -> CompressionConfig:
    """Draw the controls and return the canonical config they describe.

    Raises:
        ConfigError: a combination the engine rejects (e.g. 1-bit symmetric); the message says what is allowed.
    """
    # what the current choices support, from the method tables (a stale name falls back to the default)
    known_q, known_p = methods.quantizers(), methods.prune_methods()
    q_info = known_q.get(_state("explore_quantizer", None), known_q[methods.DEFAULT_QUANTIZER])
    p_info = known_p.get(_state("explore_prune", None), known_p[methods.DEFAULT_PRUNE_METHOD])
    left, right = st.columns(2)
    bits = left.select_slider("Weight bits", ALLOWED_BITS, value=32, key="explore_bits", bind="query-params",
                              disabled=not q_info.uses_bits,
                              help="32 = not quantized. fp16 / bf16 casts always use 16 bits.")
    sparsity = right.slider("Sparsity", 0.0, 0.99, 0.0, 0.01, key="explore_sparsity", bind="query-params",
                            disabled=not p_info.uses_sparsity, format="%.2f",
                            help="Fraction of weights removed (exactly round(s·n) of them). N:M sets its own.")
    on = bits < 32
    c = st.columns(4)
    quantizer = c[0].selectbox("Quantizer", QUANTIZERS, key="explore_quantizer", bind="query-params",
                               format_func=option_label)
    scheme = c[1].selectbox("Scheme", SCHEMES, key="explore_scheme", bind="query-params", format_func=option_label,
                            disabled=not (on and q_info.schemes))
    granularity = c[2].selectbox("Granularity", GRANULARITIES, index=1, key="explore_granularity",
                                 bind="query-params", format_func=option_label,
                                 disabled=not (on and q_info.granularities))
    range_method = c[3].selectbox("Range", RANGES, key="explore_range", bind="query-params", format_func=option_label,
                                  disabled=not (on and q_info.ranges))
    c = st.columns(4)
    method = c[0].selectbox("Pruning method", PRUNE_METHODS, key="explore_prune", bind="query-params",
                            format_func=option_label)
    scope = c[1].selectbox("Pruning scope", SCOPES, key="explore_scope", bind="query-params", format_func=option_label,
                           disabled=not p_info.ranks_globally)
    nm = c[2].selectbox("N:M pattern", NM_PATTERNS, key="explore_nm", bind="query-params",
                        disabled=p_info.uses_sparsity, help="Keep the N largest of every M consecutive weights.")
    act_bits = c[3].selectbox("Activation bits", ACT_BITS, index=len(ACT_BITS) - 1, key="explore_act_bits",
                              bind="query-params", format_func=act_bits_label,
                              help="Quantize each layer's input, calibrated on training samples.")
    n, m = (int(v) for v in nm.split(":"))
    # settings that do not apply to the chosen methods are reset by QuantSpec / PruneSpec themselves
    quant = QuantSpec(bits=bits, quantizer=quantizer, scheme=scheme, granularity=granularity, range=range_method)
    prune = PruneSpec(sparsity=sparsity, method=method, scope=scope, n=n, m=m)
    return CompressionConfig(quant=quant, prune=prune, act_bits=act_bits)


def remember(selection: frame.Selection, record: dict) -> list[dict]:
    """Add the record's point to this session's history for the selection; return that selection's points."""
    history = dict(_state(HISTORY_KEY, {}))
    points = list(history.get(selection.key, []))
    if all(p["config_hash"] != record["config_hash"] for p in points):
        points.append({f: record[f] for f in POINT_FIELDS})
    history[selection.key] = points
    st.session_state[HISTORY_KEY] = history
    return points


def show_metrics(record: dict) -> None:
    """The headline numbers of one record as st.metric tiles."""
    acc, drop = 100.0 * record["accuracy"], record["accuracy_drop_pts"]
    c = st.columns(6)
    c[0].metric("Accuracy", f"{acc:.2f} %", delta=f"{0.0 - drop:+.2f} pts vs fp32",
                help="Top-1 accuracy on the live subset; the delta is the change against the fp32 model.")
    c[0].caption(f"95 % CI {100 * record['accuracy_ci_low']:.1f}–{100 * record['accuracy_ci_high']:.1f} % · "
                 f"n = {record['n_samples']:,}")
    c[1].metric("Size", f"{record['size_bytes'] / 1024:,.1f} KiB",
                delta=f"fp32 {record['dense_bytes'] / 1024:,.1f} KiB", delta_color="off", delta_arrow="off",
                help="Honest size: values, sparse index, scales / codebooks and uncompressed tensors.")
    c[2].metric("Compression", f"{record['compression_ratio']:.1f}×", help="fp32 size / compressed size.")
    c[3].metric("Bits per weight", f"{record['bits_per_weight']:.2f}", help="All bits of the model / weights.")
    c[4].metric("Sparsity", f"{100 * record['realized_sparsity']:.1f} %", help="Realised fraction of zero weights.")
    agreement = record.get("agreement")
    c[5].metric("Agreement", "—" if agreement is None else f"{100 * agreement:.1f} %",
                help="Fraction of samples where the compressed model predicts the same class as the fp32 one.")


def show_points(points: list[dict], record: dict) -> None:
    frame_ = pd.DataFrame(points)
    front = pareto_front(points)
    fig = explore_charts.explored_points(frame_, current=record["config_hash"],
                                         baseline_accuracy=record["baseline_accuracy"],
                                         front=staircase(front) if len(front) > 1 else None)
    st.plotly_chart(fig, key="explore_points_chart", config={"displaylogo": False})


def show_layers(selection: frame.Selection, record: dict, config_json: str) -> None:
    """Per-layer table, then the chosen layer's weight histogram before vs after with its grid."""
    st.subheader("Per layer")
    st.dataframe(layer_charts.layer_table(record["layers"]), hide_index=True, column_config={
        "Weights": st.column_config.NumberColumn(format="localized"),
        "Kept": st.column_config.NumberColumn(format="localized"),
        "Sparsity (%)": st.column_config.NumberColumn(format="%.1f"),
        "Size (KiB)": st.column_config.NumberColumn(format="%.2f"),
        "Bits / weight": st.column_config.NumberColumn(format="%.2f"),
    })
    names = [l["name"] for l in record["layers"]]
    largest = max(range(len(names)), key=lambda i: record["layers"][i]["n"])
    c = st.columns([2, 1, 1])
    layer = c[0].selectbox("Layer", names, index=largest, key="explore_layer",
                           help="The largest layer is shown first.")
    log_y = c[1].toggle("Log count axis", key="explore_log_y")
    hide_zeros = c[2].toggle("Hide zeros", value=True, key="explore_hide_zeros",
                             help="Leave exact zeros (pruned weights) out, so the rest stays visible.")
    hist, grid = services.layer_histogram(selection, config_json, layer, hide_zeros=hide_zeros)
    st.plotly_chart(layer_charts.weight_histogram(hist, grid, log_y=log_y, title=f"{layer}: weights before vs after"),
                    key="explore_histogram", config={"displaylogo": False})
    if grid.get("channel") is not None:
        st.caption(f"Per-channel grid: levels shown for channel {grid['channel']} (the widest); the dashed lines "
                   f"are the clip range over all channels.")


@st.fragment
def explore(selection: frame.Selection) -> None:
    """Controls + metrics + points + details; reruns alone when a control moves."""
    started = time.perf_counter()
    try:
        config = controls()
        config_json = config.to_json()
        record = services.evaluate(selection, config_json)
    except services.USER_ERRORS as e:
        st.error(services.error_line(e), icon=":material/error:")
        return
    engine_ms = 1000 * (time.perf_counter() - started)
    st.caption(f"**{config.label}** · evaluated on {record['n_samples']:,} samples of {selection.dataset} test")
    show_metrics(record)
    points = remember(selection, record)
    st.subheader("Explored configs")
    show_points(points, record)
    if st.button("Clear explored points", key="explore_clear"):
        history = dict(_state(HISTORY_KEY, {}))
        history[selection.key] = []
        st.session_state[HISTORY_KEY] = history
        st.rerun(scope="fragment")
    show_layers(selection, record, config_json)
    total_ms = 1000 * (time.perf_counter() - started)
    st.caption(f"Server time for this update: {total_ms:,.0f} ms (compress + evaluate, or cache hit: "
               f"{engine_ms:,.0f} ms).", help="Measured on the server around this section's rerun; "
                                             "network and browser drawing come on top.")


selection = frame.require_selection()
st.title("Explore")
st.caption(f"{selection.label} — move a control; only the settings that apply are enabled.")
explore(selection)
