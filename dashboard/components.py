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
import plotly.graph_objects as go
import streamlit as st

from compression_core.config import CompressionConfig
from compression_core.record_text import MORE_METRICS, MoreMetric, change_text, field_text
from dashboard import layer_services, services
from dashboard.charts import layers as layer_charts
from dashboard.charts import sweep as sweep_charts
from dashboard.charts.common import metric_axis
from dashboard.selection import Selection

ERROR_ICON = ":material/error:"
UNKNOWN_SHOWN = "—"  # a number the record does not have
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
    "task": "Task",
    "cosine": st.column_config.NumberColumn("Cosine vs fp32", format="%.4f"),
    "rel_l2": st.column_config.NumberColumn("Rel. L2 error", format="%.4f"),
    "recall_at_10": st.column_config.NumberColumn("Recall@10 (%)", format="%.1f"),
    "agreement": st.column_config.NumberColumn("Agreement (%)", format="%.1f"),
    "kl": st.column_config.NumberColumn("KL (nats)", format="%.4f"),
    "perplexity": st.column_config.NumberColumn("Perplexity", format="%.2f"),
    "size_kib": st.column_config.NumberColumn("Size (KiB)", format="%.2f"),
    "compression_ratio": st.column_config.NumberColumn("Compression (×)", format="%.1f"),
    "bits_per_weight": st.column_config.NumberColumn("Bits / weight", format="%.2f"),
    "realized_sparsity": st.column_config.NumberColumn("Sparsity (%)", format="%.1f"),
    "top5": st.column_config.NumberColumn("Top-5 (%)", format="%.2f"),
    "macs": st.column_config.NumberColumn("MACs / sample", format="compact"),
    "sparse_macs": st.column_config.NumberColumn("Sparse MACs", format="compact"),
    "bitops": st.column_config.NumberColumn("BitOps / sample", format="compact"),
    "sparse_bitops": st.column_config.NumberColumn("Sparse BitOps", format="compact"),
    "latency_ms_per_batch": st.column_config.NumberColumn("Latency (ms / batch)", format="%.2f"),
    "eval_seconds": st.column_config.NumberColumn("Eval time (s)", format="%.2f"),
}
# The compute and timing columns of the results tables (after the task's metrics and the size columns)
COMPUTE_COLUMNS = ("macs", "sparse_macs", "bitops", "sparse_bitops", "latency_ms_per_batch", "eval_seconds")
TILES_PER_ROW = 5  # st.metric tiles per row: 175 px each at 1,400 px with the sidebar open ("1,683.9 KiB" fits)
# Each task's secondary metric tiles (after the headline metric and the size tiles); absent ones are not shown,
# except classify's agreement ("—" for the fp32 model itself).
SECONDARY = {"classify": ("agreement",), "fidelity": ("rel_l2", "recall_at_10", "agreement", "kl"), "lm": ("loss",)}
SECONDARY_NAMES = {"agreement": "Agreement", "rel_l2": "Relative L2 error", "recall_at_10": "Recall@10",
                   "kl": "KL vs fp32 (nats)", "loss": "Cross-entropy (nats)"}
METRIC_HELP = {
    "agreement": "Fraction of samples (or token positions) where the compressed model predicts the same class as "
                 "the fp32 one.",
    "cosine": "Mean cosine similarity between the compressed and the fp32 outputs of the same inputs (1 = same "
              "direction).",
    "rel_l2": "Mean ‖compressed − fp32‖ / ‖fp32‖ of each sample's outputs (0 = identical).",
    "recall_at_10": "How many of each sample's 10 nearest neighbours under the fp32 embeddings stay among its 10 "
                    "nearest under the compressed ones.",
    "kl": "Mean KL(fp32 ‖ compressed) of the softmax distributions (0 = identical).",
    "perplexity": "exp(mean next-token cross-entropy) over the scored tokens; lower is better.",
    "loss": "Mean cross-entropy in nats (per token for lm, per sample for classify).",
    "top5": "Fraction of samples whose true class is among the 5 highest scores; — when the dataset has 5 classes "
            "or fewer.",
    "macs": "Multiply-accumulates of the compressible layers for one input sample; 'sparse' counts only those that "
            "touch a kept weight.",
    "bitops": "Bit operations for one sample: MACs × weight bits × activation bits, summed over layers; 'sparse' "
              "counts only the MACs on kept weights.",
    "latency_ms_per_batch": "Measured wall time of one evaluation batch on this server; 'eval' is the whole "
                            "evaluation's time.",
}
TASK_COLUMNS = {"classify": ("accuracy", "accuracy_drop_pts", "top5"),
                "fidelity": ("cosine", "rel_l2", "recall_at_10", "agreement", "kl"), "lm": ("perplexity",)}
PERCENT_COLUMNS = ("accuracy", "recall_at_10", "agreement", "realized_sparsity", "top5")  # fractions shown in %
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


def _headline_tile(column, record: dict) -> None:
    """The record's task metric with its change against fp32 (green when better, whichever way that is)."""
    if record.get("task", "classify") == "classify":
        acc, drop = 100.0 * record["accuracy"], record["accuracy_drop_pts"]
        column.metric("Accuracy", f"{acc:.2f} %", delta=change_text(drop),
                      help="Top-1 accuracy on the evaluation samples; the delta is the change against the fp32 model.")
        column.caption(f"95 % CI {100 * record['accuracy_ci_low']:.1f}–{100 * record['accuracy_ci_high']:.1f} % · "
                       f"n = {record['n_samples']:,}")
        return
    axis = metric_axis(record["metric"])
    change = axis.scale * (record["metric_value"] - record["baseline_metric_value"])
    column.metric(axis.title, axis.show(record["metric_value"]),
                  delta=f"{change:+,.{axis.digits}f}{axis.unit} vs fp32",
                  delta_color="normal" if axis.higher_is_better else "inverse", help=METRIC_HELP[record["metric"]])
    tokens = f" · {record['n_tokens']:,} tokens" if record.get("n_tokens") is not None else ""
    column.caption(f"n = {record['n_samples']:,}{tokens}")


def size_text(n_bytes: int) -> str:
    """A size short enough for a metric tile (the exact bytes go in its help): '9.87 KiB', '213 KiB', '1.62 MiB'."""
    kib = n_bytes / 1024
    if kib < 10:
        return f"{kib:.2f} KiB"
    return f"{kib:.0f} KiB" if kib < 1000 else f"{kib / 1024:,.2f} MiB"


def row(n: int, **kwargs) -> list:
    """n slots of one horizontal flex row, filled left to right (one layout block instead of st.columns' 1 + n:
    a rerun sends and the browser redraws fewer elements)."""
    return [st.container(horizontal=True, **kwargs)] * n


def metric_tiles(record: dict) -> None:
    """The numbers of one record as st.metric tiles, `TILES_PER_ROW` to a row: its task's metric against fp32
    (with the 95 % interval for accuracy), size, compression, bits and sparsity; then the task's secondary
    metrics, top-5 (classify), MACs and BitOps (with their sparse counts) and latency (with the evaluation time).
    A field the record lacks (stored before it existed) shows "—"."""
    c = row(TILES_PER_ROW)
    _headline_tile(c[0], record)
    c[1].metric("Size", size_text(record["size_bytes"]), delta=f"fp32 {size_text(record['dense_bytes'])}",
                delta_color="off", delta_arrow="off",
                help=f"Honest size: values, sparse index, scales / codebooks and uncompressed tensors: "
                     f"{record['size_bytes']:,} bytes of {record['dense_bytes']:,} in fp32.")
    c[2].metric("Compression", f"{record['compression_ratio']:.1f}×", help="fp32 size / compressed size.")
    c[3].metric("Bits per weight", f"{record['bits_per_weight']:.2f}", help="All bits of the model / weights.")
    c[4].metric("Sparsity", f"{100 * record['realized_sparsity']:.1f} %",
                help="Fraction of the compressible layers' weights that pruning removed; weights that quantization "
                     "rounded to zero are not counted.")
    tiles = [_secondary_tile(m, record) for m in SECONDARY[record.get("task", "classify")]
             if m == "agreement" or record.get(m) is not None]
    tiles += [_more_tile(m, record) for m in MORE_METRICS
              if m.field != "top5" or record.get("task", "classify") == "classify"]
    for start in range(0, len(tiles), TILES_PER_ROW):
        for column, draw in zip(row(TILES_PER_ROW), tiles[start:start + TILES_PER_ROW]):
            draw(column)


def _secondary_tile(metric: str, record: dict):
    """A function drawing the task's secondary metric `metric` into a column."""
    axis = metric_axis(metric)
    return lambda column: column.metric(SECONDARY_NAMES.get(metric, axis.title), axis.show(record.get(metric)),
                                        help=METRIC_HELP[metric])


def _more_tile(m: MoreMetric, record: dict):
    """A function drawing a compute / timing metric (`record_text.MORE_METRICS`) into a column; its companion
    ("sparse …", "eval …") is the tile's grey delta."""
    companion = {} if m.companion is None else {
        "delta": f"{m.word} {field_text(record, m.companion, UNKNOWN_SHOWN)}", "delta_color": "off",
        "delta_arrow": "off"}
    return lambda column: column.metric(m.label, field_text(record, m.field, UNKNOWN_SHOWN),
                                        help=METRIC_HELP[m.field], **companion)


def layer_details(selection: Selection, record: dict, key: str) -> str:
    """Per-layer table, a layer selector (the largest layer first), that layer's weight histogram before vs
    after compression with its grid, and every layer's stored size split into values / index / scales / codebook.

    Args:
        selection: the model and data the record was evaluated with (rebuilds the compressed layer).
        record: an engine record with `config` and `layers`.
        key: prefix of the widget keys (`{key}_layers`, `{key}_layer`, `{key}_log_y`, `{key}_hide_zeros`,
            `{key}_histogram`, `{key}_size_breakdown`).

    Returns:
        The name of the layer shown.
    """
    layers = record["layers"]
    st.dataframe(layer_charts.layer_table(layers), hide_index=True, key=f"{key}_layers", column_config=LAYER_COLUMNS)
    channels = layer_charts.channels_frame(layers)
    if not channels.empty:
        st.plotly_chart(layer_charts.channels_kept_figure(channels), key=f"{key}_channels", config=CHART_CONFIG)
        if record.get("protected_layers"):
            st.caption(f"Never pruned (their output is the model's output): {record['protected_layers']}.")
    names = [l["name"] for l in layers]
    largest = max(range(len(names)), key=lambda i: layers[i]["n"])
    c = st.columns([2, 1, 1])
    layer = c[0].selectbox("Layer", names, index=largest, key=f"{key}_layer", bind="query-params",
                           help="The largest layer is shown first.")
    log_y = c[1].toggle("Log count axis", key=f"{key}_log_y", bind="query-params")
    hide_zeros = c[2].toggle("Hide pruned", value=True, key=f"{key}_hide_zeros", bind="query-params",
                             help="Leave the pruned weights (their spike at 0) out, so the rest stays visible; "
                                  "weights that quantization rounded to 0 are still shown.")
    config_json = CompressionConfig.from_dict(record["config"]).to_json()
    figure, grid = _histogram_figure(selection, config_json, layer, hide_zeros, log_y)
    st.plotly_chart(figure, key=f"{key}_histogram", config=CHART_CONFIG)
    if grid.get("channel") is not None:
        st.caption(f"Per-channel grid: levels shown for channel {grid['channel']} (the widest); the dashed lines "
                   f"are the clip range over all channels.")
    if grid.get("block") is not None:
        st.caption(f"Block grid: the values block {grid['block']} can represent (the block holding the largest "
                   f"|w|; blocks run along the input dimension); the dashed lines are that block's range.")
    if layer_charts.has_size_breakdown(layers):
        st.plotly_chart(_size_figure(selection, config_json, layers), key=f"{key}_size_breakdown",
                        config=CHART_CONFIG)
    else:
        st.caption("This record was stored before the per-layer size breakdown existed; evaluate its config again "
                   "to see it.")
    return layer


# Figures of a config shown before are kept, built: building a Plotly figure costs 20-35 ms, most of a rerun that
# hits the result cache. Shared by every session and only read (st.plotly_chart serialises a copy).
@st.cache_resource(show_spinner=False, max_entries=256)
def _histogram_figure(selection: Selection, config_json: str, layer: str, hide_zeros: bool,
                      log_y: bool) -> tuple[go.Figure, dict]:
    hist, grid = layer_services.layer_histogram(selection, config_json, layer, hide_zeros=hide_zeros)
    return layer_charts.weight_histogram(hist, grid, log_y=log_y, title=f"{layer}: weights before vs after"), grid


@st.cache_resource(show_spinner=False, max_entries=256)
def _size_figure(selection: Selection, config_json: str, _layers: list[dict]) -> go.Figure:
    """The size breakdown of the config's layers (`_layers`: not hashed; the selection and config decide them)."""
    return layer_charts.size_breakdown(_layers)


def eval_set_label(limit: int | None) -> str:
    """What a record was evaluated on: 'whole test set' or '1,000 samples'."""
    return "whole test set" if limit is None else f"{limit:,} samples"


def task_columns(records: list[dict]) -> list[str]:
    """The metric columns (keys of RESULT_COLUMNS) of the records' tasks, leaving out those no record has."""
    tasks = dict.fromkeys(r.get("task", "classify") for r in records)
    columns = dict.fromkeys(c for t in tasks for c in TASK_COLUMNS[t])
    return [c for c in columns if any(r.get(c) is not None for r in records)]


def results_table(records: list[dict], columns: list[str], *, key: str, sort_by: str | None = None) -> pd.DataFrame:
    """The records as an st.dataframe of `columns` (keys of RESULT_COLUMNS) in display units: fractions
    (accuracy, recall@10, agreement, sparsity) in %, size in KiB, the evaluation set in words.

    Returns:
        The records' `sweep_charts.results_frame` (engine units, every column), for the CSV download.
    """
    df = sweep_charts.results_frame(records)
    percent = {c: 100 * pd.to_numeric(df[c]) for c in PERCENT_COLUMNS}  # None -> NaN: an empty cell
    numbers = {c: pd.to_numeric(df[c]) for c in COMPUTE_COLUMNS}  # absent in old records: empty, not 0
    show = df.assign(**percent, **numbers, size_kib=df["size_bytes"] / 1024,
                     limit=[eval_set_label(r["limit"]) for r in records])[columns]
    st.dataframe(show if sort_by is None else show.sort_values(sort_by), hide_index=True, key=key,
                 column_config={c: RESULT_COLUMNS[c] for c in columns})
    return df


def csv_download(df: pd.DataFrame, file_name: str, key: str) -> None:
    """A "Download CSV" button for a results frame (engine units, one row per config)."""
    st.download_button("Download CSV", df.to_csv(index=False), file_name=file_name, mime="text/csv", key=key,
                       icon=":material/download:", on_click="ignore")
