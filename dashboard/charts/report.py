"""Charts only the stakeholder report draws: the chosen config ringed on a Pareto plot, and the size of each layer.

Pure functions: engine records in, `go.Figure` out. Traces carry `meta={"role": ...}` ("chosen", "layer-size") like
the Sweep charts, so the report's tests find them by role.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go

from .common import HIGHLIGHT_COLOR, LAYER_AXIS, MetricAxis, base_layout, bit_color, bits_label, kib

LAYER_BAR_PX = 22  # height of one layer's bar
MAX_LAYER_BARS = 60  # more layers than this: the chart shows the largest ones, the report's table lists all


def mark_chosen(fig: go.Figure, record: dict, axis: MetricAxis) -> go.Figure:
    """Ring `record` on a `sweep.pareto_figure` (KiB x, `axis` y) with a trace of role "chosen"; returns `fig`."""
    fig.add_trace(go.Scatter(
        x=[kib(record["size_bytes"])], y=[axis.scale * record[axis.field]], mode="markers", name="chosen config",
        meta={"role": "chosen"}, hoverinfo="skip",
        marker={"symbol": "circle-open", "size": 24, "color": HIGHLIGHT_COLOR, "line": {"width": 3}}))
    return fig


def largest_layers(layers: list[dict], limit: int = MAX_LAYER_BARS) -> list[dict]:
    """The `limit` layers of largest `size_bits`, in model order (all of them when there are no more)."""
    if len(layers) <= limit:
        return list(layers)
    keep = {id(l) for l in sorted(layers, key=lambda l: l["size_bits"], reverse=True)[:limit]}
    return [l for l in layers if id(l) in keep]


def layer_size_figure(layers: list[dict], *, width: int | None = None) -> go.Figure:
    """One horizontal bar per layer (model order, top to bottom): its stored size in KiB (`size_bits`), coloured
    by the layer's stored value bits.

    Args:
        layers: a record's `layers` rows (`compression_core.record.LAYER_FIELDS`); draw `largest_layers(...)` of a
            very deep model.
        width: figure width in pixels (None: the container's).

    Returns:
        One `go.Bar` (role "layer-size"); y = layer names with their HTML escaped (Plotly reads tags in text).
    """
    total = sum(l["size_bits"] for l in layers) or 1
    fig = go.Figure(go.Bar(
        x=[kib(l["size_bits"] / 8) for l in layers], y=[html.escape(l["name"]) for l in layers], orientation="h",
        meta={"role": "layer-size"}, marker={"color": [bit_color(l["bits"]) for l in layers]},
        customdata=[[bits_label(l["bits"]), l["size_bits"] / max(int(l["n"]), 1), 100.0 * l["size_bits"] / total]
                    for l in layers],
        hovertemplate="%{y}: %{x:,.2f} KiB (%{customdata[2]:.1f} % of the layers)<br>%{customdata[0]} values · "
                      "%{customdata[1]:.2f} bits/weight<extra></extra>"))
    base_layout(fig, height=80 + LAYER_BAR_PX * len(layers), legend=False)
    fig.update_layout(width=width, yaxis={"autorange": "reversed", "title": {"text": LAYER_AXIS}},
                      xaxis={"title": {"text": "Stored size (KiB)"}})
    return fig
