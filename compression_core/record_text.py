"""How a record's numbers read as text, the same in the CLI's rows and the dashboard's tiles.

The compute and timing fields (`MORE_METRICS`: top-5, MACs, BitOps, latency, each with its sparse or timing
companion) are shown by both, with one formatter each; a field the record lacks or leaves null reads as
`unknown` (the dashboard passes "—"), never as 0. The accuracy change against fp32 reads with one sign
convention everywhere: a drop of 70.8 points is "-70.80 pts vs fp32".

Example:
    >>> count_text(87_552), count_text(1_368), count_text(None)
    ('87.6 k', '1,368', 'unknown')
    >>> change_text(70.8)
    '-70.80 pts vs fp32'
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"
_PREFIXES = ("", " k", " M", " G", " T", " P", " E")


@dataclass(frozen=True)
class MoreMetric:
    """A compute or timing metric beyond the headline ones.

    field: the record field. label: the dashboard tile's label, with its unit. short / unit: the CLI's word and
    the unit after a known value. companion / word: the field shown beside it ('sparse 1.37 k', 'eval 0.05 s').
    """

    field: str
    label: str
    short: str
    unit: str = ""
    companion: str | None = None
    word: str = ""


MORE_METRICS: tuple[MoreMetric, ...] = (
    MoreMetric("top5", "Top-5 accuracy", "top-5"),
    MoreMetric("macs", "MACs / sample", "MACs", companion="sparse_macs", word="sparse"),
    MoreMetric("bitops", "BitOps / sample", "BitOps", companion="sparse_bitops", word="sparse"),
    MoreMetric("latency_ms_per_batch", "Latency (ms / batch)", "latency", " ms/batch", "eval_seconds", "eval"),
)


def count_text(n: int | float | None, unknown: str = UNKNOWN) -> str:
    """A count with an SI prefix and three significant digits: 1,368 as is, 87,552 -> '87.6 k', 2.1e9 -> '2.10 G'."""
    if n is None:
        return unknown
    if abs(n) < 10_000:
        return f"{n:,.0f}"
    exp = 0
    while abs(n) >= 999.5 and exp < len(_PREFIXES) - 1:
        n, exp = n / 1000.0, exp + 1
    return f"{n:.3g}{_PREFIXES[exp]}" if abs(n) >= 100 else f"{n:#.3g}{_PREFIXES[exp]}"


def field_text(record: Mapping[str, Any], field: str, unknown: str = UNKNOWN) -> str:
    """One of `MORE_METRICS`' fields (or a companion) of `record` in its display unit; `unknown` when absent."""
    value = record.get(field)
    if value is None:
        return unknown
    if field == "top5":
        return f"{100.0 * value:.2f} %"
    if field == "latency_ms_per_batch":
        return f"{value:,.2f}"
    if field == "eval_seconds":
        return f"{value:,.2f} s"
    return count_text(value, unknown)


def change_text(drop_pts: float) -> str:
    """The accuracy change against fp32 from `accuracy_drop_pts` (positive = worse): 70.8 -> '-70.80 pts vs fp32';
    no change reads '+0.00' (never '-0.00')."""
    return f"{0.0 - drop_pts:+.2f} pts vs fp32"
