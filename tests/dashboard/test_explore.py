"""Explore page: controls re-evaluate on the live subset, the URL reproduces the view, points accumulate."""
import json

import pytest

from tests.dashboard.conftest import decode_figure


def _front_points(points_chart, at) -> int:
    data, _ = points_chart(at)
    return int(data["kind"].isin(["explored", "precomputed"]).sum())


def test_explore_opens_on_a_real_trade_off(make_app, no_exception, metric_value):
    at = make_app()
    no_exception(at)
    assert any("int4 channel sym minmax · magnitude global 50%" in c.value for c in at.caption)  # DEFAULT_CONFIG
    assert float(metric_value(at, "Compression").rstrip("×")) > 5
    assert metric_value(at, "Sparsity") == "50.0 %"
    assert float(metric_value(at, "Bits per weight")) < 4


def test_explore_shows_the_fp32_record_from_the_url(make_app, no_exception, metric_value):
    at = make_app(explore_bits="32", explore_sparsity="0")
    no_exception(at)
    assert metric_value(at, "Compression") == "1.0×"
    assert metric_value(at, "Bits per weight") == "32.00"
    assert metric_value(at, "Sparsity") == "0.0 %"
    assert metric_value(at, "Agreement") == "100.0 %"
    accuracy = next(m for m in at.metric if m.label == "Accuracy")
    assert accuracy.delta == "+0.00 pts vs fp32"
    assert any("n = 297" in c.value for c in at.caption)  # digits' whole test split (limit 1,000 > 297)


def test_moving_the_sparsity_slider_changes_the_accuracy(make_app, no_exception, metric_value, points_chart):
    at = make_app()
    before = metric_value(at, "Accuracy")
    at.slider(key="explore_sparsity").set_value(0.95).run()
    no_exception(at)
    assert metric_value(at, "Accuracy") != before
    assert metric_value(at, "Sparsity") == "95.0 %"
    accuracy = next(m for m in at.metric if m.label == "Accuracy")
    assert accuracy.delta.startswith("-")
    assert _front_points(points_chart, at) == 2  # the default and the pruned config, both kept for this session
    history = at.session_state["explore_history"]
    (points,) = history.values()
    assert [p["sparsity"] for p in points] == [0.5, 0.95]
    assert all(isinstance(v, (str, int, float)) for p in points for v in p.values())  # plain data only


def test_bits_change_size_and_histogram_levels(make_app, no_exception, metric_value, figures):
    at = make_app(explore_details="true")
    at.select_slider(key="explore_bits").set_value(4).run()
    no_exception(at)
    assert float(metric_value(at, "Compression").rstrip("×")) > 5
    assert float(metric_value(at, "Bits per weight")) < 6
    hist = figures(at)[0]
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
    assert any("int8 tensor sym minmax · magnitude global 50%" in c.value for c in at.caption)


def test_one_bit_symmetric_switches_to_asymmetric_with_a_note(make_app, no_exception):
    at = make_app()
    at.select_slider(key="explore_bits").set_value(1).run()
    no_exception(at)
    assert not at.error  # the page stays, with the nearest valid config and one line saying why
    assert len(at.info) == 1 and "asymmetric" in at.info[0].value
    assert at.selectbox(key="explore_scheme").value == "asym"
    assert any("int1 channel asym minmax" in c.value for c in at.caption)
    at.select_slider(key="explore_bits").set_value(2).run()
    no_exception(at)
    assert not at.info and at.selectbox(key="explore_scheme").value == "asym"  # the switch is not undone


def test_layer_table_and_histogram_toggles(make_app, no_exception, figures):
    at = make_app(explore_sparsity="0.5", explore_scope="per layer", explore_details="true")
    table = next(d.value for d in at.dataframe if d.editing_mode == "read_only")  # the record's layers
    assert list(table.columns)[:3] == ["Layer", "Shape", "Weights"]
    assert list(table["Sparsity (%)"]) == pytest.approx([50.0] * len(table), abs=0.5)
    assert any(t["name"].startswith("pruning threshold") for t in figures(at)[0]["data"])
    at.toggle(key="explore_log_y").set_value(True).run()
    at.selectbox(key="explore_layer").set_value(table["Layer"].iloc[-1]).run()
    no_exception(at)
    hist = figures(at)[0]
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
    no_exception(at)
    # MX's blocks were the value in force, so they stay: FP8 in blocks of 32, now a choice
    assert at.selectbox(key="explore_granularity").value == "group" and any(
        "fp8_e4m3 g32 · " in c.value for c in at.caption)
    assert not at.selectbox(key="explore_granularity").disabled
    at.selectbox(key="explore_granularity").set_value("channel").run()
    at.selectbox(key="explore_scale_dtype").set_value("e8m0").run()
    no_exception(at)
    assert at.selectbox(key="explore_group_size").disabled and at.selectbox(key="explore_group_size").value == 0
    assert any("fp8_e4m3 channel e8m0" in c.value for c in at.caption)


def test_repair_selector_offers_only_what_applies(make_app, no_exception, metric_value):
    at = make_app(explore_bits="32", explore_sparsity="0")
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


def test_every_metric_of_the_record_has_a_tile_and_the_layers_a_size_breakdown(make_app, no_exception, metric_value,
                                                                               capsys, tmp_path):
    from compression_core import cli

    at = make_app(explore_bits="2", explore_sparsity="0.9", explore_scope="per layer", explore_act_bits="8-bit",
                  explore_details="true")
    no_exception(at)
    labels = [m.label for m in at.metric]
    assert labels[:5] == ["Accuracy", "Size", "Compression", "Bits per weight", "Sparsity"]  # the headline row
    assert {"Agreement", "Top-5 accuracy", "MACs / sample", "BitOps / sample", "Latency (ms / batch)"} <= set(labels)
    # digits-cnn: 337,536 MACs per sample, 33,741 of them on kept weights at 90 % (tests/core/test_cli.py)
    macs = next(m for m in at.metric if m.label == "MACs / sample")
    assert (macs.value, macs.delta) == ("338 k", "sparse 33.7 k")
    bitops = next(m for m in at.metric if m.label == "BitOps / sample")
    assert (bitops.value, bitops.delta) == ("5.40 M", "sparse 540 k")  # 2-bit weights x 8-bit activations
    latency = next(m for m in at.metric if m.label == "Latency (ms / batch)")
    assert float(latency.value) > 0 and latency.delta.startswith("eval ") and latency.delta.endswith(" s")
    assert metric_value(at, "Top-5 accuracy").endswith(" %")
    breakdown = decode_figure(json.loads(next(c for c in at.get("plotly_chart")
                                              if c.key == "explore_size_breakdown").proto.spec))
    assert [t["name"] for t in breakdown["data"]] == ["values", "sparse index", "scales / zero points",
                                                      "activation qparams / input scales"]
    layer_table = next(d.value for d in at.dataframe if "Index format" in d.value.columns)
    stacked_bits = [sum(t["customdata"][i][0] for t in breakdown["data"]) for i in range(len(layer_table))]
    assert stacked_bits == pytest.approx(list(layer_table["Size (KiB)"] * 8192))  # each bar is the layer's size
    # the same config from the CLI (the whole digits test split, as here): the same change, sign and words
    (points,) = at.session_state["explore_history"].values()
    delta = next(m for m in at.metric if m.label == "Accuracy").delta
    argv = ["evaluate", "--model", "digits-cnn", "--dataset", "digits", "--bits", "2", "--sparsity", "0.9",
            "--scope", "layer", "--act-bits", "8", "--store", str(tmp_path / "s.sqlite")]
    assert cli.main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config_hash"] == points[-1]["config_hash"]
    assert delta == f"-{record['accuracy_drop_pts']:.2f} pts vs fp32"
    assert cli.main(argv) == 0
    assert f"change {delta}" in capsys.readouterr().out


def test_per_layer_details_are_drawn_only_when_asked(make_app, no_exception, figures, points_chart):
    at = make_app()
    no_exception(at)
    assert not at.toggle(key="explore_details").value and all(s.key != "explore_layer" for s in at.selectbox)
    assert not figures(at) and len(points_chart(at)[0])  # the explored-points chart only: a step redraws nothing else
    at.toggle(key="explore_details").set_value(True).run()
    no_exception(at)
    assert any(s.key == "explore_layer" for s in at.selectbox) and len(figures(at)) == 2  # + histogram, sizes
    assert make_app(explore_details="true").toggle(key="explore_details").value  # from a shared link
