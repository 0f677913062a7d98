"""Pareto front on hand-made points (exact set), ties, bad values, and the staircase."""
import math
import random

from compression_core.pareto import pareto_front, staircase


def P(name, size, acc):
    return {"name": name, "size_bytes": size, "accuracy": acc}


POINTS = [
    P("fp32", 1000, 0.98),
    P("int8", 250, 0.98),     # dominates fp32: same accuracy, smaller
    P("int4", 125, 0.97),
    P("int4-s50", 70, 0.965),
    P("int2", 63, 0.60),
    P("int4-s90", 20, 0.70),  # dominates int2
    P("int3", 100, 0.95),     # dominated by int4-s50 (smaller and better)
    P("int6", 190, 0.975),
    P("int5", 160, 0.97),     # same accuracy as int4 but bigger
    P("tiny", 5, 0.10),
]


def test_front_is_exact_set_sorted_by_size():
    front = pareto_front(POINTS)
    assert [p["name"] for p in front] == ["tiny", "int4-s90", "int4-s50", "int4", "int6", "int8"]
    assert all(a["size_bytes"] < b["size_bytes"] and a["accuracy"] < b["accuracy"] for a, b in zip(front, front[1:]))
    assert front[0] is POINTS[-1]  # the records themselves


def test_front_matches_brute_force_on_random_points():
    rng = random.Random(0)
    pts = [P(i, rng.randint(1, 50), rng.randint(0, 30) / 30) for i in range(300)]

    def dominated(p):
        return any(q["size_bytes"] <= p["size_bytes"] and q["accuracy"] >= p["accuracy"]
                   and (q["size_bytes"], q["accuracy"]) != (p["size_bytes"], p["accuracy"]) for q in pts)

    expected = {(p["size_bytes"], p["accuracy"]) for p in pts if not dominated(p)}
    front = pareto_front(pts)
    assert [(p["size_bytes"], p["accuracy"]) for p in front] == sorted(expected)


def test_exact_ties_keep_first_and_bad_values_are_ignored():
    pts = [P("a", 10, 0.9), P("b", 10, 0.9), P("c", 5, float("nan")), {"name": "d", "accuracy": 1.0},
           P("e", math.inf, 1.0), P("f", None, 1.0), P("g", 20, 0.95)]
    assert [p["name"] for p in pareto_front(pts)] == ["a", "g"]
    assert pareto_front([]) == []


def test_other_axes():
    pts = [{"bits_per_weight": 2.0, "agreement": 0.9}, {"bits_per_weight": 4.0, "agreement": 0.85}]
    assert len(pareto_front(pts, x="bits_per_weight", y="agreement")) == 1


def test_staircase_steps_up_at_each_point():
    xs, ys = staircase([(30, 0.95), (10, 0.9), (20, 0.93)])  # unsorted input
    assert xs == [10, 20, 20, 30, 30]
    assert ys == [0.9, 0.9, 0.93, 0.93, 0.95]
    xs, ys = staircase(pareto_front(POINTS))
    assert len(xs) == len(ys) == 2 * 6 - 1
    assert xs[0] == 5 and ys[-1] == 0.98
    assert staircase([]) == ([], [])
