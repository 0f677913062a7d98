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

from .sensitivity import metric_harm
from .tasks import METRICS

# `recommended`: how far from fp32 a config may be and still count as "as good"
CLOSE_TO_FP32_PTS = 1.0  # accuracy: at most 1 percentage point below the fp32 model
CLOSE_TO_FP32_REL = 0.01  # any other metric: worse than fp32 by at most 1 % of the fp32 value


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


def recommended(records: Iterable[Mapping], metric: str = "accuracy") -> Mapping | None:
    """The config to recommend from a sweep: the smallest one on the `metric`-vs-size front that is close to fp32,
    else the best one by `metric`.

    Close to fp32 means an accuracy at most `CLOSE_TO_FP32_PTS` points below the fp32 model's (`accuracy_drop_pts`)
    or, for any other metric, a `metric_value` worse than `baseline_metric_value` by at most `CLOSE_TO_FP32_REL`
    of it (`sensitivity.metric_harm`). The pick is always a point of `pareto_front(records, y=metric)`.

    Args:
        records: engine records of one evaluation set and task (each with `metric_value`,
            `baseline_metric_value` and, for accuracy, `accuracy_drop_pts`).
        metric: the records' headline metric (`record["metric"]`).

    Returns:
        One of the records (not a copy), or None when no record has a size and a value of `metric`.

    Example:
        >>> pts = [{"size_bytes": 10, "accuracy": 0.90, "accuracy_drop_pts": 8.0},
        ...        {"size_bytes": 20, "accuracy": 0.975, "accuracy_drop_pts": 0.5},
        ...        {"size_bytes": 40, "accuracy": 0.98, "accuracy_drop_pts": 0.0}]
        >>> recommended(pts)["size_bytes"]
        20
    """
    front = pareto_front(records, y=metric)
    if not front:
        return None
    for r in front:  # cheapest first
        allowed = (CLOSE_TO_FP32_PTS if metric == "accuracy"
                   else CLOSE_TO_FP32_REL * abs(float(r["baseline_metric_value"])))
        if metric_harm(r) <= allowed:
            return r
    return front[-1]  # the front's y improves with x: its last point is the best by the metric
