"""Sweep / Runs chart builders: the traces, points, colours and numbers each figure carries."""
from __future__ import annotations

import json

import pytest

from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.pareto import pareto_front, staircase
from dashboard.charts import sweep as charts
from dashboard.charts.common import METHOD_SYMBOLS, bit_color, log_ticks, metric_axis

BITS = (2, 4, 8, 32)
SPARSITIES = (0.0, 0.5, 0.9)


def fake_record(bits: int, sparsity: float, method: str = "magnitude") -> dict:
    """A record with the engine's fields; accuracy rises with bits and falls with sparsity."""
    config = CompressionConfig(quant=QuantSpec(bits=bits), prune=PruneSpec(sparsity=sparsity, method=method))
    size = 1000 * bits * (1 - sparsity) + 500
    acc = 0.99 - 0.3 / bits - 0.2 * sparsity ** 2
    return {"model": "m", "dataset": "d", "split": "test", "limit": None, "config": config.to_dict(),
            "config_hash": config.config_hash, "label": config.label, "bits": bits, "quantizer": "uniform",
            "prune_method": method if sparsity > 0 else "none", "sparsity": sparsity, "realized_sparsity": sparsity,
            "accuracy": acc, "accuracy_ci_low": acc - 0.01, "accuracy_ci_high": acc + 0.005,
            "accuracy_drop_pts": 100 * (0.985 - acc), "agreement": 0.99, "size_bytes": size, "dense_bytes": 32000,
            "compression_ratio": 32000 / size, "bits_per_weight": 32 * size / 32000, "n_samples": 360,
            "baseline_accuracy": 0.985, "layers": [{"name": "fc", "shape": [10, 64]}]}


@pytest.fixture
def records() -> list[dict]:
    return [fake_record(b, s) for b in BITS for s in SPARSITIES]


def by_role(fig, role: str) -> list:
    return [t for t in fig.data if (t.meta or {}).get("role") == role]


def test_results_frame_flat_columns_and_config_json(records):
    df = charts.results_frame(records)
    assert list(df.columns) == list(charts.RESULT_COLUMNS)
    assert len(df) == len(records)
    assert "layers" not in df.columns
    first = CompressionConfig.from_json(df["config"].iloc[0])
    assert first.config_hash == records[0]["config_hash"]
    assert df["size_bytes"].tolist() == [r["size_bytes"] for r in records]


def test_pareto_figure_points_front_and_reference(records):
    df = charts.results_frame(records)
    front = pareto_front(records)
    xs, ys = staircase(front)
    fig = charts.pareto_figure(df, front=(xs, ys), baseline=0.985)

    configs = by_role(fig, "configs")
    assert [t.name for t in configs] == ["2-bit", "4-bit", "8-bit", "fp32"]
    assert sum(len(t.x) for t in configs) == len(records)
    for t in configs:
        assert t.marker.color == bit_color(t.meta["bits"])
        assert len(t.x) == len(SPARSITIES)
        # x in KiB, y in %, and customdata[0] the config hash of exactly that point
        for x, y, data in zip(t.x, t.y, t.customdata):
            rec = next(r for r in records if r["config_hash"] == data[0])
            assert x == pytest.approx(rec["size_bytes"] / 1024)
            assert y == pytest.approx(100 * rec["accuracy"])
    symbols = {s for t in configs for s in t.marker.symbol}
    assert symbols == {METHOD_SYMBOLS["none"], METHOD_SYMBOLS["magnitude"]}
    assert len(by_role(fig, "method")) == 2  # legend keys for "no pruning" and "magnitude"

    (line,) = by_role(fig, "front")
    assert list(line.x) == pytest.approx([x / 1024 for x in xs])
    assert list(line.y) == pytest.approx([100 * y for y in ys])
    assert len(line.x) == 2 * len(front) - 1

    (ref,) = by_role(fig, "reference")
    assert list(ref.y) == pytest.approx([98.5, 98.5])
    sizes = [r["size_bytes"] / 1024 for r in records]
    assert ref.x[0] < min(sizes) < max(sizes) < ref.x[1]
    assert fig.layout.xaxis.type == "log"
    assert "KiB" in fig.layout.xaxis.title.text and "%" in fig.layout.yaxis.title.text


def test_pareto_figure_hover_names_full_config(records):
    fig = charts.pareto_figure(charts.results_frame(records))
    t = by_role(fig, "configs")[0]
    assert list(t.text) == [r["label"] for r in records if r["bits"] == 2]
    assert "%{text}" in t.hovertemplate and "KiB" in t.hovertemplate
    assert not by_role(fig, "front") and not by_role(fig, "reference")


def test_pareto_figure_single_method_has_no_method_keys():
    recs = [fake_record(b, 0.5) for b in BITS]
    fig = charts.pareto_figure(charts.results_frame(recs))
    assert by_role(fig, "method") == []


def test_picked_hashes_reads_customdata_and_skips_other_traces(records):
    fig = charts.pareto_figure(charts.results_frame(records))
    t = by_role(fig, "configs")[1]
    points = [{"curve_number": 1, "point_index": 2, "customdata": list(t.customdata[2])},
              {"curve_number": 1, "point_index": 0, "customdata": list(t.customdata[0])},
              {"curve_number": 1, "point_index": 2, "customdata": list(t.customdata[2])},
              {"curve_number": 5, "point_index": 0}]
    assert charts.picked_hashes(points) == [t.customdata[2][0], t.customdata[0][0]]
    assert charts.picked_hashes([{"customdata": "abc"}]) == ["abc"]
    assert charts.picked_hashes([]) == []


def test_heatmap_best_accuracy_per_cell(records):
    worse = dict(fake_record(4, 0.5, method="random"), accuracy=0.1, config_hash="worse", label="random")
    df = charts.results_frame(records + [worse])
    fig = charts.bits_sparsity_heatmap(df)
    (hm,) = fig.data
    assert list(hm.y) == ["2-bit", "4-bit", "8-bit", "fp32"]
    assert list(hm.x) == ["0 %", "50 %", "90 %"]
    z = [list(row) for row in hm.z]
    assert len(z) == len(BITS) and all(len(row) == len(SPARSITIES) for row in z)
    for i, b in enumerate(BITS):
        for j, s in enumerate(SPARSITIES):
            assert z[i][j] == pytest.approx(100 * fake_record(b, s)["accuracy"])
    assert "best of 2 config(s)" in hm.customdata[1][1]
    assert hm.text[0][0] == f"{100 * fake_record(2, 0.0)['accuracy']:.1f}"


def test_heatmap_leaves_missing_cells_empty():
    recs = [fake_record(2, 0.0), fake_record(8, 0.5)]
    (hm,) = charts.bits_sparsity_heatmap(charts.results_frame(recs)).data
    assert hm.z[0][1] is None and hm.z[1][0] is None
    assert hm.z[0][0] == pytest.approx(100 * recs[0]["accuracy"])


def test_overlay_two_groups(records):
    a = [r for r in records if r["bits"] in (2, 4)]
    b = [r for r in records if r["bits"] in (8, 32)]
    groups = {"run A": charts.results_frame(a), "run B": charts.results_frame(b)}
    fronts = {name: staircase(pareto_front(recs)) for name, recs in (("run A", a), ("run B", b))}
    fig = charts.overlay_figure(groups, fronts, baseline=0.985)
    pts, lines = by_role(fig, "overlay-points"), by_role(fig, "overlay-front")
    assert [t.meta["group"] for t in pts] == ["run A", "run B"]
    assert [len(t.x) for t in pts] == [len(a), len(b)]
    assert [list(t.y) for t in lines] == [pytest.approx([100 * y for y in fronts[n][1]]) for n in groups]
    assert pts[0].marker.color != pts[1].marker.color
    assert lines[0].line.color == pts[0].marker.color
    assert len(by_role(fig, "reference")) == 1


def test_results_frame_accepts_config_as_json_text(records):
    rec = dict(records[0], config=json.dumps(records[0]["config"]))
    df = charts.results_frame([rec])
    assert CompressionConfig.from_json(df["config"].iloc[0]).config_hash == rec["config_hash"]


def test_log_ticks_are_one_two_five_within_the_data():
    assert log_ticks([4.2, 190.0]) == [5, 10, 20, 50, 100, 200]
    assert log_ticks([0.3, 0.9]) == pytest.approx([0.2, 0.5, 1.0])
    assert log_ticks([]) == []
    fig = charts.pareto_figure(charts.results_frame([fake_record(b, 0.0) for b in BITS]))
    assert list(fig.layout.xaxis.tickvals) == log_ticks([fake_record(b, 0.0)["size_bytes"] / 1024 for b in BITS])


def perplexity_records() -> list[dict]:
    """lm records: perplexity rises as bits fall and sparsity grows (lower is better); no accuracy fields."""
    out = []
    for r in (fake_record(b, s) for b in BITS for s in SPARSITIES):
        ppl = 30.0 + 40.0 / r["bits"] + 60.0 * r["sparsity"] ** 2
        out.append({**r, "task": "lm", "metric": "perplexity", "metric_value": ppl, "perplexity": ppl,
                    "baseline_metric_value": 31.25, "accuracy": None, "accuracy_ci_low": None,
                    "accuracy_ci_high": None, "accuracy_drop_pts": None, "agreement": None})
    return out


def test_pareto_figure_of_perplexity_follows_its_direction_and_units():
    recs = perplexity_records()
    axis = metric_axis("perplexity")
    xs, ys = staircase(pareto_front(recs, y="perplexity"), y="perplexity")
    fig = charts.pareto_figure(charts.results_frame(recs), front=(xs, ys), baseline=31.25, axis=axis)
    assert fig.layout.yaxis.title.text == "Perplexity"
    points = {y for t in by_role(fig, "configs") for y in t.y}
    assert points == {r["perplexity"] for r in recs}  # no percent scaling
    (front,) = by_role(fig, "front")
    assert list(front.y) == ys and ys == sorted(ys, reverse=True)  # bigger models, lower perplexity
    (reference,) = by_role(fig, "reference")
    assert list(reference.y) == [31.25, 31.25] and "31.25<" in reference.hovertemplate
    assert "perplexity %{y:.2f}<br>" in by_role(fig, "configs")[0].hovertemplate  # no accuracy CI in the hover


def test_heatmap_of_perplexity_keeps_the_lowest_per_cell():
    recs = perplexity_records()
    worse = {**recs[0], "config_hash": "other", "label": "other", "perplexity": recs[0]["perplexity"] + 5}
    (hm,) = charts.bits_sparsity_heatmap(charts.results_frame([worse, *recs]), axis=metric_axis("perplexity")).data
    assert hm.z[0][0] == pytest.approx(recs[0]["perplexity"])  # 2-bit, dense: the lower of the two
    assert "best of 2 config(s)" in hm.customdata[0][0]
    assert hm.colorbar.title.text == "Perplexity" and hm.reversescale


def test_overlay_of_cosine_is_not_in_percent():
    recs = [{**r, "task": "fidelity", "metric": "cosine", "cosine": 1 - 0.1 / r["bits"]} for r in perplexity_records()]
    df = charts.results_frame(recs)
    fig = charts.overlay_figure({"a": df}, {"a": ([1000.0], [0.95])}, baseline=1.0, axis=metric_axis("cosine"))
    assert fig.layout.yaxis.title.text == "Cosine similarity to fp32"
    assert max(by_role(fig, "overlay-points")[0].y) < 1.0 and list(by_role(fig, "overlay-front")[0].y) == [0.95]
    assert list(by_role(fig, "reference")[0].y) == [1.0, 1.0]
