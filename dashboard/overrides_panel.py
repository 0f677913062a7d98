"""Explore's per-layer overrides and bias correction, drawn under the main controls.

An editable table lists the model's layers with Bits, Sparsity, Quantizer and Skip (a blank cell inherits the
global setting), the drop the Layers page measured for each layer beside it (read-only, when sensitivity was run
for this selection), and "Allocate bits under a size budget", which fills the table from
`compression_core.allocate.allocate_bits`. The overrides live in the URL as one param in the CLI's `--layer`
syntax, entries joined by ';' (`explore_layers=conv1:bits=8;fc2:skip=1`), parsed with
`cli_flags.parse_layer_override`; the bias-correction toggle is `explore_bias_correction`.

Session state `explore_layers_state` holds the rows the table was opened with (from the URL or an allocation), the
URL text last read or written, a generation number that renews the table after an allocation, and the last valid
overrides: an override the engine refuses shows one line under the table and the previous ones stay in force.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import streamlit as st

from compression_core.allocate import FP32, AllocationError
from compression_core.cli_flags import LAYER_KEYS, SKIP_VALUES, UserError, parse_layer_override
from compression_core.config import ALLOWED_BITS, QUANTIZERS, CompressionConfig, ConfigError
from compression_core.errors import shown
from dashboard import components, layer_services, services
from dashboard.charts import layers as layer_charts
from dashboard.charts.common import metric_axis
from dashboard.selection import Selection

URL_KEY = "explore_layers"
BIAS_KEY = "explore_bias_correction"
STATE_KEY = "explore_layers_state"
TABLE_KEY = "explore_layers_table"  # + "_{generation}": a new table after an allocation
LAYERS_SETTINGS_KEY = "layers_settings"  # dashboard/views/layers.py SETTINGS_KEY: {selection key: [config JSON]}
MAX_URL_CHARS = 20_000
TABLE_COLUMNS = {"Bits": "bits", "Sparsity": "sparsity", "Quantizer": "quantizer", "Skip (fp32)": "skip"}
Rows = dict[str, dict[str, str]]  # layer -> {--layer key: value text}, only the keys that are set


def panel(selection: Selection, config: CompressionConfig) -> CompressionConfig:
    """Draw the bias-correction toggle and the per-layer overrides; return `config` with them.

    Args:
        selection: the sidebar's selection (its layers, its sensitivity results).
        config: the global config from Explore's controls (its overrides are replaced).

    Returns:
        `config` with `overrides` (the table's valid rows, or the last valid ones when an edit is refused) and
        `bias_correction` set.
    """
    experiment = services.get_experiment(selection)
    names = list(experiment.layer_names)
    no_calib = "train" not in experiment.dataset.tensors
    bias = st.toggle("Bias correction", key=BIAS_KEY, bind="query-params", disabled=no_calib,
                     help="After compressing, shift each layer's bias by its mean output error on 512 training "
                          "samples. Layers without a bias (a conv before a BatchNorm that is not folded) are not "
                          "corrected. Needs a train split.")
    if no_calib:
        st.caption(f"Bias correction calibrates on training samples; {components.plain(selection.dataset)} has no "
                   "train split.")
    state = _opened(selection, names, config)
    if state["note"]:
        st.warning(components.plain(state["note"]), icon=":material/link_off:")
    with st.expander("Per-layer overrides", expanded=bool(state["rows"]), icon=":material/tune:"):
        records = _sensitivity(selection)
        _allocate_controls(selection, config, state, records)
        rows = _table(names, state, records)
        overrides = _overrides(rows, names, config, state)
    return replace(config, overrides=overrides, bias_correction=bool(bias) and not no_calib)


def applied(selection: Selection, config: CompressionConfig) -> CompressionConfig:
    """`config` with the overrides and bias correction this panel holds, without drawing it: for Explore's slider
    fragment, whose `config` may have moved since the panel was drawn. The overrides are parsed again against
    `config` (they inherit its settings); when they no longer apply, one line says so and none are applied, as
    `panel` does for a refused row with no valid ones before it."""
    experiment = services.get_experiment(selection)
    text = _opened(selection, list(experiment.layer_names), config)["valid"]  # read from the URL on a first run
    no_calib = "train" not in experiment.dataset.tensors
    try:
        overrides = _parse(text, config)
        config = replace(config, overrides=overrides)
    except (UserError, ConfigError) as err:
        components.show_error(err, context="The per-layer overrides do not apply to these settings and are not "
                                           "applied: ")
    return replace(config, bias_correction=_bias_on() and not no_calib)


def _bias_on() -> bool:
    """The bias-correction toggle's value: its widget's, or before it is drawn in a session, the URL's."""
    if BIAS_KEY in st.session_state:
        return bool(st.session_state[BIAS_KEY])
    return str(st.query_params.get(BIAS_KEY, "")).lower() == "true"


def _opened(selection: Selection, names: list[str], config: CompressionConfig) -> dict:
    """The session's table state, re-read from the URL when the URL or the selection changed since."""
    url = str(st.query_params.get(URL_KEY, ""))
    state = st.session_state.get(STATE_KEY)
    if state is None or state["url"] != url or state["selection"] != selection.key:
        rows, note = parse_rows(url, names, config)
        generation = state["generation"] + 1 if state else 0
        state = {"url": url, "selection": selection.key, "rows": rows, "generation": generation, "note": note,
                 "valid": _text(rows, names), "allocated": None}
        st.session_state[STATE_KEY] = state
    return state


def parse_rows(text: str, names: list[str], config: CompressionConfig) -> tuple[Rows, str | None]:
    """The valid `--layer` entries of `text` (joined by ';') as rows, and one line about those ignored (or None).

    Each entry must name a compressible layer once and pass `parse_layer_override` against `config`.
    """
    if len(text) > MAX_URL_CHARS:
        return {}, f"Ignored the layer overrides in the URL: {len(text):,} characters (at most {MAX_URL_CHARS:,})."
    entries = [e.strip() for e in text.split(";") if e.strip()]
    rows: Rows = {}
    problems = []
    for entry in entries:
        name = entry.partition(":")[0].strip()
        try:
            if name not in names:
                raise UserError(f"{shown(name)} is not a layer of this model; layers are {', '.join(names)}")
            if name in rows:
                raise UserError(f"layer {shown(name)} is given more than once")
            parse_layer_override(entry, config)
        except (UserError, ConfigError) as err:
            problems.append(str(err))
            continue
        rows[name] = _keys(entry.partition(":")[2])
    if not problems:
        return rows, None
    return rows, (f"Ignored {len(problems)} of {len(entries)} layer overrides in the URL "
                  f"(NAME:key=value[,key=value], entries joined by ';'): {problems[0]}")


def _keys(rest: str) -> dict[str, str]:
    """{key: value} of a checked entry's `key=value` items in LAYER_KEYS order; skip only when true."""
    items = {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        items[key.strip()] = value.strip()
    if "skip" in items and not SKIP_VALUES[items["skip"].lower()]:
        del items["skip"]
    items.update({"skip": "1"} if "skip" in items else {})
    return {k: items[k] for k in LAYER_KEYS if k in items}


def _text(rows: Rows, names: list[str]) -> str:
    """The rows in the `--layer` syntax, layers in model order, entries joined by ';'."""
    return ";".join(f"{n}:" + ",".join(f"{k}={v}" for k, v in rows[n].items()) for n in names if rows.get(n))


def _sensitivity(selection: Selection) -> list[dict]:
    """The Layers page's sensitivity records for this selection (cached), or [] when it was not run."""
    settings = st.session_state.get(LAYERS_SETTINGS_KEY, {}).get(selection.key)
    return layer_services.layer_sensitivity(selection, list(settings))[0] if settings else []


def _drop_columns(records: list[dict]) -> dict[str, dict[str, float]]:
    """{column title: {layer: measured drop}} per sensitivity setting, in the order they were run."""
    columns: dict[str, dict[str, float]] = {}
    for r in records:
        columns.setdefault(f"Drop: {r['setting']}", {})[r["layer"]] = r["metric_harm"]
    return columns


def _frame(names: list[str], rows: Rows, drops: dict[str, dict[str, float]]) -> pd.DataFrame:
    """The editor's table: blank cells inherit; the other `--layer` keys and the drops are read-only."""
    def cell(name: str, key: str):
        value = rows.get(name, {}).get(key)
        if key == "skip":
            return value is not None
        return None if value is None else {"bits": int, "sparsity": float}.get(key, str)(value)

    frame = pd.DataFrame({"Layer": names, **{title: [cell(n, key) for n in names]
                                             for title, key in TABLE_COLUMNS.items()}})
    frame["Bits"] = frame["Bits"].astype("Int64")
    frame["Sparsity"] = frame["Sparsity"].astype("Float64")
    frame["Quantizer"] = frame["Quantizer"].astype("object")
    frame["Other settings"] = [",".join(f"{k}={v}" for k, v in rows.get(n, {}).items() if k not in
                                        TABLE_COLUMNS.values()) for n in names]
    for title, by_layer in drops.items():
        frame[title] = [by_layer.get(n, math.nan) for n in names]
    return frame


def _table(names: list[str], state: dict, records: list[dict]) -> Rows:
    """Draw the editable table; return its rows (edits applied) and keep the URL in step with them."""
    drops = _drop_columns(records)
    if drops:
        axis = metric_axis(records[0].get("metric", "accuracy"))
        st.caption(f"Drop columns: {layer_charts.harm_title(axis)} when only that layer was compressed with the "
                   "setting (from the Layers page).")
    column_config = {
        "Layer": st.column_config.TextColumn(disabled=True),
        "Bits": st.column_config.SelectboxColumn(options=list(ALLOWED_BITS), help="Blank: the global bits."),
        "Sparsity": st.column_config.NumberColumn(min_value=0.0, max_value=0.99, step=0.01, format="%.2f",
                                                  help="Blank: the global sparsity."),
        "Quantizer": st.column_config.SelectboxColumn(options=list(QUANTIZERS), help="Blank: the global one."),
        "Skip (fp32)": st.column_config.CheckboxColumn(help="Leave this layer in fp32, unpruned."),
        "Other settings": st.column_config.TextColumn(disabled=True, help="Other --layer keys (from the URL)."),
        **{title: st.column_config.NumberColumn(disabled=True, format="%.2f") for title in drops},
    }
    edited = st.data_editor(_frame(names, state["rows"], drops), hide_index=True, num_rows="fixed",
                            column_config=column_config, key=f"{TABLE_KEY}_{state['generation']}")
    rows = {}
    for record in edited.to_dict("records"):
        own = {k: v for k, v in state["rows"].get(record["Layer"], {}).items() if k not in TABLE_COLUMNS.values()}
        for title, key in TABLE_COLUMNS.items():
            value = record[title]
            if key == "skip":
                own.update({"skip": "1"} if bool(value) else {})
            elif value is not None and not pd.isna(value) and str(value) != "":
                own[key] = str(int(value)) if key == "bits" else f"{float(value):g}" if key == "sparsity" else value
        rows[record["Layer"]] = {k: own[k] for k in LAYER_KEYS if k in own}
    text = _text(rows, names)
    if text != state["url"]:
        if text:
            st.query_params[URL_KEY] = text
        else:
            st.query_params.pop(URL_KEY, None)
        state["url"] = text
    return rows


def _overrides(rows: Rows, names: list[str], config: CompressionConfig, state: dict) -> tuple:
    """The rows as LayerOverrides against `config`; a refused row shows one line and the last valid ones stay."""
    try:
        overrides = _parse(_text(rows, names), config)
        replace(config, overrides=overrides)  # the override together with the global settings
    except (UserError, ConfigError) as err:
        components.show_error(err, context="This override is not applied (the previous overrides stay): ")
        try:
            return _parse(state["valid"], config)
        except (UserError, ConfigError):
            return ()
    state["valid"] = _text(rows, names)
    if state["allocated"] and state["allocated"]["text"] == state["valid"]:
        st.caption(state["allocated"]["line"])
    return overrides


def _parse(text: str, config: CompressionConfig) -> tuple:
    return tuple(parse_layer_override(entry, config) for entry in text.split(";") if entry)


def _allocate_controls(selection: Selection, config: CompressionConfig, state: dict, records: list[dict]) -> None:
    """Budget (KiB or × compression) and "Allocate bits under a size budget": fills the table when pressed."""
    dense = services.baseline(selection)["dense_bytes"]
    c = st.columns([1, 1, 2])
    unit = c[0].radio("Budget as", ("KiB", "× compression"), key="explore_budget_unit", horizontal=True)
    if unit == "KiB":
        amount = c[1].number_input("Size budget (KiB)", 0.1, dense / 1024, max(round(dense / 8 / 1024, 1), 0.1), 0.1,
                                   key="explore_budget_kib", help="The whole model, every overhead counted.")
        budget = math.floor(amount * 1024)
    else:
        ratio = c[1].number_input("Compression (×)", 1.0, 64.0, 8.0, 0.5, key="explore_budget_ratio",
                                  help="fp32 size / budget.")
        budget = math.floor(dense / ratio)
    settings = st.session_state.get(LAYERS_SETTINGS_KEY, {}).get(selection.key)
    pressed = c[2].button("Allocate bits under a size budget", key="explore_allocate", disabled=not records,
                          icon=":material/balance:",
                          help="Greedy on the measured drops: every layer starts at fp32 and the layer that "
                               "loses least per byte saved gets fewer bits until the model fits.")
    if not records:
        st.caption("Run sensitivity on the Layers page (each layer alone at a few bit widths) to allocate bits.")
    if not pressed:
        return
    try:
        result = layer_services.allocate(selection, replace(config, overrides=()).to_json(), tuple(settings), budget)
    except (AllocationError, *services.USER_ERRORS) as err:
        components.show_error(err)
        return
    rows = {name: {"skip": "1"} if bits == FP32 else {"bits": str(bits)} for name, bits in result["bits"]}
    names = [name for name, _ in result["bits"]]
    unit_name = metric_axis(records[0].get("metric", "accuracy"))
    line = (f"Allocated under {budget:,} B: {result['size_bytes']:,} B measured by the size model; sum of the "
            f"layers' measured drops {result['drop_sum']:.2f} ({layer_charts.harm_title(unit_name)}).")
    text = _text(rows, names)
    state.update(rows=rows, generation=state["generation"] + 1, allocated={"text": text, "line": line})
