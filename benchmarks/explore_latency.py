"""Explore round trip: slider -> new metrics, measured server-side with Streamlit's AppTest.

Starts the real app script (dashboard/app.py) on the default selection (lenet5 / mnist, live subset 1,000
class-stratified test samples, cpu), warms it up, then moves the sparsity and bits controls through configs never
seen before (cold: compress + evaluate + size + render) and back through configs already seen (cached). For each
move it reads the server time the Explore section measures around its own rerun (what a slider move reruns in the
browser: the section is a fragment) and the engine part of it, and also times AppTest's full-script rerun.
Prints a JSON summary with medians and maxima in milliseconds.

Usage: .venv/bin/python benchmarks/explore_latency.py
"""
from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COMPRESSION_EXPLORER_STORE", str(Path(tempfile.mkdtemp()) / "bench.sqlite"))

from streamlit.testing.v1 import AppTest  # noqa: E402

MOVES = [("explore_sparsity", s) for s in (0.1, 0.3, 0.5, 0.7, 0.9)] + [("explore_bits", b) for b in (8, 4, 3, 2)]


def timed(at: AppTest) -> float:
    t0 = time.perf_counter()
    at.run(timeout=120)
    dt = (time.perf_counter() - t0) * 1000
    if at.exception:
        raise SystemExit(f"app raised: {at.exception[0].message}")
    return dt


def widget(at: AppTest, key: str):
    for kind in (at.slider, at.select_slider):
        try:
            return kind(key=key)
        except KeyError:
            continue
    raise SystemExit(f"no widget with key {key!r}")


def server_ms(at: AppTest) -> tuple[float, float]:
    """(section total, engine part) in ms as the Explore page measures and shows them."""
    text = next(c.value for c in at.caption if c.value.startswith("Server time for this update"))
    total, engine = re.findall(r"([\d,]+) ms", text)[:2]
    return float(total.replace(",", "")), float(engine.replace(",", ""))


def accuracy_text(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "Accuracy")


def main() -> None:
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    t0 = time.perf_counter()
    at.run()
    first_load_ms = (time.perf_counter() - t0) * 1000
    cold, warm, seen_values, cold_server, warm_server = [], [], [], [], []
    for key, value in MOVES:
        widget(at, key).set_value(value)
        cold.append(timed(at))
        cold_server.append(server_ms(at))
        seen_values.append(accuracy_text(at))
    for key, value in reversed(MOVES):
        widget(at, key).set_value(value)
        warm.append(timed(at))
        warm_server.append(server_ms(at))
    med = lambda xs: round(statistics.median(xs))  # noqa: E731
    summary = {
        "selection": "lenet5 / mnist, live subset 1000, cpu",
        "first_load_ms": round(first_load_ms),
        "moves": len(MOVES), "distinct_accuracies_seen": len(set(seen_values)),
        # what a slider move costs on the server: the Explore section's rerun, as the page measures it
        "server_cold_median_ms": med([t for t, _ in cold_server]), "server_cold_max_ms": round(max(t for t, _ in cold_server)),
        "engine_cold_median_ms": med([e for _, e in cold_server]),
        "server_cached_median_ms": med([t for t, _ in warm_server]),
        "engine_cached_median_ms": med([e for _, e in warm_server]),
        # the whole script (sidebar too) under AppTest, including AppTest's own polling
        "apptest_full_rerun_cold_median_ms": med(cold), "apptest_full_rerun_cached_median_ms": med(warm),
        "target_ms": 300, "server_cold_within_target": statistics.median(t for t, _ in cold_server) <= 300,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
