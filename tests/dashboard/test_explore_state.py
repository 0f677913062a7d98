"""explore_state without Streamlit: the canonical config of raw control values, the nearest valid one for an
impossible combination (with its note), and what every control shows and whether it is enabled."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression_core.config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES,
                                     REPAIRS, SCALE_DTYPES, SCHEMES, SCOPES, CompressionConfig, PruneSpec, QuantSpec)
from dashboard.explore_state import (DEFAULT_CONFIG, DEFAULT_STATES, GROUP_SIZES, NM_PATTERNS, WidgetState,
                                     nearest_valid, widget_states)


def _states(**raw):
    raw = {f"explore_{k}": v for k, v in raw.items()}
    config, note = nearest_valid(raw)
    return config, note, widget_states(config, raw)


def test_the_first_view_is_a_real_trade_off():
    assert DEFAULT_CONFIG == CompressionConfig(quant=QuantSpec(bits=4, scheme="sym", granularity="channel"),
                                               prune=PruneSpec(sparsity=0.5, method="magnitude", scope="global"))
    assert nearest_valid({}) == (DEFAULT_CONFIG, None)
    assert DEFAULT_STATES["explore_bits"] == WidgetState(4, True)
    assert DEFAULT_STATES["explore_scope"] == WidgetState("global", True)


def test_nm_shows_the_sparsity_its_pattern_sets_on_a_disabled_slider():
    config, note, w = _states(prune="nm", sparsity=0.7, nm="1:4")
    assert note is None and (config.prune.method, config.prune.n, config.prune.m) == ("nm", 1, 4)
    assert w["explore_sparsity"] == WidgetState(0.75, False)
    assert w["explore_nm"] == WidgetState("1:4", True)
    assert w["explore_scope"] == WidgetState("layer", False)
    _, _, w = _states(prune="magnitude", sparsity=0.7, nm="1:4")
    assert w["explore_nm"] == WidgetState("2:4", False) and w["explore_sparsity"] == WidgetState(0.7, True)


def test_a_cast_shows_its_own_width_and_nothing_else_applies():
    config, note, w = _states(quantizer="fp16", bits=4, scheme="asym", granularity="group", group_size=64)
    assert note is None and config.quant.bits == 16
    assert w["explore_bits"] == WidgetState(16, False)
    assert [w[k] for k in ("explore_scheme", "explore_granularity", "explore_range", "explore_group_size")] == [
        WidgetState("sym", False), WidgetState("channel", False), WidgetState("minmax", False), WidgetState(0, False)]


def test_kmeans_disables_scheme_granularity_and_range():
    _, _, w = _states(quantizer="kmeans", bits=3, scheme="asym", range="mse")
    assert w["explore_bits"] == WidgetState(3, True)
    assert not any(w[k].enabled for k in ("explore_scheme", "explore_granularity", "explore_range",
                                          "explore_scale_dtype", "explore_group_size"))
    assert w["explore_scheme"].value == "sym" and w["explore_range"].value == "minmax"


def test_one_bit_symmetric_becomes_asymmetric_with_a_note():
    config, note, w = _states(bits=1, scheme="sym")
    assert config.quant.scheme == "asym" and w["explore_scheme"] == WidgetState("asym", True)
    assert note.startswith("1-bit") and "asymmetric" in note and "\n" not in note
    assert nearest_valid({"explore_bits": 1, "explore_quantizer": "kmeans"})[1] is None  # a codebook takes 1 bit


@pytest.mark.parametrize(("raw", "said"), [
    ({"explore_quantizer": "kmeans", "explore_repair": "gptq"}, "integer grid"),
    ({"explore_bits": 32, "explore_repair": "awq"}, "quantized weights"),
    ({"explore_act_bits": 32, "explore_repair": "smoothquant"}, "8-bit activations"),
])
def test_a_repair_that_does_not_apply_becomes_none_with_a_note(raw, said):
    config, note = nearest_valid(raw)
    assert config.repair == "none" and said in note


def test_the_method_choices_stay_while_they_do_nothing():
    config, _, w = _states(bits=32, quantizer="kmeans", sparsity=0.0, prune="taylor", scope="global")
    assert (config.quant.quantizer, config.prune.method) == ("uniform", "magnitude")  # canonical: fp32, unpruned
    assert w["explore_quantizer"] == WidgetState("kmeans", True) and w["explore_prune"] == WidgetState("taylor", True)
    assert w["explore_scope"] == WidgetState("layer", False) and not w["explore_scheme"].enabled


def test_block_formats_show_their_blocks():
    _, _, w = _states(quantizer="mxfp4", granularity="tensor", group_size=256)
    assert w["explore_granularity"] == WidgetState("group", False) and w["explore_group_size"] == WidgetState(32, False)
    _, _, w = _states(quantizer="nf4", double_quant=False)
    assert w["explore_group_size"] == WidgetState(64, True) and w["explore_double_quant"] == WidgetState(False, True)


@pytest.mark.parametrize("raw", [
    {"explore_bits": 99, "explore_sparsity": "0.5; drop table", "explore_quantizer": "<script>"},
    {"explore_sparsity": float("nan"), "explore_nm": "9:9", "explore_group_size": -1, "explore_alpha": "x"},
    {"explore_sparsity": 5.0, "explore_prune": None, "explore_act_bits": "8"},
])
def test_hostile_raw_values_fall_back_to_defaults(raw):
    config, _ = nearest_valid(raw)
    assert config.quant == DEFAULT_CONFIG.quant
    assert 0.0 <= config.prune.sparsity <= 0.99 and config.act_bits == 32


RAW = st.fixed_dictionaries({
    "explore_bits": st.sampled_from(ALLOWED_BITS), "explore_sparsity": st.floats(0, 0.99),
    "explore_quantizer": st.sampled_from(QUANTIZERS), "explore_scheme": st.sampled_from(SCHEMES),
    "explore_granularity": st.sampled_from(GRANULARITIES), "explore_range": st.sampled_from(RANGES),
    "explore_group_size": st.sampled_from(GROUP_SIZES), "explore_scale_dtype": st.sampled_from(SCALE_DTYPES),
    "explore_double_quant": st.booleans(), "explore_prune": st.sampled_from(PRUNE_METHODS),
    "explore_scope": st.sampled_from(SCOPES), "explore_nm": st.sampled_from(NM_PATTERNS),
    "explore_act_bits": st.sampled_from(ACT_BITS), "explore_repair": st.sampled_from(REPAIRS),
    "explore_alpha": st.floats(0, 1), "explore_act_order": st.booleans()})


@settings(max_examples=300, deadline=None)
@given(RAW)
def test_what_the_controls_show_is_a_fixed_point(raw):
    """Any raw choice gives a valid config; the values the controls then show give that same config, silently."""
    config, _ = nearest_valid(raw)
    shown = {key: state.value for key, state in widget_states(config, raw).items()}
    again, note = nearest_valid(shown)
    assert (again.config_hash, note) == (config.config_hash, None)
    assert widget_states(again, shown) == widget_states(config, raw)
