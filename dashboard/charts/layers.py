"""Per-layer charts and tables: weight histograms with grid and threshold, sensitivity heatmap, channel ranges.

Pure functions of DataFrames / plain dicts (as `compression_core.histograms` and `sensitivity` produce them)
returning `go.Figure` or a display-ready DataFrame. Also used by the Sweep details and the Learn page.
"""
from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import (ACCURACY, AFTER_COLOR, BEFORE_COLOR, CHANNEL_AXIS, COUNT_AXIS, COUNT_LOG_AXIS, DROP_AXIS,
                     LAYER_AXIS, LEVEL_COLOR, SETTING_AXIS, THRESHOLD_COLOR, WEIGHT_AXIS, MetricAxis, base_layout,
                     kib)

# The parts of a layer's stored size (record.LAYER_FIELDS), their legend names and colours: mid-tone hues that
# stay distinct on Streamlit's light and dark backgrounds.
SIZE_PARTS: dict[str, tuple[str, str]] = {
    "value_bits": ("values", "#3b82f6"),
    "index_bits": ("sparse index", "#f59e0b"),
    "scale_bits": ("scales / zero points", "#10b981"),
    "codebook_bits": ("codebook", "#a855f7"),
    "other_bits": ("activation qparams / input scales", "#94a3b8"),
}
SIZE_KIB_AXIS = "Stored size (KiB)"
FULL_HEIGHT_LEVELS = 32  # up to this many levels draw as full-height lines; more draw as ticks at the bottom
TICK_HEIGHT = 0.08  # fraction of the plot height of a level tick


def layer_table(layers: list[dict]) -> pd.DataFrame:
    """The engine record's `layers` list as a readable table (one row per layer, units in the headers)."""
    rows = [{
        "Layer": l["name"],
        "Shape": _shape_text(l),
        "Weights": int(l["n"]),
        "Kept": int(l["nnz"]),
        "Sparsity (%)": 100.0 * float(l["sparsity"]),
        "Bits": int(l["bits"]),
        "Quantizer": "fp32 (skipped)" if l.get("skipped") else ("fp32" if l["quantizer"] == "none" else l["quantizer"]),
        "Index format": l["index_format"] or "dense",
        "Size (KiB)": kib(l["size_bits"] / 8),
        "Bits / weight": l["size_bits"] / max(int(l["n"]), 1),
    } for l in layers]
    return pd.DataFrame(rows, columns=["Layer", "Shape", "Weights", "Kept", "Sparsity (%)", "Bits", "Quantizer",
                                       "Index format", "Size (KiB)", "Bits / weight"])


def has_size_breakdown(layers: list[dict]) -> bool:
    """Whether every layer row carries the size parts (records stored before they existed do not)."""
    return bool(layers) and all(part in l for l in layers for part in SIZE_PARTS)


def size_breakdown(layers: list[dict], *, title: str | None = None) -> go.Figure:
    """Stacked horizontal bars, one per layer (model order, top to bottom): its stored size in KiB split into
    values, sparse index, scales, codebook and activation qparams / input scales.

    Args:
        layers: an engine record's `layers` (rows with the size parts of `SIZE_PARTS`, see `has_size_breakdown`).

    Returns:
        One trace per part that some layer stores (a part no layer has is left out); hovers give KiB, bits and
        the part's share of the layer.
    """
    names = [html.escape(l["name"]) for l in layers]  # Plotly reads tags in text
    totals = [max(int(l["size_bits"]), 1) for l in layers]
    fig = go.Figure()
    for part, (label, color) in SIZE_PARTS.items():
        bits = [int(l[part]) for l in layers]
        if not any(bits):
            continue
        fig.add_bar(x=[kib(b / 8) for b in bits], y=names, orientation="h", name=label, marker_color=color,
                    meta={"role": "size-part", "part": part},
                    customdata=[[b, 100.0 * b / t] for b, t in zip(bits, totals)],
                    hovertemplate=f"%{{y}}: {label}<br>%{{x:,.2f}} KiB (%{{customdata[0]:,}} bits, "
                                  "%{customdata[1]:.1f} % of the layer)<extra></extra>")
    base_layout(fig, title=title or "Stored size per layer, by what it stores", height=max(260, 140 + 28 * len(names)))
    fig.update_layout(barmode="stack", legend_traceorder="normal")  # legend in stacking order, values first
    fig.update_xaxes(title_text=SIZE_KIB_AXIS)
    fig.update_yaxes(title_text=LAYER_AXIS, autorange="reversed")
    return fig


def _shape_text(layer: dict) -> str:
    """'10 × 1 × 5 × 5', with '(was 20 × 1 × 5 × 5)' when structured pruning removed channels."""
    shape = " × ".join(str(d) for d in layer["shape"])
    dense = layer.get("dense_shape") or layer["shape"]
    return shape if list(dense) == list(layer["shape"]) else f"{shape} (was {' × '.join(str(d) for d in dense)})"


def channels_frame(layers: list[dict]) -> pd.DataFrame:
    """Output channels kept vs original per layer (columns Layer, Original, Kept), from a record's `layers`;
    empty when structured pruning removed nothing."""
    rows = [{"Layer": l["name"], "Original": int((l.get("dense_shape") or l["shape"])[0]), "Kept": int(l["shape"][0])}
            for l in layers]
    frame = pd.DataFrame(rows, columns=["Layer", "Original", "Kept"])
    return frame if (frame["Kept"] < frame["Original"]).any() else frame.iloc[0:0]


def channels_kept_figure(channels: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Grouped bars: original vs kept output channels (filters / neurons) per layer, in model order."""
    fig = go.Figure()
    fig.add_bar(x=channels["Layer"], y=channels["Original"], name="original", marker_color=BEFORE_COLOR,
                hovertemplate="%{x}: %{y} channels before<extra></extra>")
    fig.add_bar(x=channels["Layer"], y=channels["Kept"], name="kept", marker_color=AFTER_COLOR,
                customdata=(100.0 * channels["Kept"] / channels["Original"].clip(lower=1)).round(1),
                hovertemplate="%{x}: %{y} channels kept (%{customdata} %)<extra></extra>")
    fig.update_layout(barmode="group", xaxis_title=LAYER_AXIS, yaxis_title="Output channels")
    return base_layout(fig, title=title or "Channels kept per layer (structured pruning)", height=320)


def _vertical_lines(xs: list[float], height: float) -> tuple[list[float | None], list[float | None]]:
    """x, y arrays drawing one vertical segment from 0 to `height` per x (None separates segments)."""
    px: list[float | None] = []
    py: list[float | None] = []
    for x in xs:
        px += [x, x, None]
        py += [0.0, height, None]
    return px, py


def _add_grid(fig: go.Figure, grid: dict, row: int | None = None, col: int | None = None) -> None:
    """Quantization levels, clip range and pruning threshold on the overlay axis (y in [0, 1] of the plot)."""
    where = {"row": row, "col": col} if row is not None else {}
    yref = "y2" if row is None else None
    levels = list(grid.get("levels") or [])
    if levels:
        height = 1.0 if len(levels) <= FULL_HEIGHT_LEVELS else TICK_HEIGHT
        x, y = _vertical_lines(levels, height)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"quantization levels ({len(levels)})",
                                 line={"color": LEVEL_COLOR, "width": 1}, opacity=0.45, hoverinfo="skip",
                                 showlegend=row is None, **({"yaxis": yref} if yref else {})), **where)
    if grid.get("clip"):
        x, y = _vertical_lines(list(grid["clip"]), 1.0)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="clip range",
                                 line={"color": LEVEL_COLOR, "width": 2, "dash": "dash"}, hoverinfo="skip",
                                 showlegend=row is None, **({"yaxis": yref} if yref else {})), **where)
    if grid.get("threshold") is not None:
        t = float(grid["threshold"])
        x, y = _vertical_lines([-t, t], 1.0)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"pruning threshold ±{t:.3g}",
                                 line={"color": THRESHOLD_COLOR, "width": 2, "dash": "dot"}, hoverinfo="skip",
                                 showlegend=row is None, **({"yaxis": yref} if yref else {})), **where)


def weight_histogram(hist: pd.DataFrame, grid: dict | None = None, *, log_y: bool = False,
                     title: str | None = None, height: int = 340) -> go.Figure:
    """Before vs after histogram of one layer's weights on shared bins, with its grid and threshold drawn.

    Args:
        hist: one row per bin with columns left, right, center, before, after (`WeightHistogram.to_frame()`).
        grid: {"levels": [...], "clip": [lo, hi] | None, "threshold": float | None, optional
            "hidden_zeros_before" / "hidden_zeros_after"} as `layer_services.layer_histogram` returns; None = no grid.
        log_y: logarithmic count axis.
        title: figure title.

    Returns:
        Bars "before" and "after" (overlaid), then lines for levels, clip range and threshold when present.
    """
    fig = go.Figure()
    width = (hist["right"] - hist["left"]).tolist()
    for column, name, color, opacity in (("before", "before (fp32)", BEFORE_COLOR, 0.55),
                                         ("after", "after compression", AFTER_COLOR, 0.6)):
        fig.add_trace(go.Bar(x=hist["center"], y=hist[column], width=width, name=name, marker_color=color,
                             opacity=opacity, customdata=hist[["left", "right"]],
                             hovertemplate="%{customdata[0]:.4g} … %{customdata[1]:.4g}: %{y:,} weights"
                                           "<extra>" + name + "</extra>"))
    if grid:
        _add_grid(fig, grid)
    hidden = (grid or {}).get("hidden_zeros_after") or 0
    if hidden:
        fig.add_annotation(text=f"{hidden:,} pruned weights hidden", xref="paper", yref="paper", x=1.0, y=1.0,
                           xanchor="right", yanchor="top", showarrow=False, font={"size": 11})
    base_layout(fig, title=title, height=height)
    fig.update_layout(barmode="overlay", bargap=0,
                      yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True})
    fig.update_xaxes(title_text=WEIGHT_AXIS)
    fig.update_layout(yaxis={"title": {"text": COUNT_LOG_AXIS if log_y else COUNT_AXIS},
                             "type": "log" if log_y else "linear"})
    return fig


def histogram_grid(hists: dict[str, tuple[pd.DataFrame, dict]], *, log_y: bool = False, cols: int = 2,
                   height_per_row: int = 240) -> go.Figure:
    """Small multiples: one before/after histogram per layer (name -> (hist frame, grid dict)), shared legend."""
    names = list(hists)
    rows = max(1, math.ceil(len(names) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.08,
                        vertical_spacing=0.18 if rows > 1 else 0.1)
    for i, name in enumerate(names):
        hist, grid = hists[name]
        r, c = i // cols + 1, i % cols + 1
        width = (hist["right"] - hist["left"]).tolist()
        for column, label, color, opacity in (("before", "before (fp32)", BEFORE_COLOR, 0.55),
                                              ("after", "after compression", AFTER_COLOR, 0.6)):
            fig.add_trace(go.Bar(x=hist["center"], y=hist[column], width=width, name=label, marker_color=color,
                                 opacity=opacity, legendgroup=column, showlegend=i == 0,
                                 hovertemplate="%{x:.4g}: %{y:,}<extra>" + label + "</extra>"), row=r, col=c)
        if grid and grid.get("threshold") is not None:
            fig.add_vline(x=grid["threshold"], line={"color": THRESHOLD_COLOR, "dash": "dot"}, row=r, col=c)
            fig.add_vline(x=-grid["threshold"], line={"color": THRESHOLD_COLOR, "dash": "dot"}, row=r, col=c)
        if grid and grid.get("clip"):
            for x in grid["clip"]:
                fig.add_vline(x=x, line={"color": LEVEL_COLOR, "dash": "dash"}, row=r, col=c)
    base_layout(fig, height=height_per_row * rows + 90)
    fig.update_layout(barmode="overlay", bargap=0,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.12, "xanchor": "right", "x": 1.0})
    fig.update_xaxes(title_text=WEIGHT_AXIS)
    fig.update_yaxes(title_text=COUNT_LOG_AXIS if log_y else COUNT_AXIS, type="log" if log_y else "linear")
    return fig


def sensitivity_heatmap(table: pd.DataFrame, *, title: str | None = None, axis: MetricAxis = ACCURACY) -> go.Figure:
    """Layer x setting heatmap of how much worse the metric gets (rows: layers in model order; columns: settings):
    accuracy drop in points, or for another metric its change for the worse in its own unit.

    Setting labels break onto a second line at " · " and after the bit-width word ("int4 channel<br>sym minmax").

    Args:
        table: `compression_core.sensitivity.sensitivity_table(records, value)` (index layer, one column per
            setting) of `accuracy_drop_pts` or `metric_harm` (`compression_core.sensitivity.metric_harm`).
        axis: the task's headline metric (`common.metric_axis`); accuracy by default.
    """
    z = table.to_numpy(dtype=float)
    finite = [v for v in z.flatten().tolist() if math.isfinite(v)]
    accuracy = axis.field == "accuracy"
    floor = 1.0 if accuracy else 0.0  # at least 1 pt so tiny accuracy noise is not painted dark red
    digits, unit = (1, " pts") if accuracy else (axis.digits, "")
    fig = go.Figure(go.Heatmap(
        z=z, x=[_two_lines(str(c)) for c in table.columns], y=list(table.index),
        zmin=min(0.0, min(finite, default=0.0)), zmax=max([floor] + finite) or None,
        colorscale="Reds", colorbar={"title": {"text": harm_title(axis)}},
        text=[[f"{v:.{digits}f}" for v in row] for row in z.tolist()], texttemplate="%{text}",
        hovertemplate=f"layer %{{y}}<br>%{{x}}<br>worse by %{{z:.{digits + 1}f}}{unit}<extra></extra>"))
    fig.update_xaxes(tickangle=0)
    base_layout(fig, title=title, height=max(300, 150 + 48 * len(table.index)), legend=False)
    fig.update_xaxes(title_text=SETTING_AXIS, side="bottom")
    fig.update_yaxes(title_text=LAYER_AXIS, autorange="reversed")
    return fig


def harm_title(axis: MetricAxis) -> str:
    """What a sensitivity cell measures: 'Accuracy drop vs fp32 (pts)', 'Perplexity rise vs fp32'."""
    if axis.field == "accuracy":
        return DROP_AXIS
    return f"{axis.heading} {'drop' if axis.higher_is_better else 'rise'} vs fp32"


def _two_lines(label: str) -> str:
    if " · " in label:
        return label.replace(" · ", "<br>")
    words = label.split(" ")
    return " ".join(words[:2]) + ("<br>" + " ".join(words[2:]) if len(words) > 2 else "")


def channel_range_figure(ranges: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Per-output-channel weight ranges (a bar from min to max per channel) with the per-tensor range overlaid.

    Args:
        ranges: columns channel, min, max, absmax (`compression_core.histograms.channel_ranges`).
    """
    lo, hi = float(ranges["min"].min()), float(ranges["max"].max())
    fig = go.Figure(go.Bar(
        x=ranges["channel"], y=ranges["max"] - ranges["min"], base=ranges["min"], name="channel range",
        marker_color=AFTER_COLOR, opacity=0.75, customdata=ranges[["min", "max"]],
        hovertemplate="channel %{x}<br>min %{customdata[0]:.4g}<br>max %{customdata[1]:.4g}<extra></extra>"))
    n = len(ranges)
    fig.add_trace(go.Scatter(x=[-0.5, n - 0.5, None, -0.5, n - 0.5], y=[lo, lo, None, hi, hi], mode="lines",
                             name="per-tensor range", line={"color": THRESHOLD_COLOR, "dash": "dash", "width": 2},
                             hoverinfo="skip"))
    base_layout(fig, title=title)
    fig.update_xaxes(title_text=CHANNEL_AXIS)
    fig.update_yaxes(title_text=WEIGHT_AXIS, zeroline=True)
    return fig
