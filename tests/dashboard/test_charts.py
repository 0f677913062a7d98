"""Chart builders are pure: DataFrames in, figures out — traces, axis titles, colours and the layer table."""
import math

import pandas as pd
import pytest

from dashboard.charts import common
from dashboard.charts import explore as explore_charts
from dashboard.charts import layers as layer_charts
from dashboard.charts import learn as learn_charts


def _points() -> pd.DataFrame:
    return pd.DataFrame([
        {"config_hash": "a", "label": "fp32", "bits": 32, "accuracy": 0.99, "accuracy_ci_low": 0.98,
         "accuracy_ci_high": 0.995, "size_bytes": 1024 * 1700},
        {"config_hash": "b", "label": "int4", "bits": 4, "accuracy": 0.985, "accuracy_ci_low": 0.975,
         "accuracy_ci_high": 0.99, "size_bytes": 1024 * 215},
        {"config_hash": "c", "label": "int2", "bits": 2, "accuracy": 0.80, "accuracy_ci_low": 0.77,
         "accuracy_ci_high": 0.83, "size_bytes": 1024 * 110},
        {"config_hash": "d", "label": "int4 50 %", "bits": 4, "accuracy": 0.97, "accuracy_ci_low": 0.96,
         "accuracy_ci_high": 0.98, "size_bytes": 1024 * 140},
    ])


def test_bit_colors_cover_every_bit_width_and_are_distinct():
    widths = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
    assert set(common.BIT_COLORS) == set(widths)
    assert len(set(common.BIT_COLORS.values())) == len(widths)
    assert common.bit_color(4) == common.BIT_COLORS[4]
    assert common.bit_color(4.0) == common.BIT_COLORS[4]
    assert common.bit_color(None) == common.FALLBACK_COLOR
    assert common.bits_label(32) == "fp32" and common.bits_label(3) == "3-bit"


def test_explored_points_data_layers_and_colours():
    data, spec = explore_charts.explored_points(_points(), current="d", baseline=0.99,
                                                front=([110 * 1024, 140 * 1024], [0.80, 0.97]))
    points = data[data["kind"] == "explored"]
    assert list(points["config_hash"]) == ["a", "b", "c", "d"] and list(points["current"]) == [False] * 3 + [True]
    assert list(points["x"]) == pytest.approx([1700.0, 215.0, 110.0, 140.0])  # KiB
    assert list(points["y"]) == pytest.approx([99.0, 98.5, 80.0, 97.0])  # %
    assert list(points["y_low"]) == pytest.approx([98.0, 97.5, 77.0, 96.0])  # the 95 % intervals, in %
    assert list(points["bits"]) == ["fp32", "4-bit", "2-bit", "4-bit"]
    front = data[data["kind"] == "front"]
    assert list(front["x"]) == pytest.approx([110.0, 140.0]) and list(front["order"]) == [0, 1]
    layers = {layer["name"]: layer for layer in spec["layer"]}
    assert list(layers) == ["front", "interval", "explored", "precomputed", "current", "fp32", "fp32_label"]
    colour = layers["explored"]["encoding"]["color"]["scale"]
    assert colour == {"domain": ["2-bit", "4-bit", "fp32"],
                      "range": [common.BIT_COLORS[2], common.BIT_COLORS[4], common.BIT_COLORS[32]]}
    assert layers["current"]["mark"]["size"] > layers["explored"]["mark"]["size"]
    assert layers["current"]["transform"] == [{"filter": "datum.current === true"}]
    x, y = layers["explored"]["encoding"]["x"], layers["explored"]["encoding"]["y"]
    assert x["scale"]["type"] == "log" and x["title"] == common.SIZE_AXIS and y["title"] == common.ACCURACY_AXIS
    assert layers["fp32"]["data"]["values"][0]["y"] == pytest.approx(99.0)  # fp32 reference line
    low, high = y["scale"]["domain"]
    assert low < 77.0 and high > 99.5  # every interval and the fp32 line are inside


def test_a_step_that_only_moves_the_current_point_keeps_the_spec():
    # Streamlit then updates the chart's data in place instead of building a new chart
    _, first = explore_charts.explored_points(_points(), current="d", baseline=0.99)
    data, second = explore_charts.explored_points(_points(), current="b", baseline=0.99)
    assert first == second and list(data["current"]) == [False, True, False, False]


def test_explored_points_without_current_or_points():
    data, spec = explore_charts.explored_points(_points(), current="not-there")
    assert not data["current"].any() and "fp32" not in {layer["name"] for layer in spec["layer"]}
    empty, spec = explore_charts.explored_points(pd.DataFrame(columns=["config_hash", "label", "bits", "accuracy",
                                                                       "size_bytes"]))
    assert empty.empty and "domain" not in spec["layer"][0]["encoding"]["y"]["scale"]


def _hist() -> pd.DataFrame:
    edges = [-1.0, -0.5, 0.0, 0.5, 1.0]
    return pd.DataFrame({"left": edges[:-1], "right": edges[1:], "center": [-0.75, -0.25, 0.25, 0.75],
                         "before": [5, 20, 22, 4], "after": [6, 0, 0, 5]})


def test_weight_histogram_bars_levels_clip_and_threshold():
    grid = {"levels": [-1.0, -0.5, 0.0, 0.5, 1.0], "clip": [-1.0, 1.0], "threshold": 0.3,
            "hidden_zeros_after": 40}
    fig = layer_charts.weight_histogram(_hist(), grid, log_y=True, title="fc1")
    names = [t.name for t in fig.data]
    assert names[:2] == ["before (fp32)", "after compression"]
    assert "quantization levels (5)" in names and "clip range" in names
    assert "pruning threshold ±0.3" in names
    assert list(fig.data[1].y) == [6, 0, 0, 5]
    assert list(fig.data[0].width) == pytest.approx([0.5] * 4)
    threshold = next(t for t in fig.data if t.name.startswith("pruning"))
    assert [x for x in threshold.x if x is not None] == pytest.approx([-0.3, -0.3, 0.3, 0.3])
    assert threshold.yaxis == "y2" and fig.layout.yaxis2.range == (0, 1)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.title.text == common.COUNT_LOG_AXIS
    assert fig.layout.xaxis.title.text == common.WEIGHT_AXIS
    assert any("40 pruned weights hidden" in a.text for a in fig.layout.annotations)


def test_weight_histogram_many_levels_draw_as_short_ticks():
    levels = [i / 100 for i in range(-127, 128)]
    fig = layer_charts.weight_histogram(_hist(), {"levels": levels, "clip": None, "threshold": None})
    trace = next(t for t in fig.data if t.name.startswith("quantization levels"))
    assert max(y for y in trace.y if y is not None) == pytest.approx(layer_charts.TICK_HEIGHT)
    assert fig.layout.yaxis.type == "linear" and fig.layout.yaxis.title.text == common.COUNT_AXIS
    assert [t.name for t in layer_charts.weight_histogram(_hist()).data] == ["before (fp32)", "after compression"]


def test_layer_table_readable_columns_and_units():
    layers = [{"name": "fc1", "shape": [500, 800], "bits": 4, "quantizer": "uniform", "sparsity": 0.5,
               "n": 400000, "nnz": 200000, "index_format": "csr", "size_bits": 8 * 1024 * 150, "skipped": False},
              {"name": "fc2", "shape": [10, 500], "bits": 32, "quantizer": "none", "sparsity": 0.0, "n": 5000,
               "nnz": 5000, "index_format": None, "size_bits": 32 * 5000, "skipped": True}]
    table = layer_charts.layer_table(layers)
    assert list(table.columns) == ["Layer", "Shape", "Weights", "Kept", "Sparsity (%)", "Bits", "Quantizer",
                                   "Index format", "Size (KiB)", "Bits / weight"]
    first = table.iloc[0]
    assert first["Shape"] == "500 × 800" and first["Sparsity (%)"] == pytest.approx(50.0)
    assert first["Size (KiB)"] == pytest.approx(150.0)
    assert first["Bits / weight"] == pytest.approx(8 * 1024 * 150 / 400000)
    assert table.iloc[1]["Quantizer"] == "fp32 (skipped)" and table.iloc[1]["Index format"] == "dense"


def test_sensitivity_heatmap_layers_by_settings():
    table = pd.DataFrame({"int2": [12.5, 0.3], "int8 · magnitude layer 50%": [0.0, 0.1]}, index=["conv1", "fc1"])
    fig = layer_charts.sensitivity_heatmap(table, title="drop")
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert list(heat.x) == ["int2", "int8<br>magnitude layer 50%"] and list(heat.y) == ["conv1", "fc1"]
    assert heat.z[0][0] == pytest.approx(12.5) and heat.zmax == pytest.approx(12.5)
    assert heat.colorbar.title.text == common.DROP_AXIS
    assert fig.layout.xaxis.title.text == common.SETTING_AXIS
    assert fig.layout.yaxis.title.text == common.LAYER_AXIS


def test_channel_range_figure_bars_from_min_to_max_and_tensor_range():
    ranges = pd.DataFrame({"channel": [0, 1, 2], "min": [-0.1, -0.5, -0.02], "max": [0.2, 0.4, 0.03],
                           "absmax": [0.2, 0.5, 0.03]})
    fig = layer_charts.channel_range_figure(ranges)
    bars, tensor = fig.data
    assert list(bars.base) == pytest.approx([-0.1, -0.5, -0.02])
    assert list(bars.y) == pytest.approx([0.3, 0.9, 0.05])
    assert tensor.name == "per-tensor range"
    assert sorted(y for y in tensor.y if y is not None) == pytest.approx([-0.5, -0.5, 0.4, 0.4])
    assert fig.layout.xaxis.title.text == common.CHANNEL_AXIS


def test_histogram_grid_small_multiples_share_one_legend():
    hists = {"conv1": (_hist(), {"threshold": 0.2, "clip": None}), "fc1": (_hist(), {"clip": [-1, 1]}),
             "fc2": (_hist(), {})}
    fig = layer_charts.histogram_grid(hists)
    assert len(fig.data) == 6
    assert sum(bool(t.showlegend) for t in fig.data) == 2
    assert [a.text for a in fig.layout.annotations][:3] == ["conv1", "fc1", "fc2"]
    assert len(fig.layout.shapes) == 4  # ±threshold in conv1, clip range in fc1


def test_transfer_curve_and_mask_pattern():
    curve = pd.DataFrame({"w": [-1.0, 0.0, 1.0], "w_hat": [-1.0, 0.0, 1.0]})
    fig = learn_charts.transfer_curve(curve, zero_point_value=0.0, clip=(-1.0, 1.0))
    assert [t.name for t in fig.data] == ["identity (no error)", "ŵ = s · (q − z)", "zero point (q = z)"]
    assert fig.data[1].line.shape == "hv" and len(fig.layout.shapes) == 2
    kept = pd.DataFrame([[0.5, math.nan, math.nan, -0.7], [math.nan, 0.2, 0.1, math.nan]])
    fig = learn_charts.mask_pattern(kept, m=2)
    assert fig.data[0].type == "heatmap" and len(fig.layout.shapes) == 1  # one boundary between 2 groups
    assert fig.layout.yaxis.autorange == "reversed"


def _breakdown_rows() -> list[dict]:
    """Two layers as a record carries them: a pruned int4 conv in bitmask form, an unpruned k-means head."""
    conv = {"name": "features.0", "size_bits": 4608 + 1152 + 256 + 64, "value_bits": 4608, "index_bits": 1152,
            "scale_bits": 256, "codebook_bits": 0, "other_bits": 64}
    head = {"name": "classifier", "size_bits": 8192 + 512, "value_bits": 8192, "index_bits": 0, "scale_bits": 0,
            "codebook_bits": 512, "other_bits": 0}
    return [conv, head]


def test_size_breakdown_stacks_each_layers_parts_in_kib():
    layers = _breakdown_rows()
    fig = layer_charts.size_breakdown(layers).to_dict()
    assert fig["layout"]["barmode"] == "stack" and fig["layout"]["legend"]["traceorder"] == "normal"
    names = [t["name"] for t in fig["data"]]
    assert names == ["values", "sparse index", "scales / zero points", "codebook",
                     "activation qparams / input scales"]
    for trace, part in zip(fig["data"], ("value_bits", "index_bits", "scale_bits", "codebook_bits", "other_bits")):
        assert trace["orientation"] == "h" and list(trace["y"]) == ["features.0", "classifier"]
        assert list(trace["x"]) == pytest.approx([l[part] / 8 / 1024 for l in layers])
    # each bar is the layer's whole size
    stacked = [sum(t["x"][i] for t in fig["data"]) for i in range(2)]
    assert stacked == pytest.approx([l["size_bits"] / 8192 for l in layers])
    assert fig["data"][3]["customdata"][1] == pytest.approx([512, 100 * 512 / 8704])
    assert fig["layout"]["yaxis"]["autorange"] == "reversed"  # model order, top to bottom
    assert fig["layout"]["xaxis"]["title"]["text"] == "Stored size (KiB)"
    # readable on Streamlit's white and near-black backgrounds: mid-tone colours, clearly apart from both
    for color in [t["marker"]["color"] for t in fig["data"]]:
        rgb = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lum = sum(w * (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
                  for w, c in zip((0.2126, 0.7152, 0.0722), rgb))
        assert (1.05 / (lum + 0.05) >= 2.0) and ((lum + 0.05) / (0.0 + 0.05) >= 3.0), color  # vs white, vs black


def test_size_breakdown_leaves_out_parts_no_layer_stores_and_knows_old_rows():
    unpruned = [{"name": "fc", "size_bits": 1024 + 32, "value_bits": 1024, "index_bits": 0, "scale_bits": 32,
                 "codebook_bits": 0, "other_bits": 0}]
    fig = layer_charts.size_breakdown(unpruned)
    assert [t.name for t in fig.data] == ["values", "scales / zero points"]
    assert layer_charts.has_size_breakdown(unpruned)
    old = [{"name": "fc", "size_bits": 1056}]  # stored before the breakdown existed
    assert not layer_charts.has_size_breakdown(old) and not layer_charts.has_size_breakdown([])
