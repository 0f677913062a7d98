"""Learn page: every formula renders with a live plot computed by the engine; the bits slider moves the grid."""
import math


def _levels(fig: dict) -> dict:
    return next(t for t in fig["data"] if t.get("name", "").startswith("quantization levels"))


def test_learn_page_loads_with_formulas_and_plots(make_app, no_exception):
    at = make_app("learn")
    no_exception(at)
    assert at.title[0].value == "Learn"
    assert len(at.get("latex")) == 9  # one formula per method
    assert len(at.get("plotly_chart")) == 10  # a histogram or curve each, plus the asymmetric transfer curve


def test_bits_slider_moves_the_quantization_levels(make_app, no_exception, figures):
    at = make_app("learn")
    before = figures(at)[0]
    assert _levels(before)["name"] == "quantization levels (7)"  # 3-bit symmetric: 2^3 - 1 levels
    at.slider(key="learn_sym_bits").set_value(5).run()
    no_exception(at)
    after = figures(at)[0]
    assert _levels(after)["name"] == "quantization levels (31)"
    assert after["data"][1]["y"] != before["data"][1]["y"]  # the "after compression" bars moved
    assert sum(after["data"][0]["y"]) == sum(before["data"][0]["y"]) == 2005  # the same toy tensor, all counted


def test_n_of_m_pattern_keeps_exactly_n_per_group(make_app, no_exception, figures):
    at = make_app("learn")
    at.segmented_control(key="learn_nm_pattern").set_value("1:4").run()
    no_exception(at)
    fig = figures(at)[-1]
    z = fig["data"][0]["z"]
    assert len(z) == 8 and len(z[0]) == 16
    kept_per_group = {sum(not math.isnan(v) for v in row[j:j + 4]) for row in z for j in range(0, 16, 4)}
    assert kept_per_group == {1}
    assert fig["layout"]["title"]["text"].startswith("1:4: 32 of 128 kept")


def test_block_scales_follow_the_block_size(make_app, no_exception, figures):
    at = make_app("learn")
    at.segmented_control(key="learn_block_size").set_value(8).run()
    at.segmented_control(key="learn_block_scale_dtype").set_value("e8m0").run()
    no_exception(at)
    fig = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("3-bit grid, one e8m0 scale"))
    reach = fig["data"][3]["y"]
    assert len(reach) == 256 and len(set(reach)) <= 32  # one range per block of 8
    assert all(math.log2(r / 3) == round(math.log2(r / 3)) for r in reach)  # e8m0: powers of two times qmax 3
    assert any("4.000 bits per weight" in c.value for c in at.caption)  # 3 + one 8-bit scale per 8 weights


def test_float_elements_curve_has_the_formats_levels(make_app, no_exception, figures):
    at = make_app("learn")
    at.segmented_control(key="learn_fp_format").set_value("fp4_e2m1").run()
    no_exception(at)
    fig = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("FP4 E2M1"))
    levels = sorted(set(fig["data"][1]["y"]))
    assert len(levels) == 15  # E2M1: ±{0.5, 1, 1.5, 2, 3, 4, 6} and 0
    top = max(levels)
    assert [round(v / top * 6, 6) for v in levels if v > 0] == [0.5, 1, 1.5, 2, 3, 4, 6]
