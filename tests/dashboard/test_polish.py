"""Explore's tiles say what they show: a short Size (exact bytes in its help) and a Sparsity that is the pruned
fraction, as its help says (weights that quantization rounds to zero are not counted)."""
from __future__ import annotations

from dashboard.components import size_text


def test_size_and_sparsity_tiles_agree_with_their_help(make_app, no_exception):
    at = make_app(explore_bits="2", explore_granularity="per tensor", explore_sparsity="0")  # many round to 0
    no_exception(at)
    (history,) = at.session_state["explore_history"].values()
    record_size = history[-1]["size_bytes"]
    tiles = {m.label: m for m in at.metric}
    assert tiles["Size"].value == size_text(record_size) and len(tiles["Size"].value) <= 9
    assert f"{record_size:,} bytes" in tiles["Size"].help
    assert tiles["Sparsity"].value == "0.0 %"  # nothing pruned, although rounding made zeros
    assert "pruning removed" in tiles["Sparsity"].help and "not counted" in tiles["Sparsity"].help
    at.slider(key="explore_sparsity").set_value(0.5).run()
    assert {m.label: m.value for m in at.metric}["Sparsity"] == "50.0 %"
