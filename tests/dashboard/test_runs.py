"""Runs page (AppTest on the real app): lists the store, filters by run, overlays two fronts, packs a model."""
from __future__ import annotations

import json
import re

import pytest

from compression_core._version import __version__
from compression_core.config import CompressionConfig
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.export import export
from compression_core.models import load_model
from compression_core.pareto import pareto_front, staircase
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep
from tests.dashboard.conftest import decode_figure


@pytest.fixture(scope="module")
def filled():
    """Two runs of digits-cnn in the dashboard's store: magnitude vs random pruning. Returns (store, a, b, exp)."""
    store = Store()
    exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=None, device="cpu")
    a = store.new_run("run A magnitude", {"model": "digits-cnn"})
    sweep(exp, expand_grid(bits=[4, 8], sparsity=[0.0, 0.5], prune=["magnitude"]), store=store, run_id=a)
    b = store.new_run("run B random", {"model": "digits-cnn"})
    sweep(exp, expand_grid(bits=[4, 8], sparsity=[0.5, 0.8], prune=["random"]), store=store, run_id=b)
    return store, a, b, exp


def table(at):
    frames = [d.value for d in at.dataframe if "compression_ratio" in d.value.columns]
    assert len(frames) == 1
    return frames[0]


def option(widget, part: str) -> str:
    return next(o for o in widget.options if part in o)


def test_runs_page_lists_every_record(filled, make_app, no_exception):
    store, a, b, _ = filled
    at = make_app("runs")
    no_exception(at)
    assert at.title[0].value == "Runs"
    assert len(table(at)) == store.count()
    assert set(table(at)["engine_version"]) == {__version__}  # which engine computed each row
    assert any(f"{store.count()} of {store.count()} records" in c.value for c in at.caption)
    labels = [d.proto.label for d in at.get("download_button")]
    assert "Download CSV" in labels and "Download JSON (with per-layer data)" in labels


def test_run_names_are_distinct_and_say_when_what_and_how_many(filled, make_app, no_exception):
    store, a, b, _ = filled
    grid = {"bits": [4], "sparsities": [0.0], "quantizers": ["uniform", "kmeans"], "methods": ["magnitude"]}
    store.new_run("run A magnitude", {"grid": grid})  # the same label as run A, another grid
    at = make_app("runs")
    no_exception(at)
    run = at.selectbox(key="runs_run")
    # AppTest gives the shown names; the store may hold other tests' runs too
    names = [o for o in run.options if " · run A " in o or " · run B " in o]
    assert len(set(names)) == len(names) == 3
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"{stamp} · run A magnitude · uniform, k-means · magnitude · 0 configs", names[0])
    assert re.fullmatch(rf"{stamp} · run B random · 4 configs", names[1])
    assert re.fullmatch(rf"{stamp} · run A magnitude · 4 configs", names[2])


def test_filter_by_run(filled, make_app, no_exception):
    store, a, b, _ = filled
    at = make_app("runs")
    at.selectbox(key="runs_run").set_value(a).run()
    no_exception(at)
    shown = table(at)
    expected = store.records(run_id=a)
    assert len(shown) == len(expected) == 4
    assert sorted(shown["label"]) == sorted(r["label"] for r in expected)
    assert sorted(shown["accuracy"]) == pytest.approx(sorted(100 * r["accuracy"] for r in expected))


def test_overlay_fronts_of_two_runs(filled, make_app, no_exception):
    store, a, b, _ = filled
    at = make_app("runs")
    first, second = at.selectbox(key="runs_a_run"), at.selectbox(key="runs_b_run")
    first.set_value(option(first, "run A magnitude"))
    second.set_value(option(second, "run B random")).run()
    no_exception(at)
    (chart,) = [c for c in at.get("plotly_chart") if c.key == "runs_overlay"]
    data = decode_figure(json.loads(chart.proto.spec))["data"]
    fronts = [t for t in data if t["meta"]["role"] == "overlay-front"]
    points = [t for t in data if t["meta"]["role"] == "overlay-points"]
    assert [len(t["x"]) for t in points] == [4, 4]
    for trace, run in zip(fronts, (a, b)):
        _, ys = staircase(pareto_front(store.records(run_id=run)))
        assert trace["y"] == pytest.approx([100 * y for y in ys])


def test_overlay_by_pruning_method(filled, make_app, no_exception):
    at = make_app("runs")
    at.button_group(key="runs_compare_by").set_value("prune_method").run()
    no_exception(at)
    first, second = at.selectbox(key="runs_a_prune_method"), at.selectbox(key="runs_b_prune_method")
    assert {"magnitude", "random"} <= set(first.options)
    first.set_value("magnitude")
    second.set_value("random").run()
    no_exception(at)
    (chart,) = [c for c in at.get("plotly_chart") if c.key == "runs_overlay"]
    groups = [t["meta"]["group"] for t in json.loads(chart.proto.spec)["data"]
              if t["meta"]["role"] == "overlay-front"]
    assert groups == ["magnitude", "random"]


def test_pack_a_config_and_compare_sizes(filled, make_app, no_exception, tmp_path):
    store, a, _, exp = filled
    record = next(r for r in store.records(run_id=a) if r["bits"] == 4 and r["sparsity"] == 0.5)
    key = f"{record['fingerprint']}|{record['dataset']}|{record['split']}|{record['limit']}|{record['config_hash']}"
    at = make_app("runs")
    at.selectbox(key="runs_export_pick").set_value(key).run()
    at.button(key="runs_pack").click().run()
    no_exception(at)
    expected = export(exp.compress(CompressionConfig.from_dict(record["config"])), tmp_path / "m.cmpx",
                      exp.loaded.source)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Packed file"] == f"{expected:,} bytes"
    assert metrics["Reported size"] == f"{record['size_bytes']:,} bytes"
    assert metrics["File − reported"] == f"{expected - record['size_bytes']:+,} bytes"
    assert abs(expected - record["size_bytes"]) <= 0.02 * record["size_bytes"] + 4096
    (button,) = [d for d in at.get("download_button") if d.proto.label.startswith("Download digits-cnn-")]
    assert record["config_hash"] in button.proto.label


def test_table_shows_compute_columns_and_a_field_an_old_record_lacks_as_empty(filled, make_app, no_exception):
    store, a, _, _ = filled
    new = store.records(run_id=a)[0]
    old = {k: v for k, v in new.items() if k != "sparse_bitops"}
    old["limit"] = 100  # another key: the same config stored by an engine that did not count sparse BitOps
    store.put(old)
    try:
        at = make_app("runs")
        no_exception(at)
        shown = table(at)
        assert {"top5", "macs", "sparse_macs", "bitops", "sparse_bitops", "latency_ms_per_batch",
                "eval_seconds"} <= set(shown.columns)
        rows = shown[shown["label"] == new["label"]].set_index("limit")
        assert rows.loc["100 samples", "sparse_bitops"] != rows.loc["100 samples", "sparse_bitops"]  # NaN: empty
        assert rows.loc["whole test set", "sparse_bitops"] == new["sparse_bitops"] > 0
        assert rows.loc["100 samples", "bitops"] == new["bitops"]
        assert rows.loc["whole test set", "top5"] == pytest.approx(100 * new["top5"])
    finally:
        store.delete(old)
