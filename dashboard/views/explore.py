"""Explore: move the compression controls and see accuracy, honest size and per-layer effects on the live subset.

The controls, metrics, explored-points chart and layer details sit in one `st.fragment`, so moving a slider
reruns only this part. Control values are bound to the URL (`explore_bits=4&explore_sparsity=0.5&...`).
Every config evaluated in this browser session is kept, as plain dicts, in `st.session_state["explore_history"]`.
While the user looks, the configs one slider step away are evaluated in the background (`dashboard.prefetch`), so
the next step is usually a cache hit; the per-layer section is a nested fragment (its own widgets rerun only it).
"""
from __future__ import annotations

import time
import uuid

import pandas as pd
import streamlit as st

from compression_core import methods
from compression_core.config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES,
                                     REPAIRS, SCALE_DTYPES, SCHEMES, SCOPES, CompressionConfig, PruneSpec, QuantSpec)
from dashboard import components, frame, prefetch, retrain_panel, services
from dashboard.charts import explore as explore_charts
from dashboard.charts.common import act_bits_label, metric_axis, option_label
from dashboard.selection import Selection

HISTORY_KEY = "explore_history"  # {selection key: [point dicts]}
OWNER_KEY = "explore_prefetch_owner"  # this session's id for the neighbour prefetcher
PREVIOUS_KEY = "explore_previous_config"  # the config shown before this one (JSON): the direction of a move
POINT_FIELDS = ("config_hash", "label", "bits", "quantizer", "prune_method", "sparsity", "accuracy",
                "accuracy_ci_low", "accuracy_ci_high", "size_bytes", "compression_ratio", "task", "metric",
                "metric_value", "cosine", "rel_l2", "recall_at_10", "agreement", "kl", "perplexity")
NM_PATTERNS = ("2:4", "1:4", "4:8", "2:8")
GROUP_SIZES = (0, 32, 64, 128, 256)  # 0 = the quantizer's own default block size
GROUP_SIZE_NAMES = {0: "format default"} | {g: str(g) for g in GROUP_SIZES[1:]}


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
    on = bits < 32 or not q_info.uses_bits  # a fixed-width quantizer (a cast, a float format) is always on
    c = st.columns(4)
    quantizer = c[0].selectbox("Quantizer", QUANTIZERS, key="explore_quantizer", bind="query-params",
                               format_func=option_label)
    q_info = known_q[quantizer]  # the controls below follow the quantizer just chosen
    on = bits < 32 or not q_info.uses_bits
    scheme = c[1].selectbox("Scheme", SCHEMES, key="explore_scheme", bind="query-params", format_func=option_label,
                            disabled=not (on and q_info.schemes))
    granularity = c[2].selectbox("Granularity", GRANULARITIES, index=1, key="explore_granularity",
                                 bind="query-params", format_func=option_label,
                                 disabled=not (on and len(q_info.granularities) > 1))
    range_method = c[3].selectbox("Range", RANGES, key="explore_range", bind="query-params", format_func=option_label,
                                  disabled=not (on and q_info.ranges))
    group_size, scale_dtype, double_quant = format_controls(q_info, on, granularity)
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
    if len(q_info.granularities) <= 1:
        granularity = "channel"  # the default: a block-only format (MX, NF4) then uses its blocks
    quant = QuantSpec(bits=bits, quantizer=quantizer, scheme=scheme, granularity=granularity, range=range_method,
                      group_size=group_size, scale_dtype=scale_dtype, double_quant=double_quant)
    prune = PruneSpec(sparsity=sparsity, method=method, scope=scope, n=n, m=m)
    repair, alpha, act_order = repair_controls(q_info, on, act_bits)
    return CompressionConfig(quant=quant, prune=prune, act_bits=act_bits, repair=repair, alpha=alpha,
                             act_order=act_order)


def repair_options(q_info: methods.QuantizerInfo, on: bool, act_bits: int) -> list[str]:
    """The repairs that apply: GPTQ to integer grids, AWQ to any weight quantizer, SmoothQuant with 8-bit inputs."""
    return [r for r in REPAIRS if r == "none" or (r == "gptq" and on and q_info.kind == "grid")
            or (r == "awq" and on) or (r == "smoothquant" and act_bits == 8)]


def repair_controls(q_info: methods.QuantizerInfo, on: bool, act_bits: int) -> tuple[str, float, bool]:
    """Repair, SmoothQuant's alpha and GPTQ's act-order; only the repairs that apply are offered."""
    options = repair_options(q_info, on, act_bits)
    if _state("explore_repair", "none") not in options:
        st.session_state["explore_repair"] = "none"  # a repair the new settings do not support
    c = st.columns(4)
    repair = c[0].selectbox("Repair", options, key="explore_repair", disabled=len(options) == 1,
                            format_func=option_label,
                            help="Calibrated repair of the rounding on training samples: GPTQ (integer grids), AWQ "
                                 "(weight-only), SmoothQuant (with 8-bit activations).")
    alpha = c[1].slider("SmoothQuant α", 0.0, 1.0, 0.5, 0.05, key="explore_alpha",
                        disabled=repair != "smoothquant", help="How much of the activation range moves into the "
                                                              "weights: s = max|x|^α / max|w|^(1-α).")
    act_order = c[2].toggle("GPTQ act-order", value=False, key="explore_act_order", disabled=repair != "gptq",
                            help="Round the columns with the largest input energy first.")
    return repair, alpha, act_order


def format_controls(q_info: methods.QuantizerInfo, on: bool, granularity: str) -> tuple[int | None, str, bool]:
    """Group size, scale storage type and NF4 double quantization; each enabled only where it applies."""
    c = st.columns(4)
    grouped = on and not q_info.fixed_group_size and "group" in q_info.granularities and (
        granularity == "group" or len(q_info.granularities) == 1)
    group_size = c[0].selectbox("Group size", GROUP_SIZES, key="explore_group_size", bind="query-params",
                                disabled=not grouped, format_func=GROUP_SIZE_NAMES.get,
                                help="Weights per block along the input dimension (granularity group: default 128; "
                                     "NF4: 64). MX formats always use 32.")
    scale_dtype = c[1].selectbox("Scale stored as", SCALE_DTYPES, key="explore_scale_dtype", bind="query-params",
                                 disabled=not (on and q_info.scale_dtypes),
                                 help="Storage type of each scale, counted in the size; rounded up to it.")
    double_quant = c[2].toggle("Double-quantize scales", value=True, key="explore_double_quant",
                               disabled=not (on and q_info.double_quant),
                               help="NF4: block scales as int8 in blocks of 256 (QLoRA); off keeps them fp32.")
    return (group_size or None) if grouped else None, scale_dtype, double_quant


def remember(selection: Selection, record: dict) -> list[dict]:
    """Add the record's point to this session's history for the selection; return that selection's points."""
    history = dict(_state(HISTORY_KEY, {}))
    points = list(history.get(selection.key, []))
    if all(p["config_hash"] != record["config_hash"] for p in points):
        points.append({f: record[f] for f in POINT_FIELDS if record.get(f) is not None})  # the task's own fields
    history[selection.key] = points
    st.session_state[HISTORY_KEY] = history
    return points


def show_points(points: list[dict], record: dict) -> None:
    frame_ = pd.DataFrame(points)
    front, stairs = services.pareto(points, record["metric"])
    fig = explore_charts.explored_points(frame_, current=record["config_hash"],
                                         baseline=record["baseline_metric_value"], axis=metric_axis(record["metric"]),
                                         front=stairs if len(front) > 1 else None)
    st.plotly_chart(fig, key="explore_points_chart", config=components.CHART_CONFIG)


def _session_owner() -> str:
    """This browser session's id for the prefetcher (a random token kept in session state)."""
    if OWNER_KEY not in st.session_state:
        st.session_state[OWNER_KEY] = uuid.uuid4().hex
    return st.session_state[OWNER_KEY]


def prefetch_next(selection: Selection, config: CompressionConfig, record: dict, owner: str) -> int:
    """Queue the configs one slider step away for background evaluation (`prefetch.plan`); returns how many."""
    previous = _state(PREVIOUS_KEY, None)
    st.session_state[PREVIOUS_KEY] = config.to_json()
    return services.prefetcher().submit(owner, selection, prefetch.plan(previous, config, record["eval_seconds"]))


@st.fragment
def per_layer(selection: Selection, record: dict) -> None:
    """The per-layer table and histogram; choosing a layer or a histogram option reruns only this part."""
    components.layer_details(selection, record, "explore")


@st.fragment
def explore(selection: Selection) -> None:
    """Controls + metrics + points + details; reruns alone when a control moves."""
    started = time.perf_counter()
    owner = _session_owner()
    services.prefetcher().cancel(owner)  # the user is waiting: start no background work of this session now
    try:
        config = controls()
        record = services.evaluate(selection, config.to_json())
        retrained = retrain_panel.panel(selection, config)  # a finished retraining of this session, or None
    except services.USER_ERRORS as e:
        components.show_error(e)
        return
    engine_ms = 1000 * (time.perf_counter() - started)
    st.caption(f"**{config.label}** · evaluated on {record['n_samples']:,} samples of {selection.dataset} test")
    components.metric_tiles(record)
    points = remember(selection, record)
    points = remember(selection, retrained) if retrained else points
    st.subheader("Explored configs")
    show_points(points, record)
    if st.button("Clear explored points", key="explore_clear"):
        history = dict(_state(HISTORY_KEY, {}))
        history[selection.key] = []
        st.session_state[HISTORY_KEY] = history
        st.rerun(scope="fragment")
    st.subheader("Per layer")
    per_layer(selection, record)
    total_ms = 1000 * (time.perf_counter() - started)
    st.caption(f"Server time for this update: {total_ms:,.0f} ms (compress + evaluate, or cache hit: "
               f"{engine_ms:,.0f} ms).", help="Measured on the server around this section's rerun; "
                                             "network and browser drawing come on top.")
    prefetch_next(selection, config, record, owner)


selection = frame.require_selection()
st.title("Explore")
components.selection_caption(selection, "move a control; only the settings that apply are enabled.")
explore(selection)
