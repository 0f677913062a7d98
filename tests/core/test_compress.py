"""compress(): out-of-place, prune-then-quantize order, overrides, activations, repair and fine-tuning."""
import pytest
import torch
from torch import nn

from compression_core.compress import compress, compress_weight
from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    ).eval()


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


CONFIGS = [
    CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.5)),
    CompressionConfig(quant=QuantSpec(bits=3, scheme="asym", granularity="tensor", range="mse"),
                      prune=PruneSpec(0.7, scope="global")),
    CompressionConfig(quant=QuantSpec(bits=4, quantizer="kmeans"), prune=PruneSpec(0.6, method="random")),
    CompressionConfig(quant=QuantSpec(bits=5, quantizer="pow2"), prune=PruneSpec(0.5, method="structured")),
    CompressionConfig(quant=QuantSpec(quantizer="fp16"), prune=PruneSpec(method="nm", n=2, m=4)),
    CompressionConfig(quant=QuantSpec(bits=8, range="percentile", percentile=99.0),
                      prune=PruneSpec(0.5, method="taylor"), act_bits=8, bias_correction=True, finetune_steps=3),
    CompressionConfig(quant=QuantSpec(bits=3, granularity="group", group_size=16), prune=PruneSpec(0.5),
                      repair="gptq", act_order=True, bias_correction=True),
    CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.5), repair="awq", act_bits=8, bias_correction=True,
                      finetune_steps=2),
    CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.3), repair="smoothquant", act_bits=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
def test_input_model_is_bit_identical_and_zeros_stay_zero(config, calib):
    model = small_cnn()
    before = snapshot(model)
    cm = compress(model, config, calib=calib)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cm.model is not model
    for name, layer in cm.layers.items():
        live = dict(cm.model.named_modules())[name].weight
        assert torch.equal(live, layer.weight)
        if layer.mask is not None:
            assert (layer.weight[~layer.mask] == 0).all(), name
            assert layer.mask.shape == layer.weight.shape


def test_exact_counts_and_bits_after_prune_then_quantize():
    model = small_cnn()
    cm = compress(model, CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.75)))
    for name, layer in cm.layers.items():
        n = layer.n
        assert layer.nnz == n - round(0.75 * n), name
        # survivors sit on the 4-bit symmetric grid of their channel
        q = layer.codes
        assert q.min() >= -7 and q.max() <= 7
        recon = q.float() * layer.scale.view(-1, *[1] * (layer.weight.dim() - 1))
        torch.testing.assert_close(recon, layer.weight, rtol=0, atol=1e-6)
    assert cm.realized_sparsity == pytest.approx(sum(round(0.75 * l.n) for l in cm.layers.values()) / cm.n_weights)


def test_overrides_skip_and_mixed_precision():
    model = small_cnn()
    config = CompressionConfig(quant=QuantSpec(bits=2), prune=PruneSpec(0.5),
                               overrides=(LayerOverride("0", skip=True),
                                          LayerOverride("7", quant=QuantSpec(bits=8), prune=PruneSpec(0.0))))
    cm = compress(model, config)
    assert cm.layers["0"].skipped and torch.equal(cm.layers["0"].weight, model[0].weight)
    assert cm.layers["7"].quant.bits == 8 and cm.layers["7"].mask is None
    assert cm.layers["5"].quant.bits == 2 and cm.layers["5"].sparsity == pytest.approx(0.5, abs=1e-3)


def test_unknown_override_and_missing_calibration_are_clear_errors():
    with pytest.raises(ValueError, match="override names no compressible layer"):
        compress(small_cnn(), CompressionConfig(overrides=(LayerOverride("nope", skip=True),)))
    with pytest.raises(ValueError, match="calibration data"):
        compress(small_cnn(), CompressionConfig(act_bits=8))


def test_nan_weights_are_refused():
    model = small_cnn()
    with torch.no_grad():
        model[5].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        compress(model, CompressionConfig(quant=QuantSpec(bits=4)))


def test_activation_quantization_changes_outputs_and_is_calibrated(calib):
    model = small_cnn()
    weights_only = compress(model, CompressionConfig(quant=QuantSpec(bits=8)))
    with_acts = compress(model, CompressionConfig(quant=QuantSpec(bits=8), act_bits=2), calib=calib)
    assert set(with_acts.act_qparams) == set(with_acts.layers)
    x = calib[0][:32]
    with torch.no_grad():
        diff = (with_acts.model(x) - weights_only.model(x)).abs().max()
    assert diff > 1e-3
    scale, zp, qmin, qmax = with_acts.act_qparams["0"]
    assert (qmin, qmax) == (0, 3) and scale > 0


def test_bias_correction_cancels_mean_output_error(calib):
    model = small_cnn()
    x = calib[0]
    plain = compress(model, CompressionConfig(quant=QuantSpec(bits=2, granularity="tensor")))
    fixed = compress(model, CompressionConfig(quant=QuantSpec(bits=2, granularity="tensor"), bias_correction=True),
                     calib=calib)
    with torch.no_grad():
        ref = model[0](x).mean(dim=(0, 2, 3))
        err_plain = (plain.model[0](x).mean(dim=(0, 2, 3)) - ref).abs().max()
        err_fixed = (fixed.model[0](x).mean(dim=(0, 2, 3)) - ref).abs().max()
    assert err_fixed < 1e-4 < err_plain


def test_finetune_keeps_masks_and_logs_loss(calib):
    model = small_cnn()
    steps = 5
    cm = compress(model, CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.8), finetune_steps=steps),
                  calib=calib)
    assert [s for s, _ in cm.finetune_log] == list(range(1, steps + 1))
    plain = compress(model, CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.8)))
    for name, layer in cm.layers.items():
        assert torch.equal(layer.mask, plain.layers[name].mask)
        assert (layer.weight[~layer.mask] == 0).all()
    assert any(not torch.equal(cm.layers[n].weight, plain.layers[n].weight) for n in cm.layers)
    assert not cm.model.training


@pytest.mark.parametrize("quant, prune", [
    (QuantSpec(bits=3), PruneSpec(sparsity=0.6)),
    (QuantSpec(bits=4, quantizer="kmeans"), PruneSpec(method="nm", n=2, m=4)),
    (QuantSpec(bits=2, scheme="asym", granularity="tensor"), PruneSpec(sparsity=0.3, method="random")),
])
def test_compress_weight_is_the_per_layer_step_of_compress(quant, prune):
    model = small_cnn()
    before = snapshot(model)
    cm = compress(model, CompressionConfig(quant=quant, prune=prune))
    for name, layer in cm.layers.items():
        weight = before[f"{name}.weight"]
        kept = weight.clone()
        alone = compress_weight(weight, quant, prune, name=name)
        assert torch.equal(alone.weight, layer.weight) and torch.equal(alone.mask, layer.mask)
        assert torch.equal(alone.codes, layer.codes) and alone.nnz == layer.nnz
        assert torch.equal(weight, kept)  # out of place


def test_compress_weight_keeps_a_given_mask_and_zeros():
    weight = torch.linspace(-1, 1, 24).reshape(4, 6)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    layer = compress_weight(weight, QuantSpec(bits=4), PruneSpec(sparsity=0.9), mask=mask)
    assert torch.equal(layer.mask, mask) and layer.nnz == int(mask.sum())
    assert torch.all(layer.weight[~mask] == 0) and layer.codes is not None
