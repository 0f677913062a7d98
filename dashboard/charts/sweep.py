"""Sweep and Runs charts: the results table, the Pareto plot, the bits x sparsity heatmap and front overlays, each
of the records' task metric (`common.MetricAxis`; accuracy unless told).

Pure functions: engine records / DataFrames in, DataFrames / `go.Figure` out. Fronts come in already computed
(`compression_core.pareto.pareto_front` + `staircase`), so every number drawn is the engine's. Traces carry
`meta={"role": ...}` ("configs", "method", "front", "reference", "overlay-points", "overlay-front") so pages
and tests can find them without relying on their order.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from compression_core.methods import quantizers
from compression_core.record import TABLE_COLUMNS, table_row

from .common import (ACCURACY, BITS_AXIS, HIGHLIGHT_COLOR, METHOD_SYMBOLS, REFERENCE_COLOR, SPARSITY_AXIS,
                     MetricAxis, base_layout, bit_color, bits_label, kib, option_label, percent_label, size_axis)

# Columns of the results table (and of its CSV): every record field that fits one cell, in the order of
# `record.RECORD_FIELDS`; `config` is the full config as JSON.
RESULT_COLUMNS = TABLE_COLUMNS
FRONT_COLOR = HIGHLIGHT_COLOR
# Overlay groups (runs or methods) are not bit-widths, so they get their own palette and markers.
OVERLAY_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
OVERLAY_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "x")


def results_frame(records: list[dict]) -> pd.DataFrame:
    """Engine records as a flat table, one row per config, columns `RESULT_COLUMNS` (numbers as the engine gave).

    Args:
        records: sweep/store records (`compression_core.record.Record`); `config` may be a dict or JSON text.

    Returns:
        A DataFrame with exactly `RESULT_COLUMNS`; `config` is canonical JSON text; per-layer data is dropped.
    """
    return pd.DataFrame([table_row(r) for r in records], columns=list(RESULT_COLUMNS))


def _hover_data(df: pd.DataFrame, axis: MetricAxis) -> list[list]:
    """customdata per point: [config_hash, ratio, bits/weight, realised sparsity %] (+ ci low %, ci high % for
    accuracy)."""
    ci = axis.field == "accuracy"
    return [[r.config_hash, r.compression_ratio, r.bits_per_weight, 100.0 * r.realized_sparsity]
            + ([100.0 * r.accuracy_ci_low, 100.0 * r.accuracy_ci_high] if ci else [])
            for r in df.itertuples(index=False)]


def hover(axis: MetricAxis) -> str:
    """The hover template of a config point (`_hover_data` customdata) with the metric in display units."""
    ci = " (95 % CI %{customdata[4]:.1f}–%{customdata[5]:.1f})" if axis.field == "accuracy" else ""
    return (f"<b>%{{text}}</b><br>{axis.name} %{{y:.{axis.digits}f}}{axis.unit}{ci}"
            "<br>size %{x:,.2f} KiB · %{customdata[1]:.1f}× smaller<br>%{customdata[2]:.2f} bits/weight · "
            "sparsity %{customdata[3]:.1f} %<extra></extra>")


def _reference(sizes_kib: list[float], baseline: float, axis: MetricAxis) -> go.Scatter:
    """The dashed "fp32 reference" line (role "reference") across the points' sizes, with a margin (log x)."""
    return go.Scatter(
        x=[min(sizes_kib) / 1.5, max(sizes_kib) * 1.5], y=[axis.scale * baseline] * 2, mode="lines",
        name="fp32 reference", meta={"role": "reference"}, line={"color": REFERENCE_COLOR, "dash": "dash", "width": 1},
        hovertemplate=f"fp32 reference: {axis.show(baseline)}<extra></extra>")


def pareto_figure(df: pd.DataFrame, *, front: tuple[list[float], list[float]] | None = None,
                  baseline: float | None = None, axis: MetricAxis = ACCURACY, height: int = 460) -> go.Figure:
    """The metric (display units) vs honest size (KiB, log x): every config coloured by bits and shaped by pruning
    method.

    Args:
        df: `results_frame(records)` (needs label, bits, prune_method, `axis.field` (accuracy_ci_low/high too for
            accuracy), size_bytes, compression_ratio, bits_per_weight, realized_sparsity, config_hash).
        front: (size_bytes list, metric list) of the front's staircase (`compression_core.pareto.staircase`).
        baseline: the fp32 value of the metric (engine units), drawn as a dashed horizontal line across the plot.
        axis: the metric on y (`common.metric_axis`); accuracy by default.

    Returns:
        One markers trace per bit-width (role "configs", name "4-bit" ... "fp32", customdata[i][0] = the
        point's config_hash) and one per number format (FP8 / MX / NF4 ...: name "MXFP4 (4-bit)", its own colour), legend-only marker keys per method when several are present (role "method"),
        then "Pareto front" (role "front") and "fp32 reference" (role "reference") when given.
    """
    fig = go.Figure()
    # number formats (FP8 / MX / NF4 ...) get a trace each, so formats of one width stay apart in the legend
    formats = [q for q, info in quantizers().items() if info.kind == "format"]
    family = df["quantizer"].where(df["quantizer"].isin(formats), "") if len(df) else pd.Series(dtype=str)
    for bits, fmt in sorted(set(zip(df["bits"], family))) if len(df) else []:
        group = df[(df["bits"] == bits) & (family == fmt)]
        name = f"{option_label(fmt)} ({bits_label(bits)})" if fmt else bits_label(bits)
        color = OVERLAY_COLORS[formats.index(fmt) % len(OVERLAY_COLORS)] if fmt else bit_color(bits)
        fig.add_trace(go.Scatter(
            x=group["size_bytes"].map(kib), y=axis.scale * group[axis.field], mode="markers", name=name,
            legendgroup="bits", meta={"role": "configs", "bits": int(bits), "format": fmt or None},
            marker={"color": color, "size": 11, "line": {"color": "white", "width": 1},
                    "symbol": [METHOD_SYMBOLS.get(m, "circle") for m in group["prune_method"]]},
            text=group["label"], customdata=_hover_data(group, axis), hovertemplate=hover(axis)))
    methods = sorted(set(df["prune_method"])) if len(df) else []
    if len(methods) > 1:
        for method in methods:
            fig.add_trace(go.Scatter(
                x=[None], y=[None], mode="markers", legendgroup="method",
                name="no pruning" if method == "none" else option_label(method),
                meta={"role": "method"}, marker={"color": "#9ca3af", "size": 10,
                                                 "symbol": METHOD_SYMBOLS.get(method, "circle")}))
    if front is not None and front[0]:
        fig.add_trace(go.Scatter(
            x=[kib(v) for v in front[0]], y=[axis.scale * v for v in front[1]], mode="lines", name="Pareto front",
            meta={"role": "front"}, line={"color": FRONT_COLOR, "width": 1.5}, opacity=0.7, hoverinfo="skip"))
    if baseline is not None and len(df):
        fig.add_trace(_reference(df["size_bytes"].map(kib).tolist(), baseline, axis))
    return _metric_vs_size_layout(fig, df["size_bytes"] if len(df) else [], height, axis)


def _metric_vs_size_layout(fig: go.Figure, sizes_bytes, height: int, axis: MetricAxis) -> go.Figure:
    """Shared layout of the metric-vs-size charts: log x with 1-2-5 ticks, legend on the right."""
    base_layout(fig, height=height)
    # the legend sits right of the plot, clear of Plotly's toolbar at the top right
    fig.update_layout(legend={"orientation": "v", "x": 1.01, "xanchor": "left", "y": 1.0, "yanchor": "top",
                              "title": {"text": ""}}, margin={"r": 20})
    size_axis(fig, sizes_bytes)
    fig.update_yaxes(title_text=axis.title)
    return fig


def picked_hashes(points: list[dict]) -> list[str]:
    """Config hashes of the points a Plotly selection event names (points without our customdata are skipped).

    Args:
        points: `event.selection.points` from `st.plotly_chart(..., on_select="rerun")` on a `pareto_figure`.

    Returns:
        The hashes in selection order, without duplicates.
    """
    out: list[str] = []
    for p in points:
        data = p.get("customdata")
        h = data[0] if isinstance(data, (list, tuple)) and data else data
        if isinstance(h, str) and h not in out:
            out.append(h)
    return out


def bits_sparsity_heatmap(df: pd.DataFrame, *, axis: MetricAxis = ACCURACY, height: int | None = None) -> go.Figure:
    """Heatmap of the metric (display units) over weight bits (rows) x target sparsity (columns): the best config
    per cell.

    Args:
        df: `results_frame(records)`; when several configs share a cell (other methods or quantizers) the best one
            by the metric's direction is shown and the hover names it and the number of configs in the cell.
        axis: the metric (`common.metric_axis`); accuracy by default.

    Returns:
        One `go.Heatmap`; rows from fewest bits (top) to fp32, empty cells left blank.
    """
    best = (df.sort_values(axis.field, ascending=not axis.higher_is_better)
            .groupby(["bits", "sparsity"], as_index=False)
            .agg(value=(axis.field, "first"), label=("label", "first"), n=("label", "size")))
    bits = sorted(best["bits"].unique())
    sparsities = sorted(best["sparsity"].unique())
    cell = {(b, s): row for b, s, row in zip(best["bits"], best["sparsity"], best.itertuples(index=False))}
    z, text, hover = [], [], []
    for b in bits:
        row = [cell.get((b, s)) for s in sparsities]
        z.append([axis.scale * c.value if c is not None and c.value is not None else None for c in row])
        text.append([f"{axis.scale * c.value:.{1 if axis.unit else axis.digits}f}"
                     if c is not None and c.value is not None else "" for c in row])
        hover.append([f"{c.label}<br>best of {c.n} config(s)" if c is not None else "" for c in row])
    finite = [v for r in z for v in r if v is not None and math.isfinite(v)]
    fig = go.Figure(go.Heatmap(
        z=z, x=[percent_label(s) for s in sparsities], y=[bits_label(b) for b in bits], text=text,
        texttemplate="%{text}", customdata=hover, colorscale="Viridis", zmin=min(finite, default=0.0),
        zmax=max(finite, default=100.0), colorbar={"title": {"text": axis.title}}, xgap=2, ygap=2,
        reversescale=not axis.higher_is_better,  # the better end of the scale is always the same colour
        hovertemplate=f"%{{y}} · sparsity %{{x}}<br>{axis.name} %{{z:.{axis.digits}f}}{axis.unit}"
                      "<br>%{customdata}<extra></extra>"))
    base_layout(fig, height=height or max(240, 70 + 46 * len(bits)), legend=False)
    fig.update_xaxes(title_text=SPARSITY_AXIS, type="category")
    fig.update_yaxes(title_text=BITS_AXIS, type="category", autorange="reversed")
    return fig


def overlay_figure(groups: dict[str, pd.DataFrame], fronts: dict[str, tuple[list[float], list[float]]], *,
                   baseline: float | None = None, axis: MetricAxis = ACCURACY, height: int = 460) -> go.Figure:
    """Fronts of several groups (runs or methods) on one metric-vs-size chart, each in its own colour.

    Args:
        groups: group name -> `results_frame` of its records (drawn as faint points), all of one task.
        fronts: group name -> staircase (size_bytes list, metric list) of that group's front.
        baseline: the fp32 value of the metric (engine units), drawn as a dashed horizontal line.
        axis: the metric on y (`common.metric_axis`); accuracy by default.

    Returns:
        Per group a points trace (role "overlay-points") and a front trace (role "overlay-front"), then the
        "fp32 reference" line (role "reference").
    """
    fig = go.Figure()
    sizes: list[float] = []
    for i, (name, df) in enumerate(groups.items()):
        color, symbol = OVERLAY_COLORS[i % len(OVERLAY_COLORS)], OVERLAY_SYMBOLS[i % len(OVERLAY_SYMBOLS)]
        sizes += df["size_bytes"].map(kib).tolist()
        fig.add_trace(go.Scatter(
            x=df["size_bytes"].map(kib), y=axis.scale * df[axis.field], mode="markers", name=f"{name} · configs",
            legendgroup=name, meta={"role": "overlay-points", "group": name}, opacity=0.45,
            marker={"color": color, "symbol": symbol, "size": 8}, text=df["label"],
            customdata=_hover_data(df, axis), hovertemplate=hover(axis)))
        xs, ys = fronts.get(name, ([], []))
        fig.add_trace(go.Scatter(
            x=[kib(v) for v in xs], y=[axis.scale * v for v in ys], mode="lines", name=f"{name} · front",
            legendgroup=name, meta={"role": "overlay-front", "group": name}, line={"color": color, "width": 2.5},
            hoverinfo="skip"))
    if baseline is not None and sizes:
        fig.add_trace(_reference(sizes, baseline, axis))
    _metric_vs_size_layout(fig, [b * 1024 for b in sizes], height, axis)
    # group names (run labels) are long: one legend row per entry under the plot keeps the plot wide
    fig.update_layout(legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.18, "yanchor": "top"},
                      margin={"b": 40})
    return fig
