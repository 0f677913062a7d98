"""The Sweep form's grid crosses number formats with group sizes; block-only formats keep their blocks."""
from dashboard import services


def test_sweep_grid_crosses_formats_and_group_sizes():
    configs, problems = services.sweep_grid([4, "nf4", "mxfp4", "fp8_e4m3"], [0.0], ["uniform"], ["magnitude"],
                                            scheme="sym", granularity="group", range_method="minmax", scope="layer",
                                            group_sizes=[32, 128])
    assert problems == []
    got = sorted((c.quant.quantizer, c.quant.granularity, c.quant.group_size) for c in configs)
    assert got == [("fp8_e4m3", "group", 32), ("fp8_e4m3", "group", 128), ("mxfp4", "group", 32),
                   ("nf4", "group", 32), ("nf4", "group", 128), ("uniform", "group", 32), ("uniform", "group", 128)]


def test_sweep_grid_crosses_repair_and_skips_what_does_not_apply():
    configs, problems = services.sweep_grid([3, 32, "nf4"], [0.0], ["uniform"], ["magnitude"], scheme="sym",
                                            granularity="channel", range_method="minmax", scope="layer",
                                            repairs=["none", "gptq", "awq"])
    got = sorted((c.quant.quantizer, c.quant.bits, c.repair) for c in configs)
    assert got == [("nf4", 4, "awq"), ("nf4", 4, "none"), ("uniform", 3, "awq"), ("uniform", 3, "gptq"),
                   ("uniform", 3, "none"), ("uniform", 32, "none")]  # fp32: nothing to repair, one config
    assert len(problems) == 1 and "repair gptq needs quantizer uniform" in problems[0]
    assert problems[0].startswith("4-bit nf4 with gptq: ") and "combination" not in problems[0]


def test_sweep_grid_skips_a_bit_width_in_one_line_whatever_the_sparsities():
    configs, problems = services.sweep_grid([1, 4], [0.0, 0.5, 0.9], ["uniform"], ["magnitude"], scheme="sym",
                                            granularity="channel", range_method="minmax", scope="layer")
    assert sorted((c.quant.bits, c.prune.sparsity) for c in configs) == [(4, 0.0), (4, 0.5), (4, 0.9)]
    assert problems == [problems[0]] and problems[0].startswith("1-bit uniform: bits=1 needs scheme asym")


def test_sweep_grid_per_tensor_skips_nothing_and_keeps_format_defaults():
    configs, problems = services.sweep_grid(["nf4", "mxfp8", "fp6_e2m3"], [0.0, 0.5], ["uniform"], ["magnitude"],
                                            scheme="sym", granularity="tensor", range_method="minmax", scope="layer")
    assert problems == []
    specs = {(c.quant.quantizer, c.quant.granularity, c.quant.group_size) for c in configs}
    assert specs == {("nf4", "group", 64), ("mxfp8", "group", 32), ("fp6_e2m3", "tensor", None)}
    assert len(configs) == 6


def test_pareto_legend_keeps_formats_of_one_width_apart():
    from compression_core.config import CompressionConfig, QuantSpec
    from dashboard.charts import sweep as charts
    from tests.dashboard.test_sweep_charts import fake_record

    records = [fake_record(8, 0.0), fake_record(4, 0.0)]
    for quantizer in ("mxfp8", "fp8_e4m3", "mxfp4", "nf4"):
        config = CompressionConfig(quant=QuantSpec(quantizer=quantizer))
        records.append({**fake_record(config.quant.bits, 0.0), "quantizer": quantizer, "config": config.to_dict(),
                        "config_hash": config.config_hash, "label": config.label})
    fig = charts.pareto_figure(charts.results_frame(records))
    configs = [t for t in fig.data if (t.meta or {}).get("role") == "configs"]
    assert [t.name for t in configs] == ["4-bit", "MXFP4 (4-bit)", "NF4 (4-bit)", "8-bit", "FP8 E4M3 (8-bit)",
                                         "MXFP8 (8-bit)"]
    assert len({t.marker.color for t in configs}) == 6 and all(len(t.x) == 1 for t in configs)
