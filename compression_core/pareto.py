"""Pareto fronts of sweep records: the configs no other config beats on both size (smaller) and quality (accuracy
higher, perplexity / KL / relative error lower: the direction of `tasks.METRICS`).

Example:
    >>> pts = [{"size_bytes": 10, "accuracy": 0.90}, {"size_bytes": 20, "accuracy": 0.85},
    ...        {"size_bytes": 30, "accuracy": 0.95}]
    >>> [p["size_bytes"] for p in pareto_front(pts)]
    [10, 30]
    >>> staircase([(10, 0.90), (30, 0.95)])
    ([10.0, 30.0, 30.0], [0.9, 0.9, 0.95])
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from .tasks import METRICS


def _value(record: Mapping, field: str) -> float | None:
    v = record.get(field)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def pareto_front(records: Iterable[Mapping], x: str = "size_bytes", y: str = "accuracy") -> list[Mapping]:
    """The non-dominated records for (x smaller is better, y better in its own direction), sorted by x ascending.

    y's direction is `tasks.METRICS[y].higher_is_better` (lower is better for loss, kl, rel_l2 and perplexity;
    a field not in METRICS is higher-is-better). A record is dominated when another has x <= its x and a y at
    least as good with at least one strict. Of records with exactly the same (x, y), the first one given is
    kept. Records whose x or y is missing or not a finite number are ignored.

    Args:
        records: dicts such as sweep records.
        x: the cost field (default honest size in bytes).
        y: the quality field (default accuracy; a record's own headline metric is `metric_value`, whose
            direction is that of its `metric`: pass y=record["metric"] to get it right).

    Returns:
        The front's records themselves (not copies), x strictly increasing and y strictly improving.

    Example:
        >>> pts = [{"size_bytes": 10, "perplexity": 30.0}, {"size_bytes": 20, "perplexity": 35.0},
        ...        {"size_bytes": 30, "perplexity": 21.0}]
        >>> [p["size_bytes"] for p in pareto_front(pts, y="perplexity")]
        [10, 30]
    """
    sign = 1.0 if y not in METRICS or METRICS[y].higher_is_better else -1.0
    points = [(vx, sign * vy, i, r) for i, r in enumerate(records)
              if (vx := _value(r, x)) is not None and (vy := _value(r, y)) is not None]
    points.sort(key=lambda p: (p[0], -p[1], p[2]))  # cheapest first; at equal cost the best, then input order
    front: list[Mapping] = []
    best = -math.inf
    for _, vy, _, r in points:
        if vy > best:  # strictly better than everything cheaper or equally cheap
            front.append(r)
            best = vy
    return front


def staircase(points: Sequence[Mapping | Sequence[float]], x: str = "size_bytes",
              y: str = "accuracy") -> tuple[list[float], list[float]]:
    """x, y lists that draw a front as steps: the best y reachable at each x (flat, then up at each point).

    Args:
        points: the front, as (x, y) pairs or records with fields `x` and `y`; sorted here by x.
        x, y: field names when `points` are records.

    Returns:
        (xs, ys) with 2n-1 entries for n points: (x0,y0), (x1,y0), (x1,y1), (x2,y1), ... (xn,yn).
    """
    pairs = sorted((float(p[x]), float(p[y])) if isinstance(p, Mapping) else (float(p[0]), float(p[1]))
                   for p in points)
    xs: list[float] = []
    ys: list[float] = []
    for i, (px, py) in enumerate(pairs):
        if i:
            xs.append(px)
            ys.append(ys[-1])
        xs.append(px)
        ys.append(py)
    return xs, ys
