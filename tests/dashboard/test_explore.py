"""Explore page: controls re-evaluate on the live subset, the URL reproduces the view, points accumulate."""
import pytest


def _front_points(figures, at) -> int:
    fig = figures(at)[0]
    return sum(len(t["x"]) for t in fig["data"] if t["name"] not in ("current", "Pareto front"))


def test_explore_shows_the_fp32_record_by_default(make_app, no_exception, metric_value):
    at = make_app()
    no_exception(at)
    assert metric_value(at, "Compression") == "1.0×"
    assert metric_value(at, "Bits per weight") == "32.00"
    assert metric_value(at, "Sparsity") == "0.0 %"
    assert metric_value(at, "Agreement") == "100.0 %"
    accuracy = next(m for m in at.metric if m.label == "Accuracy")
    assert accuracy.delta == "+0.00 pts vs fp32"
    assert any("n = 297" in c.value for c in at.caption)  # digits' whole test split (limit 1,000 > 297)


def test_moving_the_sparsity_slider_changes_the_accuracy(make_app, no_exception, metric_value, figures):
    at = make_app()
    before = metric_value(at, "Accuracy")
    at.slider(key="explore_sparsity").set_value(0.95).run()
    no_exception(at)
    assert metric_value(at, "Accuracy") != before
    assert metric_value(at, "Sparsity") == "95.0 %"
    accuracy = next(m for m in at.metric if m.label == "Accuracy")
    assert accuracy.delta.startswith("-")
    assert _front_points(figures, at) == 2  # fp32 and the pruned config, both kept for this session
    history = at.session_state["explore_history"]
    (points,) = history.values()
    assert [p["sparsity"] for p in points] == [0.0, 0.95]
    assert all(isinstance(v, (str, int, float)) for p in points for v in p.values())  # plain data only


def test_bits_change_size_and_histogram_levels(make_app, no_exception, metric_value, figures):
    at = make_app()
    at.select_slider(key="explore_bits").set_value(4).run()
    no_exception(at)
    assert float(metric_value(at, "Compression").rstrip("×")) > 5
    assert float(metric_value(at, "Bits per weight")) < 6
    hist = figures(at)[1]
    names = [t["name"] for t in hist["data"]]
    assert names[:2] == ["before (fp32)", "after compression"]
    assert "quantization levels (15)" in names and "clip range" in names  # 4-bit symmetric: 15 levels


def test_url_reproduces_the_view(make_app, no_exception, metric_value):
    # a selectbox's URL value is its shown label
    at = make_app(explore_bits="8", explore_sparsity="0.5", explore_granularity="per tensor")
    no_exception(at)
    assert at.select_slider(key="explore_bits").value == 8
    assert at.slider(key="explore_sparsity").value == pytest.approx(0.5)
    assert at.selectbox(key="explore_granularity").value == "tensor"
    assert metric_value(at, "Sparsity") == "50.0 %"
    assert any("int8 tensor sym minmax · magnitude layer 50%" in c.value for c in at.caption)


def test_invalid_combination_shows_the_engine_message(make_app, no_exception):
    at = make_app()
    at.select_slider(key="explore_bits").set_value(1).run()
    no_exception(at)
    assert len(at.error) == 1 and "asym" in at.error[0].value
    at.selectbox(key="explore_scheme").set_value("asym").run()
    no_exception(at)
    assert not at.error


def test_layer_table_and_histogram_toggles(make_app, no_exception, figures):
    at = make_app(explore_sparsity="0.5")
    table = at.dataframe[0].value
    assert list(table.columns)[:3] == ["Layer", "Shape", "Weights"]
    assert list(table["Sparsity (%)"]) == pytest.approx([50.0] * len(table), abs=0.5)
    assert any(t["name"].startswith("pruning threshold") for t in figures(at)[1]["data"])
    at.toggle(key="explore_log_y").set_value(True).run()
    at.selectbox(key="explore_layer").set_value(table["Layer"].iloc[-1]).run()
    no_exception(at)
    hist = figures(at)[1]
    assert hist["layout"]["yaxis"]["type"] == "log"
    assert hist["layout"]["title"]["text"].startswith(table["Layer"].iloc[-1])
    assert "pruned weights hidden" in hist["layout"]["annotations"][0]["text"]


def test_format_controls_enable_only_what_applies(make_app, no_exception):
    at = make_app(explore_quantizer="NF4")  # a selectbox's URL value is its shown label
    no_exception(at)
    assert at.selectbox(key="explore_granularity").disabled  # NF4 is a block format only
    assert not at.selectbox(key="explore_group_size").disabled and at.selectbox(key="explore_scale_dtype").disabled
    assert not at.toggle(key="explore_double_quant").disabled
    at.selectbox(key="explore_group_size").set_value(32).run()
    at.toggle(key="explore_double_quant").set_value(False).run()
    no_exception(at)
    assert any("nf4 g32 no-dq" in c.value for c in at.caption)
    at.selectbox(key="explore_quantizer").set_value("mxfp4").run()
    no_exception(at)
    assert at.selectbox(key="explore_group_size").disabled and at.toggle(key="explore_double_quant").disabled
    assert any("mxfp4 g32" in c.value for c in at.caption)
    at.selectbox(key="explore_quantizer").set_value("fp8_e4m3").run()
    at.selectbox(key="explore_scale_dtype").set_value("e8m0").run()
    no_exception(at)
    assert not at.selectbox(key="explore_granularity").disabled
    assert any("fp8_e4m3 channel e8m0" in c.value for c in at.caption)


def test_repair_selector_offers_only_what_applies(make_app, no_exception, metric_value):
    at = make_app()
    assert at.selectbox(key="explore_repair").disabled  # fp32: nothing is rounded, nothing to repair
    at.select_slider(key="explore_bits").set_value(3).run()
    assert at.selectbox(key="explore_repair").options == ["none", "GPTQ", "AWQ"]
    rtn = float(metric_value(at, "Accuracy").rstrip(" %"))
    at.selectbox(key="explore_repair").set_value("gptq").run()
    no_exception(at)
    assert not at.toggle(key="explore_act_order").disabled and at.slider(key="explore_alpha").disabled
    assert any("int3 channel sym minmax · gptq" in c.value for c in at.caption)
    assert float(metric_value(at, "Accuracy").rstrip(" %")) >= rtn  # digits-cnn at 3 bits: 98.3 % -> 99.7 %
    at.selectbox(key="explore_quantizer").set_value("kmeans").run()
    no_exception(at)
    assert at.selectbox(key="explore_repair").value == "none" and "GPTQ" not in at.selectbox(
        key="explore_repair").options
    at.selectbox(key="explore_act_bits").set_value(8).run()
    at.selectbox(key="explore_repair").set_value("smoothquant").run()
    no_exception(at)
    assert not at.slider(key="explore_alpha").disabled
    assert any("smoothquant α0.5" in c.value for c in at.caption)
