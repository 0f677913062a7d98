"""Histograms on shared bins, per-channel ranges, grid levels and pruning thresholds of real compressed layers."""
import pytest
import torch
from torch import nn

from compression_core.compress import compress
from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec
from compression_core.histograms import MAX_LEVELS, channel_ranges, grid_levels, weight_histograms


def net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(torch.linspace(0.2, 3.0, 8)[:, None])  # channels of very different ranges
    return model


def layer(config: CompressionConfig, name: str = "0"):
    model = net()
    return model, compress(model, config).layers[name]


# ---- histograms ------------------------------------------------------------------------------------
def test_hand_made_histogram_shares_edges():
    h = weight_histograms(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]), bins=2)
    assert h.edges == (-1.0, 0.0, 1.0)
    assert h.before == (1, 2) and h.after == (0, 3)  # a value on an inner edge counts in the right-hand bin
    z = weight_histograms(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]), bins=2, hide_zeros=True)
    assert z.before == (1, 1) and z.after == (0, 1)
    assert (z.hidden_zeros_before, z.hidden_zeros_after) == (1, 2)


def test_histogram_counts_add_up_and_span_both():
    before = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    after = torch.where(before.abs() > 0.5, (before * 4).round() / 4, torch.zeros(()))
    h = weight_histograms(before, after, bins=40, hide_zeros=True)
    assert len(h.edges) == 41 and len(h.before) == len(h.after) == 40
    assert sum(h.before) + h.hidden_zeros_before == before.numel()
    assert sum(h.after) + h.hidden_zeros_after == after.numel()
    assert h.hidden_zeros_after == int((after == 0).sum())
    nz = torch.cat([before.flatten(), after[after != 0]])
    assert h.edges[0] == pytest.approx(float(nz.min())) and h.edges[-1] == pytest.approx(float(nz.max()))
    frame = h.to_frame()
    assert list(frame.columns) == ["left", "right", "center", "before", "after"] and len(frame) == 40
    assert int(frame["after"].sum()) == sum(h.after)


def test_histogram_of_constant_or_all_zero_tensors():
    h = weight_histograms(torch.zeros(10), torch.zeros(10), bins=4)
    assert h.edges[0] == -0.5 and h.edges[-1] == 0.5 and sum(h.before) == 10
    hidden = weight_histograms(torch.zeros(10), torch.zeros(10), bins=4, hide_zeros=True)
    assert sum(hidden.before) == 0 and hidden.hidden_zeros_before == 10
    with pytest.raises(ValueError, match="bins"):
        weight_histograms(torch.zeros(2), torch.zeros(2), bins=0)


def test_channel_ranges_exact():
    w = torch.tensor([[[-1.0, 2.0]], [[0.5, -3.0]], [[0.0, 0.25]]])  # (3, 1, 2)
    df = channel_ranges(w)
    assert df["channel"].tolist() == [0, 1, 2]
    assert df["min"].tolist() == [-1.0, -3.0, 0.0]
    assert df["max"].tolist() == [2.0, 0.5, 0.25]
    assert df["absmax"].tolist() == [2.0, 3.0, 0.25]


# ---- grid levels -------------------------------------------------------------------------------------
def test_per_tensor_uniform_levels_hold_every_weight():
    _, lc = layer(CompressionConfig(quant=QuantSpec(bits=3, granularity="tensor")))
    g = grid_levels(lc)
    assert len(g.levels) == 7 and g.channel is None  # sym 3-bit: q in [-3, 3]
    assert g.levels == tuple(sorted(g.levels)) and 0.0 in g.levels
    assert g.clip == (g.levels[0], g.levels[-1])
    levels = torch.tensor(g.levels, dtype=torch.float64)
    assert ((lc.weight.double().flatten()[:, None] - levels).abs().min(dim=1).values < 1e-6).all()


def test_per_channel_levels_of_the_widest_channel_and_clip_envelope():
    _, lc = layer(CompressionConfig(quant=QuantSpec(bits=4, scheme="asym", granularity="channel")))
    g = grid_levels(lc)
    assert g.channel == int(lc.scale.argmax()) == 7  # the channel scaled by 3.0
    assert len(g.levels) == 16
    levels = torch.tensor(g.levels, dtype=torch.float64)
    row = lc.weight[g.channel].double()
    assert ((row[:, None] - levels).abs().min(dim=1).values < 1e-6).all()
    assert g.clip[0] <= float(lc.weight.min()) and g.clip[1] >= float(lc.weight.max())


def test_codebook_levels_and_no_grid_cases():
    _, km = layer(CompressionConfig(quant=QuantSpec(bits=2, quantizer="kmeans")))
    g = grid_levels(km)
    assert 1 <= len(g.levels) <= 4 and set(km.weight.unique().tolist()) <= set(g.levels)
    for config in (CompressionConfig(), CompressionConfig(quant=QuantSpec(bits=16, quantizer="fp16")),
                   CompressionConfig(quant=QuantSpec(bits=4), overrides=(LayerOverride("0", skip=True),))):
        empty = grid_levels(layer(config)[1])
        assert empty.levels == () and empty.clip is None and empty.threshold is None
    wide = grid_levels(layer(CompressionConfig(quant=QuantSpec(bits=16)))[1])
    assert wide.levels == () and wide.clip is not None  # 65535 levels are not worth drawing
    assert MAX_LEVELS >= 255


def test_magnitude_threshold_separates_removed_from_kept():
    model, lc = layer(CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(sparsity=0.75)))
    before = model[0].weight.detach()
    g = grid_levels(lc, before=before)
    removed, kept = before[~lc.mask].abs(), before[lc.mask].abs()
    assert g.threshold == pytest.approx(float(removed.max()))
    assert g.threshold <= float(kept.min())
    assert grid_levels(lc).threshold is None  # needs the original weight
    _, rnd = layer(CompressionConfig(prune=PruneSpec(sparsity=0.5, method="random")))
    assert grid_levels(rnd, before=before).threshold is None


def test_hide_zeros_with_a_pruned_mask_keeps_the_rounded_zeros():
    before = torch.tensor([-0.9, -0.05, 0.02, 0.6, 0.01, -0.3])
    after = torch.tensor([-1.0, 0.0, 0.0, 0.5, 0.0, -0.5])  # 0.02 and 0.01 pruned; -0.05 rounded to 0
    pruned = torch.tensor([False, False, True, False, True, False])
    h = weight_histograms(before, after, bins=4, hide_zeros=True, pruned=pruned)
    assert h.hidden_zeros_after == 2 and sum(h.after) == 4  # the rounded zero is still counted
    assert h.hidden_zeros_before == 0 and sum(h.before) == 6
    assert weight_histograms(before, after, bins=4, hide_zeros=True).hidden_zeros_after == 3
