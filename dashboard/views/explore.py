"""Explore: move the compression controls and see accuracy, honest size and per-layer effects on the live subset.

The two sliders (weight bits, sparsity) and what they change (the metric tiles, the explored-points chart, the
per-layer details) sit in one `st.fragment` at the top, so a slider step reruns only that small part. The method
settings under it (quantizer, scheme, ..., bias correction, per-layer overrides, retraining) are in the page's
body: changing one reruns the page. A slider step that changes what those settings show (their values or enabled
states, e.g. bits to 32) reruns the page too. Control values are bound to the URL
(`explore_bits=4&explore_sparsity=0.5&...`); what each control shows and whether it is enabled comes from the
canonical config (`dashboard.explore_state`).
Every config evaluated in this browser session is kept, as plain dicts, in `st.session_state["explore_history"]`.
While the user looks, the configs one slider step away are evaluated in the background (`dashboard.prefetch`), so
the next step is usually a cache hit; the per-layer section is a nested fragment (its own widgets rerun only it).
"""
from __future__ import annotations

import json
import time
import uuid

import pandas as pd
import streamlit as st

from compression_core.config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES,
                                     REPAIRS, SCALE_DTYPES, SCHEMES, SCOPES, CompressionConfig)
from compression_core.methods import quantizers
from dashboard import components, explore_state, frame, lessons, overrides_panel, prefetch, retrain_panel, services
from dashboard.charts import explore as explore_charts
from dashboard.charts.common import act_bits_label, metric_axis, option_label
from dashboard.explore_state import DEFAULT_STATES, GROUP_SIZES, NM_PATTERNS, WidgetState
from dashboard.selection import Selection

HISTORY_KEY = "explore_history"  # {selection key: [point dicts]}
OWNER_KEY = "explore_prefetch_owner"  # this session's id for the neighbour prefetcher
PREVIOUS_KEY = "explore_previous_config"  # the config shown before this one (JSON): the direction of a move
POINT_FIELDS = ("config_hash", "label", "bits", "quantizer", "prune_method", "sparsity", "accuracy",
                "accuracy_ci_low", "accuracy_ci_high", "size_bytes", "compression_ratio", "task", "metric",
                "metric_value", "cosine", "rel_l2", "recall_at_10", "agreement", "kl", "perplexity")
GROUP_SIZE_NAMES = {0: "not grouped"} | {g: str(g) for g in GROUP_SIZES[1:]}


def _state(key: str, default):
    return st.session_state.get(key, default)


# widget key -> (kind, options, the label shown and written to the URL); kinds: select (selectbox / select
# slider), number (slider), toggle
CONTROL_SPECS = {
    "explore_bits": ("select", ALLOWED_BITS, str), "explore_sparsity": ("number", None, None),
    "explore_quantizer": ("select", QUANTIZERS, option_label), "explore_scheme": ("select", SCHEMES, option_label),
    "explore_granularity": ("select", GRANULARITIES, option_label), "explore_range": ("select", RANGES, option_label),
    "explore_group_size": ("select", GROUP_SIZES, GROUP_SIZE_NAMES.get),
    "explore_scale_dtype": ("select", SCALE_DTYPES, str), "explore_double_quant": ("toggle", None, None),
    "explore_prune": ("select", PRUNE_METHODS, option_label), "explore_scope": ("select", SCOPES, option_label),
    "explore_nm": ("select", NM_PATTERNS, str), "explore_act_bits": ("select", ACT_BITS, act_bits_label),
    "explore_repair": ("select", REPAIRS, option_label), "explore_alpha": ("number", None, None),
    "explore_act_order": ("toggle", None, None),
}


def _from_url(key: str, text: str):
    """A control's value from its URL text (the label it shows), or None when the text is not one."""
    kind, options, names = CONTROL_SPECS[key]
    if kind == "toggle":
        return {"true": True, "false": False}.get(text.lower())
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return None
    return {names(o): o for o in options}.get(text)


def _to_url(key: str, value) -> str:
    kind, _, names = CONTROL_SPECS[key]
    if kind == "toggle":
        return "true" if value else "false"
    return f"{value:g}" if kind == "number" else names(value)


SLIDERS = ("explore_bits", "explore_sparsity")  # drawn in the fragment; every other control in the page body
DRAWN_KEY = "explore_settings_drawn"  # what the page body's settings were last drawn with (`_settings_shown`)
FULL_RUN_KEY = "explore_full_run"  # set by the page body just before it calls the fragment: not a slider-only run
SHOWN_KEY = "explore_shown_config"  # the config (JSON, with overrides) the fragment evaluated in this run


def resolve(keys=tuple(CONTROL_SPECS)) -> tuple[CompressionConfig, str | None, dict[str, WidgetState]]:
    """The canonical config the controls describe, the one-line note when it had to change the raw values, and
    every control's value and enabled state.

    The raw values (the widgets' from the last run or the user's move; on a first run the URL's) go through
    `explore_state.nearest_valid`, and the canonical values are written back to session state (and so to the
    URL) before any control is drawn: each control shows what is evaluated and is enabled only where it applies.
    Streamlit seeds a widget's first value from the URL whatever session state says, so a first run whose URL is
    not canonical rewrites the URL and reruns once before anything is evaluated.

    Args:
        keys: the controls whose canonical values are written back (those not drawn yet in this run).
    """
    fresh = [key for key in CONTROL_SPECS if key not in st.session_state]
    url = {key: _from_url(key, st.query_params[key]) for key in fresh if key in st.query_params}
    raw = {key: st.session_state[key] for key in CONTROL_SPECS if key not in fresh} | url
    config, note = explore_state.nearest_valid(raw)
    states = explore_state.widget_states(config, raw)
    if _fix_url(url, states):
        st.rerun()
    for key, state in states.items():
        # a fresh key seeded from the URL is already right; a disabled one is written to block a stale URL seed
        stale = not state.enabled or raw.get(key, DEFAULT_STATES[key].value) != state.value
        if key in keys and key not in url and stale:
            st.session_state[key] = state.value
    return config, note, states


def _settings_shown(config: CompressionConfig, states: dict[str, WidgetState]) -> str:
    """What the page body's settings show that a slider can change: every other control's value and enabled state,
    the repairs offered, and whether anything is pruned (Retrain's gradual stages need it)."""
    options = explore_state.repair_options(quantizers()[config.quant.quantizer], config.quant.enabled,
                                           config.act_bits)
    shown = [[key, _to_url(key, state.value), state.enabled] for key, state in states.items() if key not in SLIDERS]
    return json.dumps([shown, options, config.prune.sparsity > 0])


def settings(states: dict[str, WidgetState], config: CompressionConfig) -> None:
    """The method settings in the page body (every control but the two sliders)."""
    _selectboxes(states, (("explore_quantizer", "Quantizer", None), ("explore_scheme", "Scheme", None),
                          ("explore_granularity", "Granularity", None), ("explore_range", "Range", None)))
    format_controls(states)
    _draw_prune(states)
    repair_controls(states, config)
    st.session_state[DRAWN_KEY] = _settings_shown(config, states)


def _fix_url(url: dict, states: dict[str, WidgetState]) -> bool:
    """Rewrite the URL parameters of fresh controls whose value is not the canonical one; returns whether any was."""
    wrong = [key for key, value in url.items() if value != states[key].value]
    for key in wrong:
        value = states[key].value
        if not states[key].enabled or value == DEFAULT_STATES[key].value:
            del st.query_params[key]  # the others imply it, or it is the default: the URL leaves it out
        else:
            st.query_params[key] = _to_url(key, value)
        st.session_state[key] = value
    return bool(wrong)


def _seed(key: str):
    """The value a control is created with: its default on a first run, None (the widget's own) once controls()
    wrote its key, whose value then comes from session state (both at once make Streamlit warn on every rerun)."""
    return None if key in st.session_state else DEFAULT_STATES[key].value


def _index(key: str, options) -> int:
    return 0 if key in st.session_state else list(options).index(DEFAULT_STATES[key].value)


def _selectboxes(states: dict[str, WidgetState], rows: tuple) -> None:
    """One row of bound selectboxes: (key, label, help) each, options and labels from CONTROL_SPECS."""
    for column, (key, label, help_) in zip(components.row(4), rows):
        _, options, names = CONTROL_SPECS[key]
        column.selectbox(label, options, index=_index(key, options), key=key, bind="query-params",
                         format_func=names, disabled=not states[key].enabled, help=help_)


def sliders(states: dict[str, WidgetState]) -> None:
    """Weight bits and sparsity."""
    left, right = components.row(2)
    left.select_slider("Weight bits", ALLOWED_BITS, value=_seed("explore_bits"), key="explore_bits",
                       bind="query-params", disabled=not states["explore_bits"].enabled,
                       help="32 = not quantized. Fixed-width formats (fp16 / bf16 casts, FP8, MX, NF4) show their "
                            "own width.")
    right.slider("Sparsity", 0.0, explore_state.MAX_SPARSITY, _seed("explore_sparsity"), 0.01,
                 key="explore_sparsity", bind="query-params", disabled=not states["explore_sparsity"].enabled,
                 format="%.2f", help="Fraction of weights removed (exactly round(s·n) of them). N:M shows the "
                                     "sparsity its pattern sets.")


def _draw_prune(states: dict[str, WidgetState]) -> None:
    """Pruning method, scope, N:M pattern and activation bits."""
    _selectboxes(states, (("explore_prune", "Pruning method", None), ("explore_scope", "Pruning scope", None),
                          ("explore_nm", "N:M pattern", "Keep the N largest of every M consecutive weights."),
                          ("explore_act_bits", "Activation bits",
                           "Quantize each layer's input, calibrated on training samples.")))


def repair_controls(states: dict[str, WidgetState], config: CompressionConfig) -> None:
    """Repair (only the repairs that apply to `config` are offered), SmoothQuant's alpha and GPTQ's act-order."""
    options = explore_state.repair_options(quantizers()[config.quant.quantizer], config.quant.enabled,
                                           config.act_bits)
    c = components.row(4)
    c[0].selectbox("Repair", options, index=0, key="explore_repair",
                   bind="query-params", disabled=not states["explore_repair"].enabled, format_func=option_label,
                   help="Calibrated repair of the rounding on training samples: GPTQ (integer grids), AWQ "
                        "(weight-only), SmoothQuant (with 8-bit activations).")
    c[1].slider("SmoothQuant α", 0.0, 1.0, _seed("explore_alpha"), 0.05, key="explore_alpha",
                bind="query-params", disabled=not states["explore_alpha"].enabled,
                help="How much of the activation range moves into the weights: s = max|x|^α / max|w|^(1-α).")
    c[2].toggle("GPTQ act-order", value=bool(_seed("explore_act_order")), key="explore_act_order",
                bind="query-params", disabled=not states["explore_act_order"].enabled,
                help="Round the columns with the largest input energy first.")


def format_controls(states: dict[str, WidgetState]) -> None:
    """Group size, scale storage type and NF4 double quantization; each enabled only where it applies."""
    c = components.row(4)
    c[0].selectbox("Group size", GROUP_SIZES, index=_index("explore_group_size", GROUP_SIZES),
                   key="explore_group_size", bind="query-params", disabled=not states["explore_group_size"].enabled,
                   format_func=GROUP_SIZE_NAMES.get,
                   help="Weights per block along the input dimension (granularity group: default 128; NF4: 64). "
                        "MX formats always use 32.")
    c[1].selectbox("Scale stored as", SCALE_DTYPES, index=_index("explore_scale_dtype", SCALE_DTYPES),
                   key="explore_scale_dtype", bind="query-params", disabled=not states["explore_scale_dtype"].enabled,
                   help="Storage type of each scale, counted in the size; rounded up to it.")
    c[2].toggle("Double-quantize scales", value=bool(_seed("explore_double_quant")),
                key="explore_double_quant", bind="query-params", disabled=not states["explore_double_quant"].enabled,
                help="NF4: block scales as int8 in blocks of 256 (QLoRA); off keeps them fp32.")


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
    data, spec = _points_chart(json.dumps(points, sort_keys=True), record["config_hash"],
                               record["baseline_metric_value"], record["metric"])
    st.vega_lite_chart(data, spec, key="explore_points_chart")


@st.cache_data(show_spinner=False, max_entries=128)
def _points_chart(points_json: str, current: str, baseline: float, metric: str) -> tuple[pd.DataFrame, dict]:
    """The explored-points chart's data and spec, kept for a set of points seen before (stepping back and forth
    between configs redraws the same points)."""
    points = json.loads(points_json)
    front, stairs = services.pareto(points, metric)
    return explore_charts.explored_points(pd.DataFrame(points), current=current, baseline=baseline,
                                          axis=metric_axis(metric), front=stairs if len(front) > 1 else None)


def _session_owner() -> str:
    """This browser session's id for the prefetcher (a random token kept in session state)."""
    if OWNER_KEY not in st.session_state:
        st.session_state[OWNER_KEY] = uuid.uuid4().hex
    return st.session_state[OWNER_KEY]


def prefetch_next(selection: Selection, config: CompressionConfig, record: dict, owner: str) -> int:
    """Queue the configs one slider step away for background evaluation (`prefetch.plan`); returns how many."""
    previous = _state(PREVIOUS_KEY, None)
    st.session_state[PREVIOUS_KEY] = config.to_json()
    target = services.PrefetchTarget(selection, bool(st.session_state.get("explore_details")))
    return services.prefetcher().submit(owner, target, prefetch.plan(previous, config, record["eval_seconds"]))


@st.fragment
def per_layer(selection: Selection, record: dict) -> None:
    """The per-layer table and histogram; choosing a layer or a histogram option reruns only this part."""
    components.layer_details(selection, record, "explore")


@st.fragment
def explore(selection: Selection) -> None:
    """Sliders + metrics + points + details; reruns alone when a slider moves (the page, when that changes what
    the settings below show)."""
    started = time.perf_counter()
    owner = _session_owner()
    services.prefetcher().cancel(owner)  # the user is waiting: start no background work of this session now
    config, note, states = resolve(keys=SLIDERS)  # the page body writes the others, after this
    full_run = st.session_state.pop(FULL_RUN_KEY, False)
    if not full_run and _settings_shown(config, states) != st.session_state.get(DRAWN_KEY):
        st.rerun()  # a slider changed what the settings show: redraw the page (scope "app"), which writes them
    sliders(states)
    if note:
        st.info(note, icon=":material/info:")
    st.session_state[SHOWN_KEY] = None
    try:
        config = overrides_panel.applied(selection, config)
        st.session_state[SHOWN_KEY] = config.to_json()
        record = services.evaluate(selection, config.to_json())
    except services.USER_ERRORS as e:
        components.show_error(e)
        return
    engine_ms = 1000 * (time.perf_counter() - started)
    shipped = (" · from the shipped precomputed results (same weights, data and engine; its timings were measured "
               "when they were made)") if record.get("precomputed") else ""
    st.caption(f"**{config.label}** · evaluated on {record['n_samples']:,} samples of {selection.dataset} test"
               f"{shipped}")
    components.metric_tiles(record)
    points = remember(selection, record)
    points = lessons.merged(points, lessons.seed_points(selection, POINT_FIELDS))  # the shipped front, if any
    st.subheader("Explored configs")
    show_points(points, record)
    if st.button("Clear explored points", key="explore_clear"):
        history = dict(_state(HISTORY_KEY, {}))
        history[selection.key] = []
        st.session_state[HISTORY_KEY] = history
        st.rerun(scope="fragment")
    st.subheader("Per layer")
    if st.toggle("Show per-layer details", key="explore_details", bind="query-params",
                 help="The per-layer table, a layer's weight histogram before vs after and every layer's stored "
                      "size. Off, a slider step redraws only the tiles and the chart above (about 150 ms less "
                      "in the browser)."):
        per_layer(selection, record)
    total_ms = 1000 * (time.perf_counter() - started)
    st.caption(f"Server time for this update: {total_ms:,.0f} ms (compress + evaluate, or cache hit: "
               f"{engine_ms:,.0f} ms).", help="Measured on the server around this section's rerun; "
                                             "network and browser drawing come on top.")
    prefetch_next(selection, config, record, owner)


def page(selection: Selection) -> None:
    """The fragment first (its tiles reach the browser before the ~60 elements of the settings), then the method
    settings under it; a retraining that has just finished is added to the explored points with one more run."""
    st.session_state[FULL_RUN_KEY] = True
    explore(selection)
    config, _, states = resolve(keys=tuple(key for key in CONTROL_SPECS if key not in SLIDERS))
    st.subheader("Method")
    try:
        settings(states, config)
        config = overrides_panel.panel(selection, config)
        retrained = retrain_panel.panel(selection, config)  # a finished retraining of this session, or None
    except services.USER_ERRORS as e:
        components.show_error(e)
        return
    shown = st.session_state.get(SHOWN_KEY)
    if retrained:
        remember(selection, retrained)
        st.rerun()  # the fragment above has drawn its points already
    if shown is not None and shown != config.to_json():
        st.rerun()  # an edit of the overrides table (or an allocation) applied here, after the fragment ran


selection = frame.require_selection()
st.title("Explore")
components.selection_caption(selection, "move a control; only the settings that apply are enabled.")
page(selection)
