"""Explore page chart: every config evaluated in this browser session as a point of its task's metric vs honest
size."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .common import (ACCURACY, HIGHLIGHT_COLOR, REFERENCE_COLOR, MetricAxis, base_layout, bit_color, bits_label,
                     kib, size_axis)


def explored_points(points: pd.DataFrame, *, current: str | None = None, baseline: float | None = None,
                    front: tuple[list[float], list[float]] | None = None, axis: MetricAxis = ACCURACY,
                    height: int = 320) -> go.Figure:
    """The metric (display units) vs compressed size (KiB, log x) of the explored configs, coloured by weight bits.

    Args:
        points: one row per config with at least config_hash, label, bits, size_bytes and `axis.field` (engine
            units); for accuracy, optional accuracy_ci_low / accuracy_ci_high draw 95 % interval bars.
        current: config_hash of the config now on screen; drawn again, larger and outlined, as "current".
        baseline: the fp32 value of the metric (engine units), drawn as a dashed horizontal reference line.
        front: (size_bytes list, metric list) of the Pareto staircase (`compression_core.pareto.staircase`).
        axis: the metric shown on y (`common.metric_axis`); accuracy by default.

    Rows with `precomputed` True (shipped results, `dashboard.lessons.seed_points`) are drawn as open circles in
    one trace, "precomputed", their hover starting with "precomputed:".

    Returns:
        One scatter trace per bit-width (name "4-bit", ..., "fp32"), "precomputed" when there are such rows, then
        "Pareto front" and "current" when given.
    """
    fig = go.Figure()
    y, scale = axis.field, axis.scale
    has_ci = y == "accuracy" and {"accuracy_ci_low", "accuracy_ci_high"} <= set(points.columns)
    hover = f"{axis.name} %{{y:.{axis.digits}f}}{axis.unit}<br>size %{{x:,.1f}} KiB<extra></extra>"
    shipped = points["precomputed"].eq(True) if "precomputed" in points.columns else pd.Series(False, points.index)
    live = points[~shipped]
    for bits in sorted(live["bits"].unique()) if len(live) else []:
        group = live[live["bits"] == bits]
        value = scale * group[y]
        error = {"type": "data", "symmetric": False, "array": scale * group["accuracy_ci_high"] - value,
                 "arrayminus": value - scale * group["accuracy_ci_low"], "thickness": 1, "width": 0,
                 "color": bit_color(bits)} if has_ci else None
        fig.add_trace(go.Scatter(
            x=group["size_bytes"].map(kib), y=value, mode="markers", name=bits_label(bits),
            marker={"color": bit_color(bits), "size": 9, "line": {"color": "white", "width": 1}},
            error_y=error, text=group["label"], hovertemplate="%{text}<br>" + hover))
    if shipped.any():
        seeds = points[shipped]
        fig.add_trace(go.Scatter(
            x=seeds["size_bytes"].map(kib), y=scale * seeds[y], mode="markers", name="precomputed",
            marker={"color": [bit_color(b) for b in seeds["bits"]], "size": 8, "symbol": "circle-open",
                    "line": {"width": 2}},
            text=seeds["label"], hovertemplate="precomputed: %{text}<br>" + hover))
    if front is not None and front[0]:
        fig.add_trace(go.Scatter(x=[kib(v) for v in front[0]], y=[scale * v for v in front[1]], mode="lines",
                                 name="Pareto front", line={"color": HIGHLIGHT_COLOR, "width": 1, "shape": "linear"},
                                 opacity=0.5, hoverinfo="skip"))
    if current is not None and current in set(points["config_hash"]):
        row = points[points["config_hash"] == current].iloc[0]
        fig.add_trace(go.Scatter(
            x=[kib(row["size_bytes"])], y=[scale * row[y]], mode="markers", name="current",
            marker={"color": bit_color(row["bits"]), "size": 16, "symbol": "circle",
                    "line": {"color": HIGHLIGHT_COLOR, "width": 3}},
            text=[row["label"]], hovertemplate="current: %{text}<br>" + hover))
    if baseline is not None:
        fig.add_hline(y=scale * baseline, line={"color": REFERENCE_COLOR, "dash": "dash", "width": 1},
                      annotation_text="fp32", annotation_position="bottom right")
    base_layout(fig, height=height)
    size_axis(fig, points["size_bytes"].tolist() if len(points) else [])
    fig.update_yaxes(title_text=axis.title, range=_value_range(points, baseline, axis))
    return fig


def _value_range(points: pd.DataFrame, baseline: float | None, axis: MetricAxis) -> list[float] | None:
    """y range (display units) holding every point, its interval and the fp32 line, padded; percentages stay
    within 0-100; None when there is nothing to show."""
    columns = [c for c in (axis.field, f"{axis.field}_ci_low", f"{axis.field}_ci_high") if c in points.columns]
    values = [axis.scale * v for c in columns for v in points[c].dropna().tolist()]
    values += [axis.scale * baseline] if baseline is not None else []
    if not values:
        return None
    lo, hi = min(values), max(values)
    if axis.unit:  # a percentage
        pad = max(0.5, 0.08 * (hi - lo))
        return [max(0.0, lo - pad), min(100.0, hi + pad) + 0.5]
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 0.05
    return [lo - pad, hi + pad]
