"""Explore's per-layer overrides: table edits reach the record, the URL opens the table filled, bad URL text is one
line, the allocation meets the typed budget, bias correction changes the result."""
import pytest

EDIT = {"added_rows": [], "deleted_rows": []}


@pytest.fixture
def make_app(make_app):
    """Explore with its per-layer details on: the overrides are checked against the record's layer table."""
    return lambda page=None, **query: make_app(page, **{"explore_details": "true", **query})


def layer_rows(at) -> dict:
    """The record's per-layer table (Explore's read-only st.dataframe) by layer name."""
    (table,) = [d.value for d in at.dataframe if "Shape" in d.value.columns]
    return {row["Layer"]: row for row in table.to_dict("records")}


def points(at) -> list[dict]:
    (history,) = at.session_state["explore_history"].values()
    return history


def test_a_table_edit_overrides_one_layer(make_app, no_exception):
    at = make_app(explore_bits="4")
    no_exception(at)
    editor = at.data_editor[0]
    assert list(editor.value["Layer"]) == list(layer_rows(at)) == ["conv1", "conv2", "fc1", "fc2"]
    assert editor.value["Bits"].isna().all() and not editor.value["Skip (fp32)"].any()  # all inherit
    before = points(at)[-1]
    at.session_state[editor.key] = {**EDIT, "edited_rows": {2: {"Bits": 8}, 3: {"Skip (fp32)": True}}}
    at.run()
    no_exception(at)
    rows = layer_rows(at)
    assert [rows[n]["Bits"] for n in ("conv1", "conv2", "fc1")] == [4, 4, 8]
    assert rows["fc2"]["Quantizer"] == "fp32 (skipped)"
    after = points(at)[-1]
    assert after["config_hash"] != before["config_hash"] and after["size_bytes"] > before["size_bytes"]
    assert any("2 overrides" in c.value for c in at.caption)
    assert at.query_params["explore_layers"] == "fc1:bits=8;fc2:skip=1"
    at.session_state[editor.key] = {**EDIT, "edited_rows": {}}  # edits undone: no override, no URL param
    at.run()
    assert "explore_layers" not in at.query_params
    assert {r["Bits"] for r in layer_rows(at).values()} == {4} and not any("overrides" in c.value for c in at.caption)


def test_the_url_opens_with_the_table_filled(make_app, no_exception):
    at = make_app(explore_bits="4", explore_sparsity="0", explore_layers="conv1:bits=8,sparsity=0.5;fc2:skip=1")
    no_exception(at)
    table = at.data_editor[0].value.set_index("Layer")
    assert table.loc["conv1", "Bits"] == 8 and table.loc["conv1", "Sparsity"] == pytest.approx(0.5)
    assert bool(table.loc["fc2", "Skip (fp32)"]) and table["Bits"].isna().sum() == 3
    rows = layer_rows(at)
    assert rows["conv1"]["Bits"] == 8 and rows["conv1"]["Sparsity (%)"] == pytest.approx(50.0, abs=0.5)
    assert rows["conv2"]["Bits"] == 4 and rows["fc2"]["Quantizer"] == "fp32 (skipped)"
    assert not at.warning and not at.error


@pytest.mark.parametrize("text", ["conv1:bits=99;nope:bits=2", "fc1:bits=8;fc1:bits=2;\n<img src=x>:bits=3",
                                  "conv1", "conv1:bits=1" + ";" * 30_000])
def test_invalid_url_text_is_one_line_and_ignored(make_app, no_exception, text):
    at = make_app(explore_bits="4", explore_layers=text)
    no_exception(at)
    assert len(at.warning) == 1 and "\n" not in at.warning[0].value and not at.error
    assert "Ignored" in at.warning[0].value and "<img" not in at.warning[0].value.replace("\\<", "")
    valid = {r["Layer"]: r["Bits"] for r in layer_rows(at).values()}
    expected = 8 if text.startswith("fc1:bits=8") else 4  # the valid entry stays, the rest is ignored
    assert valid == {"conv1": 4, "conv2": 4, "fc1": expected, "fc2": 4}


def test_a_refused_override_is_one_line_and_the_previous_result_stays(make_app, no_exception):
    at = make_app(explore_bits="4", explore_layers="fc1:bits=8")
    key = at.data_editor[0].key
    at.session_state[key] = {**EDIT, "edited_rows": {0: {"Bits": 1}}}  # 1-bit symmetric: refused
    at.run()
    no_exception(at)
    assert len(at.error) == 1 and "asym" in at.error[0].value
    rows = layer_rows(at)
    assert rows["fc1"]["Bits"] == 8 and rows["conv1"]["Bits"] == 4  # fc1's override still applies


def test_allocate_meets_the_typed_budget(make_app, no_exception):
    at = make_app("layers")
    at.multiselect(key="layers_bits").set_value([2, 8])
    at.multiselect(key="layers_sparsity").set_value([])
    at.button[0].click().run()
    at.switch_page("views/explore.py").run()
    no_exception(at)
    table = at.data_editor[0].value
    assert [c for c in table.columns if c.startswith("Drop")] == ["Drop: int2 channel sym minmax",
                                                                  "Drop: int8 channel sym minmax"]
    assert table["Drop: int2 channel sym minmax"].notna().all()
    at.select_slider(key="explore_bits").set_value(32)  # from fp32 (the first view is int4, 50 % sparse)
    at.slider(key="explore_sparsity").set_value(0.0).run()
    no_exception(at)
    dense = points(at)[-1]["size_bytes"]  # the fp32 point
    assert points(at)[-1]["compression_ratio"] == 1.0
    at.radio(key="explore_budget_unit").set_value("× compression").run()
    at.number_input(key="explore_budget_ratio").set_value(6.0).run()
    at.button(key="explore_allocate").click().run()
    no_exception(at)
    budget = int(dense / 6.0)
    record = points(at)[-1]
    assert record["size_bytes"] <= budget and record["compression_ratio"] >= 6.0
    bits = {r["Layer"]: r["Bits"] for r in layer_rows(at).values()}
    assert set(bits.values()) <= {2, 8, 32} and len(set(bits.values())) > 1  # a mix, not one width
    assert any(c.value.startswith(f"Allocated under {budget:,} B") for c in at.caption)
    filled = at.data_editor[0].value.set_index("Layer")
    assert {n: 32 if filled.loc[n, "Skip (fp32)"] else int(filled.loc[n, "Bits"]) for n in bits} == bits


def test_bias_correction_toggle_reaches_the_config(make_app, no_exception):
    at = make_app(explore_bits="3")
    before = points(at)[-1]
    at.toggle(key="explore_bias_correction").set_value(True).run()
    no_exception(at)
    after = points(at)[-1]
    assert "biascorr" in after["label"] and after["accuracy"] != before["accuracy"]
    assert after["size_bytes"] == before["size_bytes"]  # biases change value, not storage
    reopened = make_app(explore_bits="3", explore_bias_correction="true")
    assert points(reopened)[-1]["config_hash"] == after["config_hash"]
