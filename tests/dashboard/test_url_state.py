"""The URL-state matrix: Explore opened from a URL with every quantizer x pruning method (and every N:M pattern)
shows, in each control, the value of the config it evaluated, and enables only the controls that apply.

Each URL also asks for things that do not apply (0.7 sparsity, 3 bits, an asymmetric per-group grid), as a shared
link from an older view would; the page must switch them to what it evaluates, not show them as chosen.
"""
from __future__ import annotations

import dataclasses

import pytest

from compression_core.cli_flags import parse_layer_override
from compression_core.config import PRUNE_METHODS, QUANTIZERS, CompressionConfig, PruneSpec, QuantSpec
from compression_core.methods import prune_methods, quantizers
from dashboard.charts.common import option_label
from dashboard.explore_state import NM_PATTERNS
from tests.dashboard.test_runs import filled  # noqa: F401 - the Runs page tests' two stored runs (a fixture)
from tests.dashboard.test_sweep import finish

# a URL that asks for settings many methods do not take
CONFLICTING = {"explore_sparsity": "0.7", "explore_bits": "3", "explore_scheme": "asymmetric",
               "explore_granularity": "per group (block)", "explore_scale_dtype": "e8m0"}
CASES = [(q, p, "2:4") for q in QUANTIZERS for p in PRUNE_METHODS] + [
    ("uniform", "nm", nm) for nm in NM_PATTERNS[1:]]
QUANT_KEYS = ("explore_bits", "explore_quantizer", "explore_scheme", "explore_granularity", "explore_range",
              "explore_group_size", "explore_scale_dtype", "explore_double_quant")
PRUNE_KEYS = ("explore_sparsity", "explore_prune", "explore_scope", "explore_nm")


def _widgets(at) -> dict:
    """Every Explore control: key -> (value, disabled)."""
    found = list(at.select_slider) + list(at.slider) + list(at.selectbox) + list(at.toggle)
    keys = QUANT_KEYS + PRUNE_KEYS + ("explore_act_bits", "explore_repair", "explore_alpha", "explore_act_order")
    return {w.key: (w.value, w.disabled) for w in found if w.key in keys}


def _shown_config(w: dict) -> CompressionConfig:
    """The config the controls describe, built from what they show."""
    v = {k: value for k, (value, _) in w.items()}
    n, m = (int(x) for x in v["explore_nm"].split(":"))
    return CompressionConfig(
        quant=QuantSpec(bits=v["explore_bits"], quantizer=v["explore_quantizer"], scheme=v["explore_scheme"],
                        granularity=v["explore_granularity"], range=v["explore_range"],
                        group_size=v["explore_group_size"] or None, scale_dtype=v["explore_scale_dtype"],
                        double_quant=v["explore_double_quant"]),
        prune=PruneSpec(sparsity=0.0 if v["explore_prune"] == "nm" else round(v["explore_sparsity"], 4),
                        method=v["explore_prune"], scope=v["explore_scope"], n=n, m=m),
        act_bits=v["explore_act_bits"], repair=v["explore_repair"], alpha=v["explore_alpha"],
        act_order=v["explore_act_order"])


def _expected_disabled(c: CompressionConfig, quantizer: str, method: str) -> dict[str, bool]:
    """Which controls must be disabled for config `c` with these method choices (the rules, spelled out)."""
    qi, pi = quantizers()[quantizer], prune_methods()[method]
    on = c.quant.bits < 32
    return {
        "explore_bits": len(qi.bits) == 1, "explore_quantizer": False, "explore_prune": False,
        "explore_scheme": not (on and qi.schemes), "explore_range": not (on and qi.ranges),
        "explore_granularity": not (on and len(qi.granularities) > 1),
        "explore_group_size": not (on and c.quant.granularity == "group" and not qi.fixed_group_size),
        "explore_scale_dtype": not (on and qi.scale_dtypes), "explore_double_quant": not (on and qi.double_quant),
        "explore_sparsity": method == "nm", "explore_nm": method != "nm",
        "explore_scope": not (pi.ranks_globally and c.prune.enabled), "explore_act_bits": False,
        "explore_repair": False, "explore_alpha": True, "explore_act_order": True,
    }


@pytest.mark.parametrize(("quantizer", "method", "nm"), CASES, ids=[f"{q}-{p}-{nm}" for q, p, nm in CASES])
def test_every_control_shows_the_evaluated_config(make_app, no_exception, quantizer, method, nm):
    at = make_app(explore_quantizer=option_label(quantizer), explore_prune=option_label(method), explore_nm=nm,
                  **CONFLICTING)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    w = _widgets(at)
    assert len(w) == 16
    (points,) = at.session_state["explore_history"].values()
    evaluated = points[-1]["config_hash"]
    shown = _shown_config(w)
    assert shown.config_hash == evaluated  # the controls describe exactly what was evaluated
    assert (w["explore_quantizer"][0], w["explore_prune"][0]) == (quantizer, method)  # the URL's choices stand
    q, p = shown.quant, shown.prune
    assert w["explore_bits"][0] == q.bits and q.bits in quantizers()[quantizer].bits  # fixed widths show their own
    for key, field in (("explore_scheme", "scheme"), ("explore_granularity", "granularity"),
                       ("explore_range", "range"), ("explore_scale_dtype", "scale_dtype"),
                       ("explore_double_quant", "double_quant")):
        assert w[key][0] == getattr(q, field), key  # a setting that does not apply shows the value in force
    assert w["explore_group_size"][0] == (q.group_size or 0)
    assert w["explore_sparsity"][0] == pytest.approx(p.target_sparsity)  # N:M shows the sparsity it sets
    assert w["explore_nm"][0] == f"{p.n}:{p.m}" and w["explore_scope"][0] == p.scope
    assert {k: disabled for k, (_, disabled) in w.items()} == _expected_disabled(shown, quantizer, method)
    if method == "nm":
        n, m = (int(x) for x in nm.split(":"))
        assert w["explore_nm"][0] == nm and w["explore_sparsity"] == (pytest.approx(1 - n / m), True)


# ---- the other pages: their settings come from the URL ----------------------------------------------------
SWEEP_CASES = list(zip(["uniform", "kmeans", "pow2", "uniform", "kmeans"], PRUNE_METHODS))  # each family once


@pytest.mark.parametrize(("quantizer", "method"), SWEEP_CASES, ids=[f"{q}-{p}" for q, p in SWEEP_CASES])
def test_sweep_form_opens_with_the_urls_settings(make_app, no_exception, quantizer, method):
    at = make_app("sweep", sweep_bits=["3-bit", "NF4"], sweep_sparsity=["0.2", "0.6"], sweep_step="0.2",
                  sweep_quantizers=option_label(quantizer), sweep_methods=option_label(method),
                  sweep_scheme="asymmetric", sweep_granularity="per group (block)", sweep_group_sizes="64")
    no_exception(at)
    assert at.multiselect(key="sweep_bits").value == [3, "nf4"]
    assert at.slider(key="sweep_sparsity").value == pytest.approx((0.2, 0.6))
    assert at.number_input(key="sweep_step").value == pytest.approx(0.2)
    assert at.multiselect(key="sweep_quantizers").value == [quantizer]
    assert at.multiselect(key="sweep_methods").value == [method]
    assert (at.selectbox(key="sweep_scheme").value, at.selectbox(key="sweep_granularity").value) == ("asym", "group")
    assert at.multiselect(key="sweep_group_sizes").value == [64]


def test_a_reloaded_sweep_shows_its_own_settings(make_app, no_exception):
    at = make_app("sweep")
    at.multiselect(key="sweep_bits").set_value([2, 8])
    at.slider(key="sweep_sparsity").set_value((0.1, 0.4))
    at.number_input(key="sweep_step").set_value(0.3)
    at.multiselect(key="sweep_methods").set_value(["random"])
    at.selectbox(key="sweep_range").set_value("mse")
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    no_exception(at)
    job = finish(at)
    reloaded = make_app("sweep", sweep_run=job.id)  # a new session with only the run in the URL
    no_exception(reloaded)
    assert reloaded.multiselect(key="sweep_bits").value == [2, 8]
    assert reloaded.slider(key="sweep_sparsity").value == pytest.approx((0.1, 0.4))
    assert reloaded.number_input(key="sweep_step").value == pytest.approx(0.3)
    assert reloaded.multiselect(key="sweep_methods").value == ["random"]
    assert reloaded.selectbox(key="sweep_range").value == "mse"
    assert make_app("sweep").multiselect(key="sweep_bits").value == [2, 4, 8, 32]  # no run: the defaults


def test_layers_settings_and_layer_details_come_from_the_url(make_app, no_exception):
    at = make_app("layers", layers_bits=["3", "6"], layers_sparsity="75 %", layers_granularity="per tensor",
                  layers_channel_layer="conv2")
    no_exception(at)
    assert at.multiselect(key="layers_bits").value == [3, 6]
    assert at.multiselect(key="layers_sparsity").value == [0.75]
    assert at.selectbox(key="layers_granularity").value == "tensor"
    assert at.selectbox(key="layers_channel_layer").value == "conv2"
    explore = make_app(explore_details="true", explore_layer="conv1", explore_log_y="true",
                       explore_hide_zeros="false")
    no_exception(explore)
    assert explore.selectbox(key="explore_layer").value == "conv1"
    assert explore.toggle(key="explore_log_y").value and not explore.toggle(key="explore_hide_zeros").value


def test_learn_controls_come_from_the_url(make_app, no_exception):
    at = make_app("learn", learn_sym_bits="5", learn_prune_bits="4-bit", learn_nm_pattern="2:8")
    no_exception(at)
    assert at.slider(key="learn_sym_bits").value == 5
    assert at.select_slider(key="learn_prune_bits").value == 4
    assert at.segmented_control(key="learn_nm_pattern").value == "2:8"


def test_runs_filters_and_compare_choices_come_from_the_url(filled, make_app, no_exception):
    at = make_app("runs", runs_models="digits-cnn", runs_limits="whole test set",
                  runs_compare_by="Two pruning methods", runs_a_prune_method="random",
                  runs_b_prune_method="magnitude")
    no_exception(at)
    assert at.multiselect(key="runs_models").value == ["digits-cnn"]
    assert at.multiselect(key="runs_limits").value == [None]
    assert at.get("segmented_control")[0].value == "prune_method"
    assert (at.selectbox(key="runs_a_prune_method").value, at.selectbox(key="runs_b_prune_method").value) == (
        "random", "magnitude")


def test_explore_keeps_its_settings_across_a_page_switch(make_app, no_exception):
    at = make_app(explore_quantizer="k-means", explore_bits="3", explore_prune="N:M", explore_nm="1:4")
    at.switch_page("views/sweep.py").run()
    at.switch_page("views/explore.py").run()
    no_exception(at)
    assert at.selectbox(key="explore_quantizer").value == "kmeans" and at.select_slider(key="explore_bits").value == 3
    assert at.slider(key="explore_sparsity").value == pytest.approx(0.75) and at.slider(key="explore_sparsity").disabled
    assert any("kmeans 3b · nm 1:4" in c.value for c in at.caption)


def test_moves_follow_the_same_rules_as_urls(make_app, no_exception):
    at = make_app()
    at.selectbox(key="explore_prune").set_value("nm").run()
    at.selectbox(key="explore_nm").set_value("2:8").run()
    assert at.slider(key="explore_sparsity").value == pytest.approx(0.75) and at.slider(key="explore_sparsity").disabled
    assert at.selectbox(key="explore_scope").value == "layer" and at.selectbox(key="explore_scope").disabled
    at.selectbox(key="explore_quantizer").set_value("fp16").run()
    assert at.select_slider(key="explore_bits").value == 16 and at.select_slider(key="explore_bits").disabled
    assert at.selectbox(key="explore_scheme").disabled and at.selectbox(key="explore_repair").value == "none"
    at.selectbox(key="explore_prune").set_value("magnitude").run()
    no_exception(at)
    assert at.slider(key="explore_sparsity").value == pytest.approx(0.75) and not at.slider(
        key="explore_sparsity").disabled  # the sparsity N:M set stays, now a choice
    assert any("fp16 · magnitude layer 75%" in c.value for c in at.caption)


def test_a_hostile_explore_url_falls_back_to_the_defaults(make_app, no_exception):
    at = make_app(explore_bits="banana", explore_sparsity="2", explore_quantizer="<script>alert(1)</script>",
                  explore_nm="9:9", explore_act_order="maybe", explore_alpha="nan")
    no_exception(at)
    assert not at.error
    assert at.select_slider(key="explore_bits").value == 4 and at.selectbox(key="explore_quantizer").value == "uniform"
    assert at.slider(key="explore_sparsity").value == pytest.approx(0.99)  # clamped to the slider's end
    assert any("int4 channel sym minmax · magnitude global 99%" in c.value for c in at.caption)


EXTRA_CASES = [("uniform", "magnitude"), ("kmeans", "nm"), ("nf4", "random"), ("fp16", "magnitude")]


@pytest.mark.parametrize(("quantizer", "method"), EXTRA_CASES, ids=[f"{q}-{p}" for q, p in EXTRA_CASES])
def test_overrides_and_bias_correction_from_the_url_are_what_is_evaluated(make_app, no_exception, quantizer, method):
    layers = "conv1:bits=8;fc2:skip=1"
    at = make_app(explore_quantizer=option_label(quantizer), explore_prune=option_label(method),
                  explore_bias_correction="true", explore_layers=layers, **CONFLICTING)
    no_exception(at)
    assert not at.error and not at.warning, [m.value for m in (*at.error, *at.warning)]
    assert at.toggle(key="explore_bias_correction").value is True
    table = at.data_editor[0].value.set_index("Layer")
    assert bool(table.loc["fc2", "Skip (fp32)"]) and table["Skip (fp32)"].sum() == 1
    shown = _shown_config(_widgets(at))
    overrides = tuple(parse_layer_override(text, shown) for text in layers.split(";"))
    expected = dataclasses.replace(shown, overrides=overrides, bias_correction=True)
    (points,) = at.session_state["explore_history"].values()
    assert points[-1]["config_hash"] == expected.config_hash  # the table and the toggle are the evaluated config


def test_the_sweep_executor_choice_comes_from_the_url(make_app, no_exception, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("COMPRESSION_EXPLORER_RAY_ADDRESS", raising=False)
    at = make_app("sweep", sweep_executor="Ray cluster", sweep_bits=["4-bit"])  # the URL holds the label
    no_exception(at)
    assert at.radio(key="sweep_executor").value == "ray"
    assert make_app("sweep").radio(key="sweep_executor").value == "local"  # no URL: in-process
