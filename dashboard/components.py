"""Widgets several pages share: one record's metric tiles, the layer-detail panel, the results table and CSV,
and messages that show user-provided text literally.

Components are small functions that draw with Streamlit and return what the page needs next; the figures they
show come from the pure builders in `dashboard.charts`. Widget keys are `f"{key}_…"` from the page's `key`.

`st.error`, `st.warning`, `st.info` and `st.caption` render Markdown, so text the user controls (a model spec
from the URL, an uploaded file's name, a run label made from them) goes through `plain` before it is shown.
"""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from compression_core.config import CompressionConfig
from dashboard import services
from dashboard.charts import layers as layer_charts
from dashboard.charts import sweep as sweep_charts
from dashboard.selection import Selection

ERROR_ICON = ":material/error:"
CHART_CONFIG = {"displaylogo": False}
# Markdown (CommonMark + GFM + Streamlit's directives) that could turn text into a link, an image, HTML, code,
# emphasis, a table or math: escaped everywhere. Autolinks (http://, www., e-mail) are broken at their seam.
_ALWAYS = re.compile(r"([\\`*\[\]()<>!|~$&#{}])")
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword "_" never emphasises
_AUTOLINK = re.compile(r"(?i)(?<=www)\.|:(?=//)|@")
_LINE_START = re.compile(r"^(\s*)([-+=]|\d+[.)])")  # list items and setext lines at the start

# results_frame columns, in the display units `results_table` gives them -> how st.dataframe shows them
RESULT_COLUMNS = {
    "model": "Model", "dataset": "Dataset", "limit": "Evaluated on", "engine_version": "Engine",
    "label": st.column_config.TextColumn("Config", width="large"),
    "accuracy": st.column_config.NumberColumn("Accuracy (%)", format="%.2f"),
    "accuracy_drop_pts": st.column_config.NumberColumn("Drop (pts)", format="%.2f"),
    "size_kib": st.column_config.NumberColumn("Size (KiB)", format="%.2f"),
    "compression_ratio": st.column_config.NumberColumn("Compression (×)", format="%.1f"),
    "bits_per_weight": st.column_config.NumberColumn("Bits / weight", format="%.2f"),
    "realized_sparsity": st.column_config.NumberColumn("Sparsity (%)", format="%.1f"),
}
# layer_charts.layer_table columns with a number format
LAYER_COLUMNS = {
    "Weights": st.column_config.NumberColumn(format="localized"),
    "Kept": st.column_config.NumberColumn(format="localized"),
    "Sparsity (%)": st.column_config.NumberColumn(format="%.1f"),
    "Size (KiB)": st.column_config.NumberColumn(format="%.2f"),
    "Bits / weight": st.column_config.NumberColumn(format="%.2f"),
}


def plain(text: object) -> str:
    """`text` on one line with its Markdown escaped, so a Markdown-rendering element shows it literally.

    Example: `plain("[x](http://evil.example)")` -> `\\[x\\]\\(http\\://evil.example\\)`, shown as typed.
    """
    line = _ALWAYS.sub(r"\\\1", " ".join(str(text).splitlines()))
    line = _AUTOLINK.sub(r"\\\g<0>", _EDGE_UNDERSCORE.sub(r"\\_", line))
    return _LINE_START.sub(lambda m: f"{m[1]}{m[2][:-1]}\\{m[2][-1]}", line)


def show_error(error: BaseException | str, context: str = "", icon: str = ERROR_ICON) -> None:
    """One `st.error` line: `context` (our words, may use Markdown) then the error's first line shown literally."""
    line = error if isinstance(error, str) else services.error_line(error)
    st.error(f"{context}{plain(line)}", icon=icon)


def selection_caption(selection: Selection, text: str) -> None:
    """The page's sub-header: what the sidebar chose (shown literally), then what the page does."""
    st.caption(f"{plain(selection.label)} — {text}")


def metric_tiles(record: dict) -> None:
    """The headline numbers of one record as st.metric tiles, with the accuracy's 95 % interval under them."""
    acc, drop = 100.0 * record["accuracy"], record["accuracy_drop_pts"]
    c = st.columns(6)
    c[0].metric("Accuracy", f"{acc:.2f} %", delta=f"{0.0 - drop:+.2f} pts vs fp32",
                help="Top-1 accuracy on the evaluation samples; the delta is the change against the fp32 model.")
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


def layer_details(selection: Selection, record: dict, key: str) -> str:
    """Per-layer table, a layer selector (the largest layer first) and that layer's weight histogram before vs
    after compression with its grid.

    Args:
        selection: the model and data the record was evaluated with (rebuilds the compressed layer).
        record: an engine record with `config` and `layers`.
        key: prefix of the widget keys (`{key}_layers`, `{key}_layer`, `{key}_log_y`, `{key}_hide_zeros`,
            `{key}_histogram`).

    Returns:
        The name of the layer shown.
    """
    layers = record["layers"]
    st.dataframe(layer_charts.layer_table(layers), hide_index=True, key=f"{key}_layers", column_config=LAYER_COLUMNS)
    names = [l["name"] for l in layers]
    largest = max(range(len(names)), key=lambda i: layers[i]["n"])
    c = st.columns([2, 1, 1])
    layer = c[0].selectbox("Layer", names, index=largest, key=f"{key}_layer", help="The largest layer is shown first.")
    log_y = c[1].toggle("Log count axis", key=f"{key}_log_y")
    hide_zeros = c[2].toggle("Hide zeros", value=True, key=f"{key}_hide_zeros",
                             help="Leave exact zeros (pruned weights) out, so the rest stays visible.")
    config_json = CompressionConfig.from_dict(record["config"]).to_json()
    hist, grid = services.layer_histogram(selection, config_json, layer, hide_zeros=hide_zeros)
    st.plotly_chart(layer_charts.weight_histogram(hist, grid, log_y=log_y, title=f"{layer}: weights before vs after"),
                    key=f"{key}_histogram", config=CHART_CONFIG)
    if grid.get("channel") is not None:
        st.caption(f"Per-channel grid: levels shown for channel {grid['channel']} (the widest); the dashed lines "
                   f"are the clip range over all channels.")
    if grid.get("block") is not None:
        st.caption(f"Block grid: the values block {grid['block']} can represent (the block holding the largest "
                   f"|w|; blocks run along the input dimension); the dashed lines are that block's range.")
    return layer


def eval_set_label(limit: int | None) -> str:
    """What a record was evaluated on: 'whole test set' or '1,000 samples'."""
    return "whole test set" if limit is None else f"{limit:,} samples"


def results_table(records: list[dict], columns: list[str], *, key: str, sort_by: str | None = None) -> pd.DataFrame:
    """The records as an st.dataframe of `columns` (keys of RESULT_COLUMNS) in display units: accuracy and
    sparsity in %, size in KiB, the evaluation set in words.

    Returns:
        The records' `sweep_charts.results_frame` (engine units, every column), for the CSV download.
    """
    df = sweep_charts.results_frame(records)
    show = df.assign(accuracy=100 * df["accuracy"], realized_sparsity=100 * df["realized_sparsity"],
                     size_kib=df["size_bytes"] / 1024, limit=[eval_set_label(r["limit"]) for r in records])[columns]
    st.dataframe(show if sort_by is None else show.sort_values(sort_by), hide_index=True, key=key,
                 column_config={c: RESULT_COLUMNS[c] for c in columns})
    return df


def csv_download(df: pd.DataFrame, file_name: str, key: str) -> None:
    """A "Download CSV" button for a results frame (engine units, one row per config)."""
    st.download_button("Download CSV", df.to_csv(index=False), file_name=file_name, mime="text/csv", key=key,
                       icon=":material/download:", on_click="ignore")
