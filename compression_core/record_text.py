"""How a record's numbers read as text, the same in the CLI's rows and the dashboard's tiles, and the CLI's lines
(`record_line`, `progress_line`).

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


def record_line(r: dict) -> str:
    """One record as the CLI prints it: its quality against fp32 and its size on the first line, its compute and
    timing (`MORE_METRICS`) indented on the second; a field the record lacks reads `unknown`."""
    size = (f"  size {r['size_bytes'] / 1024:9.1f} KiB  x{r['compression_ratio']:.1f}  {r['bits_per_weight']:.2f} b/w"
            f"  sparsity {r['realized_sparsity']:.1%}")
    if r.get("accuracy") is None:  # fidelity, lm: the task's headline metric against the fp32 model's
        head = (f"{r['label']:<44} {r['metric']} {r['metric_value']:.4g} (fp32 {r['baseline_metric_value']:.4g}) "
                f"n={r['n_samples']}")
    else:
        ci = f"[{r['accuracy_ci_low']:.2%}, {r['accuracy_ci_high']:.2%}]"
        head = (f"{r['label']:<44} acc {r['accuracy']:.2%} {ci} n={r['n_samples']}  "
                f"change {change_text(r['accuracy_drop_pts'])}")
    return f"{head}{size}\n    {more_metrics(r)}"


def more_metrics(r: dict) -> str:
    """'top-5 99.00 %  MACs 2,736 (sparse 1,368)  BitOps 87.6 k (sparse 43.8 k)  latency 1.23 ms/batch (eval
    0.05 s)'; top-5 only for records with labels (task classify)."""
    parts = []
    for m in MORE_METRICS:
        if m.field == "top5" and r.get("accuracy") is None:
            continue
        value = field_text(r, m.field)
        unit = m.unit if r.get(m.field) is not None else ""
        extra = f" ({m.word} {field_text(r, m.companion)})" if m.companion else ""
        parts.append(f"{m.short} {value}{unit}{extra}")
    return "  ".join(parts)


def progress_line(done: int, total: int, eta: float | None, label: str | None) -> str:
    """A sweep's progress on stderr: '[3/8] eta 12s  next: LABEL', then '[8/8] done' (or 'stopped' when it ended
    early, e.g. cancelled)."""
    if label is None:
        return f"[{done}/{total}] {'done' if done >= total else 'stopped'}"
    return f"[{done}/{total}] {'' if eta is None else f'eta {eta:.0f}s  '}next: {label}"
