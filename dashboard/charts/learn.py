"""Learn page charts: a quantizer's transfer curve, block scales along a row and an N:M mask pattern (toy tensors;
histograms reuse layers)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .common import AFTER_COLOR, LEVEL_COLOR, REFERENCE_COLOR, THRESHOLD_COLOR, WEIGHT_AXIS, base_layout

QUANTIZED_AXIS = "Quantized value ŵ"
INPUT_COLUMN_AXIS = "Input index (groups of M)"
INPUT_INDEX_AXIS = "Input index"
OUTPUT_ROW_AXIS = "Output row"


def transfer_curve(curve: pd.DataFrame, *, zero_point_value: float | None = None,
                   clip: tuple[float, float] | None = None, title: str | None = None, height: int = 300) -> go.Figure:
    """The quantize-dequantize mapping w -> ŵ as a staircase, with the identity line for reference.

    Args:
        curve: columns w (increasing inputs) and w_hat (their quantize-dequantize values).
        zero_point_value: the float value the zero point maps to (always 0 for a grid containing 0); marked.
        clip: (low, high) of the grid; inputs beyond saturate.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["w"], y=curve["w"], mode="lines", name="identity (no error)",
                             line={"color": REFERENCE_COLOR, "dash": "dot", "width": 1}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=curve["w"], y=curve["w_hat"], mode="lines", name="ŵ = s · (q − z)",
                             line={"color": AFTER_COLOR, "width": 2, "shape": "hv"},
                             hovertemplate="w %{x:.4g} → ŵ %{y:.4g}<extra></extra>"))
    if zero_point_value is not None:
        fig.add_trace(go.Scatter(x=[zero_point_value], y=[zero_point_value], mode="markers", name="zero point (q = z)",
                                 marker={"color": THRESHOLD_COLOR, "size": 10, "symbol": "x"}))
    if clip is not None:
        for x in clip:
            fig.add_vline(x=x, line={"color": LEVEL_COLOR, "dash": "dash", "width": 1})
    base_layout(fig, title=title, height=height)
    fig.update_xaxes(title_text=WEIGHT_AXIS + " w")
    fig.update_yaxes(title_text=QUANTIZED_AXIS)
    return fig


def mask_pattern(weights: pd.DataFrame, *, m: int, title: str | None = None, height: int = 300) -> go.Figure:
    """A small weight matrix with pruned entries left blank (NaN), group boundaries every `m` columns.

    Args:
        weights: rows x columns of kept weight values, NaN where pruned.
        m: the group size along the columns (the M of N:M).
    """
    fig = go.Figure(go.Heatmap(z=weights.to_numpy(), colorscale="RdBu", zmid=0.0, xgap=1, ygap=1,
                               colorbar={"title": {"text": WEIGHT_AXIS}},
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    for x in range(m, weights.shape[1], m):
        fig.add_vline(x=x - 0.5, line={"color": REFERENCE_COLOR, "width": 2})
    base_layout(fig, title=title, height=height, legend=False)
    fig.update_xaxes(title_text=INPUT_COLUMN_AXIS, showgrid=False)
    fig.update_yaxes(title_text=OUTPUT_ROW_AXIS, autorange="reversed", showgrid=False)
    return fig


def block_scales(row: pd.DataFrame, *, title: str | None = None, height: int = 320) -> go.Figure:
    """One row of weights with its block-wise and per-tensor quantization, and each block's covered range.

    Args:
        row: columns index, w (the weights), w_block / w_tensor (quantize-dequantize with block scales / one scale),
            reach (the largest |ŵ| each weight's block can represent: qmax x its scale).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=row["index"], y=row["w"], mode="markers", name="w",
                             marker={"color": REFERENCE_COLOR, "size": 4}))
    fig.add_trace(go.Scatter(x=row["index"], y=row["w_tensor"], mode="lines", name="ŵ, one scale per tensor",
                             line={"color": LEVEL_COLOR, "width": 1, "shape": "hv"}))
    fig.add_trace(go.Scatter(x=row["index"], y=row["w_block"], mode="lines", name="ŵ, one scale per block",
                             line={"color": AFTER_COLOR, "width": 2, "shape": "hv"}))
    for sign, name in ((1, "block range ±qmax · s_g"), (-1, None)):
        fig.add_trace(go.Scatter(x=row["index"], y=sign * row["reach"], mode="lines", name=name,
                                 showlegend=name is not None, hoverinfo="skip",
                                 line={"color": THRESHOLD_COLOR, "dash": "dash", "width": 1, "shape": "hv"}))
    base_layout(fig, title=title, height=height)
    fig.update_xaxes(title_text=INPUT_INDEX_AXIS)
    fig.update_yaxes(title_text=WEIGHT_AXIS)
    return fig


def rounding_errors(rows: pd.DataFrame, *, title: str | None = None, height: int = 320) -> go.Figure:
    """Per output row of a toy layer: output error after round-to-nearest (x) vs after GPTQ (y).

    Args:
        rows: columns rtn and gptq (each row's mean squared output error on the toy inputs).
    """
    top = float(max(rows["rtn"].max(), rows["gptq"].max(), 1e-12))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="equal error",
                             line={"color": REFERENCE_COLOR, "dash": "dot", "width": 1}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=rows["rtn"], y=rows["gptq"], mode="markers", name="one output row",
                             marker={"color": AFTER_COLOR, "size": 6},
                             hovertemplate="RTN %{x:.3g} · GPTQ %{y:.3g}<extra></extra>"))
    base_layout(fig, title=title, height=height)
    fig.update_xaxes(title_text="Output error, round to nearest")
    fig.update_yaxes(title_text="Output error, GPTQ")
    return fig
