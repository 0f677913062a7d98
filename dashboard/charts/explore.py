"""Explore page chart: every config evaluated in this browser session as a point of accuracy vs honest size."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .common import (ACCURACY_AXIS, HIGHLIGHT_COLOR, REFERENCE_COLOR, base_layout, bit_color, bits_label, kib,
                     size_axis)


def explored_points(points: pd.DataFrame, *, current: str | None = None, baseline_accuracy: float | None = None,
                    front: tuple[list[float], list[float]] | None = None, height: int = 320) -> go.Figure:
    """Accuracy (%) vs compressed size (KiB, log x) of the explored configs, coloured by weight bits.

    Args:
        points: one row per config with at least config_hash, label, bits, accuracy (fraction), size_bytes;
            optional accuracy_ci_low / accuracy_ci_high draw 95 % interval bars.
        current: config_hash of the config now on screen; drawn again, larger and outlined, as "current".
        baseline_accuracy: fp32 accuracy (fraction) drawn as a dashed horizontal reference line.
        front: (size_bytes list, accuracy list) of the Pareto staircase (`compression_core.pareto.staircase`).

    Returns:
        One scatter trace per bit-width (name "4-bit", ..., "fp32"), then "Pareto front" and "current" when given.
    """
    fig = go.Figure()
    has_ci = {"accuracy_ci_low", "accuracy_ci_high"} <= set(points.columns)
    for bits in sorted(points["bits"].unique()) if len(points) else []:
        group = points[points["bits"] == bits]
        acc = 100.0 * group["accuracy"]
        error = {"type": "data", "symmetric": False, "array": 100.0 * group["accuracy_ci_high"] - acc,
                 "arrayminus": acc - 100.0 * group["accuracy_ci_low"], "thickness": 1, "width": 0,
                 "color": bit_color(bits)} if has_ci else None
        fig.add_trace(go.Scatter(
            x=group["size_bytes"].map(kib), y=acc, mode="markers", name=bits_label(bits),
            marker={"color": bit_color(bits), "size": 9, "line": {"color": "white", "width": 1}},
            error_y=error, text=group["label"],
            hovertemplate="%{text}<br>accuracy %{y:.2f} %<br>size %{x:,.1f} KiB<extra></extra>"))
    if front is not None and front[0]:
        fig.add_trace(go.Scatter(x=[kib(v) for v in front[0]], y=[100.0 * v for v in front[1]], mode="lines",
                                 name="Pareto front", line={"color": HIGHLIGHT_COLOR, "width": 1, "shape": "linear"},
                                 opacity=0.5, hoverinfo="skip"))
    if current is not None and current in set(points["config_hash"]):
        row = points[points["config_hash"] == current].iloc[0]
        fig.add_trace(go.Scatter(
            x=[kib(row["size_bytes"])], y=[100.0 * row["accuracy"]], mode="markers", name="current",
            marker={"color": bit_color(row["bits"]), "size": 16, "symbol": "circle",
                    "line": {"color": HIGHLIGHT_COLOR, "width": 3}},
            text=[row["label"]], hovertemplate="current: %{text}<br>accuracy %{y:.2f} %<br>size %{x:,.1f} KiB"
                                               "<extra></extra>"))
    if baseline_accuracy is not None:
        fig.add_hline(y=100.0 * baseline_accuracy, line={"color": REFERENCE_COLOR, "dash": "dash", "width": 1},
                      annotation_text="fp32", annotation_position="bottom right")
    base_layout(fig, height=height)
    size_axis(fig, points["size_bytes"].tolist() if len(points) else [])
    fig.update_yaxes(title_text=ACCURACY_AXIS, range=_accuracy_range(points, baseline_accuracy))
    return fig


def _accuracy_range(points: pd.DataFrame, baseline_accuracy: float | None) -> list[float] | None:
    """y range (%) holding every point, its interval and the fp32 line, padded; None when there is nothing."""
    columns = [c for c in ("accuracy", "accuracy_ci_low", "accuracy_ci_high") if c in points.columns]
    values = [100.0 * v for c in columns for v in points[c].tolist()]
    values += [100.0 * baseline_accuracy] if baseline_accuracy is not None else []
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = max(0.5, 0.08 * (hi - lo))
    return [max(0.0, lo - pad), min(100.0, hi + pad) + 0.5]
