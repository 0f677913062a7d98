"""Shared look of every chart: the bit-width colour map, axis titles with units, and layout defaults.

All chart builders (Explore, Sweep, Layers, Runs, Learn) take their colours and axis titles from here so a
4-bit point is the same colour on every page and every axis says what it measures and in which unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from compression_core.config import PRUNE_METHODS
from compression_core.methods import prune_methods, quantizers
from compression_core.tasks import METRICS

# One colour per weight bit-width: warm (few bits, aggressive) -> cool (many bits), fp32 grey (the reference).
BIT_COLORS: dict[int, str] = {
    1: "#7f1d1d",
    2: "#dc2626",
    3: "#f97316",
    4: "#eab308",
    5: "#84cc16",
    6: "#16a34a",
    7: "#0d9488",
    8: "#0284c7",
    16: "#6366f1",
    32: "#6b7280",
}
FALLBACK_COLOR = "#94a3b8"  # a bit-width outside BIT_COLORS (never produced by the engine's configs)

# Method markers, shared by the charts that shape points by pruning method: one per registered method, in order.
SYMBOL_CYCLE = ("diamond", "x", "square", "triangle-up", "star", "cross", "triangle-down", "pentagon", "hexagon")
METHOD_SYMBOLS: dict[str, str] = {"none": "circle", **dict(zip(PRUNE_METHODS, SYMBOL_CYCLE))}

# Axis titles: the quantity and its unit, spelled the same everywhere.
SIZE_AXIS = "Compressed size (KiB, log scale)"
ACCURACY_AXIS = "Accuracy (%)"
DROP_AXIS = "Accuracy drop vs fp32 (pts)"
BITS_AXIS = "Weight bits"
SPARSITY_AXIS = "Sparsity (%)"
WEIGHT_AXIS = "Weight value"
COUNT_AXIS = "Number of weights"
COUNT_LOG_AXIS = "Number of weights (log scale)"
CHANNEL_AXIS = "Output channel"
LAYER_AXIS = "Layer"
SETTING_AXIS = "Setting"

# Lines and outlines are mid-tone colours readable on the light and the dark theme alike (the theme follows the
# system; charts have transparent backgrounds and Streamlit's theme colours their text and grid).
HIGHLIGHT_COLOR = "#c026d3"  # outline of the current point / selected item, Pareto fronts
REFERENCE_COLOR = "#6b7280"  # fp32 reference lines
THRESHOLD_COLOR = "#dc2626"  # pruning threshold
LEVEL_COLOR = "#2563eb"  # quantization levels and clip range
BEFORE_COLOR = "#94a3b8"  # histograms: weights before compression
AFTER_COLOR = "#2563eb"  # histograms: weights after compression


FRACTION_METRICS = ("accuracy", "top5", "agreement", "recall_at_10")  # fractions 0-1, shown in %


@dataclass(frozen=True)
class MetricAxis:
    """How a chart shows one quality metric (`compression_core.tasks.METRICS`).

    field: the record / DataFrame column (e.g. "accuracy", "cosine", "perplexity").
    title: the axis title with its unit ("Accuracy (%)", "Perplexity").
    scale: multiplies the engine's value for display (100 for fractions, else 1).
    unit: appended to displayed values (" %" or "").
    digits: decimals shown in hovers and cells.
    higher_is_better: the metric's direction (best per cell, fronts, deltas).
    """

    field: str
    title: str
    scale: float
    unit: str
    digits: int
    higher_is_better: bool

    @property
    def name(self) -> str:
        """The metric's label in running text ("accuracy", "cosine similarity to fp32")."""
        return METRICS[self.field].label if self.field in METRICS else self.field

    @property
    def heading(self) -> str:
        """The metric's label starting with a capital, for headings ("Accuracy", "Perplexity")."""
        return self.name[:1].upper() + self.name[1:]

    def show(self, value: float | None) -> str:
        """An engine value in display units: 0.995 -> '99.50 %' for accuracy, 23.41 -> '23.41' for perplexity."""
        return "—" if value is None else f"{self.scale * value:,.{self.digits}f}{self.unit}"


def metric_axis(metric: str) -> MetricAxis:
    """The axis descriptor of a metric name (a key of METRICS; anything else is shown as a plain number)."""
    info = METRICS.get(metric)
    label = info.label if info else metric
    percent = metric in FRACTION_METRICS
    title = f"{label[0].upper()}{label[1:]}" + (" (%)" if percent else "")
    digits = 2 if metric in ("accuracy", "perplexity", "loss") else 1 if percent else 4
    return MetricAxis(field=metric, title=title, scale=100.0 if percent else 1.0, unit=" %" if percent else "",
                      digits=digits, higher_is_better=info.higher_is_better if info else True)


def metric_heading(metric: str) -> str:
    """A metric's name for option lists and headings: 'accuracy' -> 'Accuracy', 'cosine' -> 'Cosine similarity to
    fp32'."""
    return metric_axis(metric).heading


ACCURACY = metric_axis("accuracy")


def bit_color(bits: int | float | None) -> str:
    """Colour of a weight bit-width (1-8, 16, 32); None or an unknown width gets a neutral dark grey."""
    if bits is None:
        return FALLBACK_COLOR
    return BIT_COLORS.get(int(bits), FALLBACK_COLOR)


def bits_label(bits: int | float) -> str:
    """Human label of a weight bit-width: 32 -> 'fp32', 16 -> '16-bit', 4 -> '4-bit'."""
    return "fp32" if int(bits) >= 32 else f"{int(bits)}-bit"


def act_bits_label(bits: int) -> str:
    """Activation bit-width label: 32 -> 'fp32 (off)', 8 -> '8-bit'."""
    return "fp32 (off)" if int(bits) >= 32 else f"{int(bits)}-bit"


# Display names of engine option values, for selectors and legends; method names use their registry labels.
OPTION_NAMES: dict[str, str] = {
    "sym": "symmetric", "asym": "asymmetric", "tensor": "per tensor", "channel": "per channel",
    "group": "per group (block)",
    "minmax": "min-max", "percentile": "percentile", "mse": "MSE search",
    "layer": "per layer", "global": "global", "none": "none",
    "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant",
}


def option_label(value: str) -> str:
    """Readable name of an engine option value ('asym' -> 'asymmetric', 'kmeans' -> 'k-means'); unknown values
    are returned as is."""
    if value in OPTION_NAMES:
        return OPTION_NAMES[value]
    method = quantizers().get(value) or prune_methods().get(value)
    return method.label if method is not None else value


def percent_label(fraction: float) -> str:
    """0.5 -> '50 %'."""
    return f"{100 * fraction:g} %"


def base_layout(fig: go.Figure, *, title: str | None = None, height: int = 360, legend: bool = True) -> go.Figure:
    """Apply the shared layout (compact margins, legend on top) to `fig` and return it.

    No Plotly template is set: `st.plotly_chart` draws with Streamlit's theme, and building a template object costs
    ~30 ms per figure, a tenth of the Explore budget.
    """
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"} if title else None,
        height=height,
        margin={"l": 60, "r": 20, "t": 48 if title else 24, "b": 50},
        showlegend=legend,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1.0},
        hoverlabel={"align": "left"},
        font={"size": 12},
    )
    return fig


def kib(n_bytes: float) -> float:
    """Bytes -> KiB (the size unit of every chart)."""
    return float(n_bytes) / 1024.0


def log_ticks(sizes_kib: list[float]) -> list[float]:
    """1-2-5 tick values (KiB) spanning the sizes, so a log axis reads '5, 10, 20, 50, 100' and not '2 3 4 5 6'."""
    if not sizes_kib:
        return []
    lo, hi = min(sizes_kib) / 1.5, max(sizes_kib) * 1.5
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    return [t for t in ticks if lo <= t <= hi]


def size_axis(fig: go.Figure, sizes_bytes) -> go.Figure:
    """Log x axis of compressed size in KiB with 1-2-5 ticks over the given sizes (bytes)."""
    ticks = log_ticks([kib(v) for v in sizes_bytes])
    fig.update_xaxes(title_text=SIZE_AXIS, type="log", tickvals=ticks or None,
                     ticktext=[f"{t:g}" for t in ticks] or None)
    return fig
