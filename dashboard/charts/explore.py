"""Explore page chart: every config evaluated in this browser session as a point of its task's metric vs honest
size."""
from __future__ import annotations

import pandas as pd

from .common import (ACCURACY, HIGHLIGHT_COLOR, REFERENCE_COLOR, SIZE_AXIS, MetricAxis, bit_color, bits_label, kib,
                     log_ticks)


EXPLORED, SHIPPED, FRONT = "explored", "precomputed", "front"  # the `kind` of a row of the chart's data
DATA_COLUMNS = ("kind", "config_hash", "label", "bits", "x", "y", "y_low", "y_high", "current", "order")


def explored_points(points: pd.DataFrame, *, current: str | None = None, baseline: float | None = None,
                    front: tuple[list[float], list[float]] | None = None, axis: MetricAxis = ACCURACY,
                    height: int = 320) -> tuple[pd.DataFrame, dict]:
    """The metric (display units) vs compressed size (KiB, log x) of the explored configs, coloured by weight bits,
    as a Vega-Lite chart (`st.vega_lite_chart(data, spec)`): Streamlit draws it with far less browser work than a
    Plotly figure, and a step that only moves the current point changes the data, not the spec.

    Args:
        points: one row per config with at least config_hash, label, bits, size_bytes and `axis.field` (engine
            units); for accuracy, optional accuracy_ci_low / accuracy_ci_high draw 95 % interval bars. Rows with
            `precomputed` True (shipped results, `dashboard.lessons.seed_points`) are drawn as open circles,
            their tooltip starting with "precomputed:".
        current: config_hash of the config now on screen; drawn again, larger and ringed.
        baseline: the fp32 value of the metric (engine units), drawn as a dashed horizontal line labelled fp32.
        front: (size_bytes list, metric list) of the Pareto staircase (`compression_core.pareto.staircase`).
        axis: the metric shown on y (`common.metric_axis`); accuracy by default.

    Returns:
        (data, spec): one row per point (`kind` explored / precomputed, x in KiB, y in display units, y_low /
        y_high the interval, `current`) and per staircase vertex (`kind` front, in order), and the spec: layers
        "front", "interval" (when there are intervals), "explored", "precomputed", "current" and, with a
        baseline, "fp32"; the colour scale maps the bit widths present ("4-bit", "fp32") to `bit_color`.
    """
    rows = [_row(p, axis, current) for p in points.to_dict("records")]
    if front is not None and front[0]:
        rows += [{"kind": FRONT, "x": kib(size), "y": axis.scale * value, "current": False, "order": i}
                 for i, (size, value) in enumerate(zip(*front))]
    data = pd.DataFrame(rows, columns=list(DATA_COLUMNS))
    widths = sorted({int(b) for b in points["bits"].dropna()}) if "bits" in points.columns else []
    colour = {"field": "bits", "type": "nominal", "title": "Weight bits", "legend": {"orient": "top"},
              "scale": {"domain": [bits_label(b) for b in widths], "range": [bit_color(b) for b in widths]}}
    x = {"field": "x", "type": "quantitative", "title": SIZE_AXIS,
         "scale": {"type": "log"}, "axis": {"values": log_ticks(data["x"].dropna().tolist()), "format": "~g"}}
    y_range = _value_range(points, baseline, axis)
    y = {"field": "y", "type": "quantitative", "title": axis.title,
         "scale": {"zero": False, **({"domain": y_range} if y_range else {})}}
    tip = [{"field": "label", "title": "config"},
           {"field": "y", "title": axis.name + (" (%)" if axis.unit else ""), "format": f".{axis.digits}f"},
           {"field": "x", "title": "size (KiB)", "format": ",.1f"}]
    only = lambda expression: [{"filter": expression}]  # noqa: E731
    layers = [
        {"name": "front", "transform": only(f"datum.kind === '{FRONT}'"),
         "mark": {"type": "line", "color": HIGHLIGHT_COLOR, "opacity": 0.5, "strokeWidth": 1},
         "encoding": {"x": x, "y": y, "order": {"field": "order", "type": "quantitative"}}},
    ]
    if axis.field == "accuracy" and {"accuracy_ci_low", "accuracy_ci_high"} <= set(points.columns):
        layers.append({"name": "interval", "transform": only(f"datum.kind === '{EXPLORED}' && isValid(datum.y_low)"),
                       "mark": {"type": "rule", "strokeWidth": 1},
                       "encoding": {"x": x, "y": {**y, "field": "y_low"}, "y2": {"field": "y_high"},
                                    "color": colour}})
    layers += [
        {"name": "explored", "transform": only(f"datum.kind === '{EXPLORED}'"),
         "mark": {"type": "point", "filled": True, "size": 80, "opacity": 1, "stroke": "white", "strokeWidth": 1},
         "encoding": {"x": x, "y": y, "color": colour, "tooltip": tip}},
        {"name": "precomputed", "transform": only(f"datum.kind === '{SHIPPED}'"),
         "mark": {"type": "point", "filled": False, "size": 64, "strokeWidth": 2, "opacity": 1},
         "encoding": {"x": x, "y": y, "color": colour,
                      "tooltip": [{"field": "label", "title": "precomputed:"}, *tip[1:]]}},
        {"name": "current", "transform": only("datum.current === true"),
         "mark": {"type": "point", "filled": True, "size": 260, "opacity": 1, "stroke": HIGHLIGHT_COLOR,
                  "strokeWidth": 3},
         "encoding": {"x": x, "y": y, "color": colour, "tooltip": tip}},
    ]
    if baseline is not None:
        line = {"data": {"values": [{"y": axis.scale * baseline, "text": "fp32"}]}}
        layers += [
            {"name": "fp32", **line, "mark": {"type": "rule", "color": REFERENCE_COLOR, "strokeDash": [4, 4]},
             "encoding": {"y": y}},
            {"name": "fp32_label", **line, "mark": {"type": "text", "color": REFERENCE_COLOR, "align": "right",
                                                    "baseline": "top", "x": "width", "dx": -2, "dy": 3},
             "encoding": {"y": y, "text": {"field": "text"}}},
        ]
    spec = {"height": height, "layer": layers, "usermeta": {"embedOptions": {"actions": False}}}
    return data, spec


def _row(point: dict, axis: MetricAxis, current: str | None) -> dict:
    """One point of the chart's data from a record-like dict (display units, KiB)."""
    field = axis.field
    low, high = point.get(f"{field}_ci_low"), point.get(f"{field}_ci_high")
    shown = lambda v: None if v is None or pd.isna(v) else axis.scale * float(v)  # noqa: E731
    return {"kind": SHIPPED if point.get("precomputed") is True else EXPLORED, "config_hash": point["config_hash"],
            "label": point["label"], "bits": bits_label(point["bits"]), "x": kib(point["size_bytes"]),
            "y": shown(point.get(field)), "y_low": shown(low), "y_high": shown(high),
            "current": point["config_hash"] == current, "order": None}


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
