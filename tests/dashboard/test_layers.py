"""Layers page: channel ranges with the per-tensor range; sensitivity heatmap and most affected layers on demand."""
import pytest


def test_layers_page_starts_with_an_empty_state_and_channel_ranges(make_app, no_exception, figures):
    at = make_app("layers")
    no_exception(at)
    assert any("Run sensitivity" in i.value for i in at.info)  # says what to do
    (ranges,) = figures(at)
    bars, tensor = ranges["data"]
    assert tensor["name"] == "per-tensor range"
    lows = [lo for lo in bars["base"]]
    highs = [lo + h for lo, h in zip(bars["base"], bars["y"])]
    assert min(y for y in tensor["y"] if y is not None) == pytest.approx(min(lows), rel=1e-5)
    assert max(y for y in tensor["y"] if y is not None) == pytest.approx(max(highs), rel=1e-5)
    assert any("own scale" in c.value for c in at.caption)  # the one-sentence why


def test_sensitivity_heatmap_has_one_cell_per_layer_and_setting(make_app, no_exception, figures):
    at = make_app("layers")
    at.multiselect(key="layers_bits").set_value([2, 8])
    at.multiselect(key="layers_sparsity").set_value([0.9])
    at.button[0].click().run()
    no_exception(at)
    heat, small_multiples, _ = figures(at)
    (cells,) = heat["data"]
    layers = at.selectbox(key="layers_channel_layer").options
    assert cells["y"] == layers
    assert len(cells["x"]) == 3 and any(x.startswith("int2") for x in cells["x"])
    drops = [v for row in cells["z"] for v in row]
    assert len(drops) == 3 * len(layers)
    int2 = cells["x"].index(next(x for x in cells["x"] if x.startswith("int2")))
    int8 = cells["x"].index(next(x for x in cells["x"] if x.startswith("int8")))
    assert max(row[int2] for row in cells["z"]) > max(row[int8] for row in cells["z"])  # 2 bits hurt more
    assert min(len(layers), 4) * 2 == len(small_multiples["data"])  # before + after per affected layer
    at.switch_page("views/explore.py").run()
    at.switch_page("views/layers.py").run()  # the result is remembered for the session
    no_exception(at)
    assert len(figures(at)) == 3 and not at.info
