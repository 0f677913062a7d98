"""Calibrated repair: GPTQ never loses to round-to-nearest on a layer's held-out output and wins end to end at 3
bits; AWQ / SmoothQuant leave the fp32 function unchanged before rounding; config, CLI and export round trip."""
import pytest
import torch
from torch import nn

from compression_core.compress import compress
from compression_core.compressed import compressible_layers
from compression_core.config import CompressionConfig, ConfigError, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.export import export, load_exported
from compression_core.models import load_model
from compression_core.models.loading import build_architecture
from compression_core.quantize import quantize_weight
from compression_core.repair_gptq import gptq_weight, layer_hessians
from compression_core.repair_scaling import input_stats, linear_part, scale_inputs
from compression_core.size import size_report

SPECS = [QuantSpec(bits=3), QuantSpec(bits=4), QuantSpec(bits=3, granularity="group", group_size=32),
         QuantSpec(bits=4, scheme="asym", granularity="group", group_size=64, scale_dtype="fp16")]


def _split(dataset, n_calib=512, n_held=256):
    data = load_dataset(dataset)
    g = torch.Generator().manual_seed(0)
    train, test = data.split("train")[0], data.split("test")[0]
    return train[torch.randperm(len(train), generator=g)[:n_calib]], test[:n_held]


def _layer_inputs(model, module, x):
    got = []
    h = module.register_forward_pre_hook(lambda _, inp: got.append(inp[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return torch.cat(got)


@pytest.mark.parametrize("model_name, dataset", [("lenet5", "mnist"), ("digits-cnn", "digits"),
                                                 ("mnist1d-cnn", "mnist1d"), ("resnet20", "fashion-mnist"),
                                                 ("mobilenet-s", "fashion-mnist"), ("vit-tiny", "mnist")])
def test_gptq_layer_error_on_held_out_inputs_is_at_most_rtn(model_name, dataset):
    model = load_model(model_name, dataset=dataset).model.eval()
    calib, held = _split(dataset)
    layers = compressible_layers(model)
    for name, module in layers:
        hessians = layer_hessians(model, module, calib)
        x = _layer_inputs(model, module, held)
        with torch.no_grad():
            reference = linear_part(module, x)
            for spec in SPECS:
                w = module.weight.detach()
                rtn = quantize_weight(w, spec).weight
                gptq = gptq_weight(w, hessians, spec).weight
                err_rtn = (linear_part(module, x, rtn) - reference).pow(2).mean()
                err_gptq = (linear_part(module, x, gptq) - reference).pow(2).mean()
                assert err_gptq <= err_rtn * 1.0001 + 1e-12, (name, spec, float(err_gptq), float(err_rtn))
    assert len(layers) >= 4


def test_gptq_stays_on_the_rtn_grid_keeps_pruned_zeros_and_handles_depthwise():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")  # depthwise, non-zero padding
    x = torch.randn(64, 8, 6, 6)
    hessians = layer_hessians(conv, conv, x)
    assert len(hessians) == 8 and hessians[0].shape == (9, 9)
    mask = torch.rand_like(conv.weight) > 0.3
    spec = QuantSpec(bits=3, scheme="asym")
    rtn, q = quantize_weight(conv.weight, spec, mask), gptq_weight(conv.weight.detach(), hessians, spec, mask)
    assert torch.equal(q.scale, rtn.scale) and torch.equal(q.zero_point, rtn.zero_point)
    assert (q.weight[~mask] == 0).all() and (q.codes[~mask] == rtn.zero_point[:, None, None, None].expand_as(
        q.codes)[~mask]).all()
    decoded = (q.codes - rtn.zero_point[:, None, None, None]).float() * rtn.scale[:, None, None, None]
    assert torch.equal(torch.where(mask, decoded, torch.zeros_like(decoded)), q.weight)
    assert not torch.equal(q.weight, rtn.weight)  # it did move some weights to other grid points


@pytest.mark.parametrize("model_name, dataset, margin", [("lenet5", "mnist", 0.0005), ("digits-cnn", "digits", 0.01)])
def test_gptq_beats_rtn_accuracy_at_3_bits(model_name, dataset, margin):
    """Measured on the full test split: lenet5/mnist RTN 0.9912 vs GPTQ 0.9925; digits-cnn RTN 0.9832 vs 0.9966."""
    from compression_core.experiment import Experiment
    exp = Experiment(load_model(model_name, dataset=dataset), load_dataset(dataset))
    rtn = exp.run(CompressionConfig(quant=QuantSpec(bits=3)))
    gptq = exp.run(CompressionConfig(quant=QuantSpec(bits=3), repair="gptq"))
    assert gptq["accuracy"] >= rtn["accuracy"] + margin, (gptq["accuracy"], rtn["accuracy"])
    assert gptq["repair"] == "gptq" and gptq["repair_calib_samples"] == 512 and gptq["repair_seconds"] > 0
    assert gptq["size_bytes"] == rtn["size_bytes"]  # the same grid, the same storage
    assert rtn["repair"] == "none" and rtn["repair_seconds"] is None
    assert not any(row["input_scaled"] for row in gptq["layers"])


class UsualNet(nn.Module):
    """A plain module written the usual way: grouped conv, conv1d-free CNN head and a token MLP on 3-D inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv1(x))))  # (N, 8, H, W)
        tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, 8)
        return self.head(torch.relu(self.proj(tokens))).mean(1)


@pytest.mark.parametrize("repair", ["awq", "smoothquant"])
@pytest.mark.parametrize("make", [UsualNet, lambda: build_architecture({"kind": "builtin", "name": "lenet5",
                                                                         "num_classes": 10})])
def test_scaling_leaves_the_fp32_function_unchanged_before_rounding(repair, make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(96, *((3, 8, 8) if isinstance(model, UsualNet) else (1, 28, 28))) * 3
    with torch.no_grad():
        before = model(x)
    config = CompressionConfig(quant=QuantSpec(bits=3), repair=repair, act_bits=8 if repair == "smoothquant" else 32)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    specs = {n: config.for_layer(n) for n in modules}
    scales = scale_inputs(model, modules, specs, {}, config, x)
    with torch.no_grad():
        after = model(x)
    assert set(scales) == set(modules)
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in scales.values())  # it did scale something
    assert torch.allclose(after, before, atol=1e-5, rtol=1e-5), float((after - before).abs().max())


def test_awq_scaled_layers_have_no_more_calibration_error_than_rtn():
    model = load_model("lenet5", dataset="mnist").model.eval()
    calib, _ = _split("mnist", n_calib=128)
    spec = QuantSpec(bits=3)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    stats = input_stats(model, modules, calib, keep=64)
    cm = compress(model, CompressionConfig(quant=spec, repair="awq"), calib=(calib, torch.zeros(len(calib))))
    for name, module in modules.items():
        x = stats[name]["x"]
        with torch.no_grad():
            reference = linear_part(module, x)
            rtn = (linear_part(module, x, quantize_weight(module.weight, spec).weight) - reference).pow(2).mean()
            lc = cm.layers[name]
            s = lc.input_scale.reshape(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 2 else lc.input_scale
            awq = (linear_part(module, x / s, lc.weight) - reference).pow(2).mean()
        assert awq <= rtn * 1.0001 + 1e-12, name


@pytest.mark.parametrize("config", [
    CompressionConfig(quant=QuantSpec(bits=4), repair="awq"),
    CompressionConfig(quant=QuantSpec(bits=8), act_bits=8, repair="smoothquant", alpha=0.7),
    CompressionConfig(quant=QuantSpec(bits=3, granularity="group", group_size=32), repair="gptq", act_order=True),
], ids=lambda c: c.label)
def test_export_round_trip_is_bit_identical_and_counts_the_input_scales(config, tmp_path):
    source = {"kind": "builtin", "name": "lenet5", "num_classes": 10}
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cm = compress(build_architecture(source), config, calib=(x, y))
    written = export(cm, tmp_path / "m.cmpx", source)
    rebuilt, meta = load_exported(tmp_path / "m.cmpx")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))
    report = size_report(cm)
    assert abs(written - report.total_bytes) <= 0.02 * report.total_bytes + 4096
    scaled = [lc for lc in cm.layers.values() if lc.input_scale is not None]
    assert len(scaled) == (0 if config.repair == "gptq" else len(cm.layers))
    extra = sum(ls.meta_bits for ls in report.layers) - sum(
        ls.meta_bits for ls in size_report(_without_scales(cm)).layers)
    assert extra == 32 * sum(lc.input_scale.numel() for lc in scaled)
    assert CompressionConfig.from_dict(meta["config"]) == config


def _without_scales(cm):
    import copy
    plain = copy.copy(cm)
    plain.layers = {n: copy.copy(lc) for n, lc in cm.layers.items()}
    for lc in plain.layers.values():
        lc.input_scale = None
    return plain


def test_repair_fields_keep_old_hashes_and_are_validated():
    plain = CompressionConfig(quant=QuantSpec(bits=4))
    assert "repair" not in plain.to_json() and "alpha" not in plain.to_json() and "act_order" not in plain.to_json()
    assert CompressionConfig(quant=QuantSpec(bits=4), alpha=0.9, act_order=True) == plain  # meaningless: reset
    assert CompressionConfig(repair="gptq").repair == "none"  # nothing rounded, nothing to repair
    gptq = CompressionConfig(quant=QuantSpec(bits=3), repair="gptq", act_order=True)
    assert gptq.label.endswith("· gptq act-order") and CompressionConfig.from_json(gptq.to_json()) == gptq
    sq = CompressionConfig(quant=QuantSpec(bits=8), act_bits=8, repair="smoothquant", alpha=0.25)
    assert sq.label.endswith("· smoothquant α0.25") and '"alpha":0.25' in sq.to_json()
    for kwargs, says in [({"alpha": 1.5, "repair": "smoothquant", "act_bits": 8}, "alpha must be a number in"),
                         ({"alpha": -0.1}, "alpha must be a number in"),
                         ({"repair": "smoothquant"}, "smoothquant is for W8A8: it needs act_bits 8"),
                         ({"repair": "magic"}, "repair must be one of none, gptq, awq, smoothquant")]:
        with pytest.raises(ConfigError, match=says):
            CompressionConfig(quant=QuantSpec(bits=8), **kwargs)
    with pytest.raises(ConfigError, match="repair gptq needs quantizer uniform"):
        CompressionConfig(quant=QuantSpec(bits=4, quantizer="kmeans"), repair="gptq")


def test_gptq_refuses_missing_calibration_and_unhandled_layers_in_one_line():
    config = CompressionConfig(quant=QuantSpec(bits=4), repair="gptq")
    with pytest.raises(ValueError, match="needs calibration data"):
        compress(nn.Sequential(nn.Linear(4, 2)), config)
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="GPTQ cannot handle layer '0' of type nn.Conv3d"):
        compress(net, config, calib=(torch.randn(4, 1, 3, 3, 3), torch.zeros(4)))
    override = CompressionConfig(quant=QuantSpec(bits=4), repair="gptq").with_override(
        __import__("compression_core.config", fromlist=["LayerOverride"]).LayerOverride(
            "0", quant=QuantSpec(bits=4, quantizer="pow2")))
    with pytest.raises(ValueError, match="layer '0' is overridden to pow2"):
        compress(nn.Sequential(nn.Linear(4, 2)), override, calib=(torch.randn(8, 4), torch.zeros(8)))


def _parse(*argv):
    import argparse

    from compression_core.cli_flags import add_config_flags, configs_from_args
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return configs_from_args(p.parse_args(list(argv)))


def test_sweep_flags_cross_repair():
    configs = _parse("--bits", "3,4", "--repair", "none,gptq,awq", "--act-order")
    assert {(c.quant.bits, c.repair, c.act_order) for c in configs} == {
        (b, r, r == "gptq") for b in (3, 4) for r in ("none", "gptq", "awq")}
    (sq,) = _parse("--bits", "8", "--act-bits", "8", "--repair", "smoothquant", "--alpha", "0.8")
    assert (sq.repair, sq.alpha) == ("smoothquant", 0.8)


@pytest.mark.parametrize("argv, says", [
    (["--bits", "8", "--act-bits", "8", "--repair", "smoothquant", "--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (["--bits", "4", "--alpha", "0.5"], "--alpha only applies to --repair smoothquant"),
    (["--bits", "4", "--act-order"], "--act-order only applies to --repair gptq"),
    (["--bits", "4", "--quantizer", "kmeans", "--repair", "gptq"], "repair gptq needs quantizer uniform"),
])
def test_cli_exits_2_with_one_line(argv, says, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "compression_core", "evaluate", "--model", "digits-cnn", *argv,
                        "--store", str(tmp_path / "s.sqlite")], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in lines[0]


def test_safetensors_of_a_scaled_model_works_in_the_plain_architecture(tmp_path):
    from safetensors.torch import load_file

    from compression_core.interop import export_safetensors
    source = {"kind": "builtin", "name": "lenet5", "num_classes": 10}
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28) * 2
    cm = compress(build_architecture(source), CompressionConfig(quant=QuantSpec(bits=4), repair="awq"),
                  calib=(x, torch.zeros(64)))
    export_safetensors(cm, tmp_path / "m.safetensors")
    plain = build_architecture(source).eval()
    plain.load_state_dict(load_file(tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.allclose(plain(x), cm.model(x), atol=1e-5)


def test_gptq_leaves_skipped_layers_alone_and_prunes_before_rounding():
    from compression_core.config import LayerOverride, PruneSpec
    model = build_architecture({"kind": "builtin", "name": "lenet5", "num_classes": 10})
    names = [n for n, _ in compressible_layers(model)]
    config = CompressionConfig(quant=QuantSpec(bits=3), prune=PruneSpec(0.5), repair="gptq").with_override(
        LayerOverride(names[1], skip=True))
    torch.manual_seed(0)
    cm = compress(model, config, calib=(torch.randn(64, 1, 28, 28), torch.zeros(64)))
    assert cm.layers[names[1]].skipped and torch.equal(cm.layers[names[1]].weight,
                                                       model.get_submodule(names[1]).weight)
    for name in (names[0], names[2]):
        lc = cm.layers[name]
        assert lc.sparsity == 0.5 and (lc.weight[~lc.mask] == 0).all()
        assert lc.codes.abs().max() <= 3 and torch.equal(lc.weight, lc.codes.float() * lc.scale.reshape(
            -1, *([1] * (lc.weight.dim() - 1))))


@pytest.mark.parametrize("repair", ["gptq", "awq"])
def test_repair_on_a_dataset_without_train_split_is_one_line(repair, tmp_path, monkeypatch):
    from compression_core.experiment import Experiment, ExperimentError
    from compression_core.datasets import load_dataset as load
    from tests.core.test_datasets import _write_images

    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "decoded"))
    _write_images(tmp_path / "imgs", {"a": 3, "b": 2}, "L", size=(8, 8))
    data = load(f"imagefolder:{tmp_path}/imgs", transform="none")
    exp = Experiment(load_model("tests.core.byo_model:tiny_mlp", num_classes=2), data)
    with pytest.raises(ExperimentError, match="no train split to calibrate on; this config needs one .*repair"):
        exp.run(CompressionConfig(quant=QuantSpec(bits=4), repair=repair))


def test_gptq_names_a_layer_the_forward_never_calls_and_counts_repeated_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.shared(torch.relu(self.shared(x)))

    net, x = Twice(), torch.randn(32, 4)
    (h,) = layer_hessians(net, net.shared, x)  # both calls of every sample count
    inner = torch.relu(net.shared(x)).detach()
    expected = 2 * (x.T @ x + inner.T @ inner) / 64
    assert torch.allclose(h, expected, atol=1e-5)
    with pytest.raises(ValueError, match="GPTQ: layer 'unused' never ran on the calibration data"):
        compress(net, CompressionConfig(quant=QuantSpec(bits=4), repair="gptq"), calib=(x, torch.zeros(32)))


def test_awq_record_counts_the_input_scales_in_the_size():
    from compression_core.experiment import Experiment
    exp = Experiment(load_model("digits-cnn", dataset="digits"), load_dataset("digits"), limit=100)
    rtn = exp.run(CompressionConfig(quant=QuantSpec(bits=4)))
    awq = exp.run(CompressionConfig(quant=QuantSpec(bits=4), repair="awq"))
    channels = sum(m.in_features if isinstance(m, nn.Linear) else m.in_channels
                   for _, m in compressible_layers(exp.model))
    assert all(row["input_scaled"] for row in awq["layers"]) and awq["repair_calib_samples"] == 512
    assert awq["size_bytes"] - rtn["size_bytes"] == 4 * channels  # one float32 per input channel, nothing else
