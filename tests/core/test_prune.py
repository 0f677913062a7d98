"""Pruning masks: exact counts, N:M patterns, whole channels, tie-breaking, determinism, Taylor scores."""
import doctest
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from compression_core import prune as P
from compression_core.config import ConfigError, PruneSpec

SHAPES = [(7,), (13, 11), (5, 3, 3, 3), (8, 4, 5), (300, 100)]
SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.55, 0.9, 0.99]


def _w(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_magnitude_exact_count_and_smallest_removed(shape, sparsity):
    w = _w(shape)
    mask = P.magnitude_mask(w, sparsity)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if 0 < int((~mask).sum()) < w.numel():
        assert float(w[~mask].abs().max()) <= float(w[mask].abs().min())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_magnitude_equals_stable_sort_with_ties(sparsity):
    w = torch.round(_w((40, 30)) * 2) / 2  # many equal magnitudes, both signs
    k = round(sparsity * w.numel())
    order = torch.sort(w.abs().flatten(), stable=True).indices
    expected = torch.ones(w.numel(), dtype=torch.bool)
    expected[order[:k]] = False
    assert torch.equal(P.magnitude_mask(w, sparsity).flatten(), expected)


def test_ties_removed_by_flat_index():
    mask = P.magnitude_mask(torch.ones(2, 5), 0.3)
    assert mask.flatten().tolist() == [False, False, False] + [True] * 7
    assert P.score_mask(torch.tensor([2.0, 1.0, 1.0, 1.0]), 0.5).tolist() == [True, False, False, True]


def test_half_counts_use_python_round():
    assert P.prune_count(0.5, 5) == 2 and P.prune_count(0.5, 7) == 4  # half to even
    assert int((~P.magnitude_mask(_w((5,)), 0.5)).sum()) == 2
    with pytest.raises(ConfigError, match="sparsity"):
        P.prune_count(1.5, 10)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_random_exact_count_and_determinism(shape, sparsity):
    w = _w(shape)
    a = P.random_mask(w, sparsity, torch.Generator().manual_seed(3))
    b = P.random_mask(w, sparsity, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert int((~a).sum()) == round(sparsity * w.numel())


def test_random_differs_between_seeds_and_ignores_values():
    w = _w((300, 100))
    a = P.random_mask(w, 0.5, torch.Generator().manual_seed(1))
    b = P.random_mask(w, 0.5, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert torch.equal(a, P.random_mask(-w, 0.5, torch.Generator().manual_seed(1)))
    # roughly uniform: each half of the tensor loses about half its weights
    assert abs(int((~a[:150]).sum()) - 7500) < 500


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(13, 11), (10, 3, 3, 3), (9, 4, 5)])
def test_structured_removes_whole_channels(shape, sparsity, norm):
    w = _w(shape)
    mask = P.structured_mask(w, sparsity, norm)
    per_channel = mask.reshape(shape[0], -1)
    assert torch.all(per_channel.all(1) | (~per_channel).all(1))  # each channel all kept or all removed
    removed = (~per_channel).all(1)
    assert int(removed.sum()) == round(sparsity * shape[0])
    norms = torch.linalg.vector_norm(w.reshape(shape[0], -1), ord=norm, dim=1)
    if 0 < int(removed.sum()) < shape[0]:
        assert float(norms[removed].max()) <= float(norms[~removed].min())


def test_structured_l1_and_l2_rank_differently():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.5, 0.0, 0.0, 0.0]])  # L1: 4 vs 2.5; L2: 2 vs 2.5
    assert P.structured_mask(w, 0.5, 1)[1].tolist() == [False] * 4
    assert P.structured_mask(w, 0.5, 2)[0].tolist() == [False] * 4


def _check_groups(magnitude, kept, expected):
    """(C, G, g) groups: exactly `expected` kept per group, and they are the largest of their group."""
    assert torch.all(kept.sum(-1) == expected)
    smallest_kept = torch.where(kept, magnitude, math.inf).min(-1).values
    largest_removed = torch.where(~kept, magnitude, -math.inf).max(-1).values
    assert torch.all(largest_removed <= smallest_kept)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 5)])
@pytest.mark.parametrize("shape", [(16, 64), (6, 8, 3, 3), (5, 40)])
def test_nm_pattern_per_group(shape, n, m):
    w = _w(shape)
    mask = P.nm_mask(w, n, m)
    rows, keep = w.reshape(shape[0], -1).abs(), mask.reshape(shape[0], -1)
    full = rows.shape[1] - rows.shape[1] % m
    _check_groups(rows[:, :full].reshape(shape[0], -1, m), keep[:, :full].reshape(shape[0], -1, m), n)
    rest = rows.shape[1] - full
    if rest:  # (6, 8, 3, 3) has 72 inputs per channel: a tail group for m = 5
        _check_groups(rows[:, None, full:], keep[:, None, full:], math.ceil(n * rest / m))
    else:
        assert int(mask.sum()) == w.numel() * n // m


def test_nm_partial_group_and_ties():
    w = torch.ones(2, 6)  # 2:4 -> one full group keeps 2, the tail of 2 keeps ceil(2 * 2 / 4) = 1
    assert P.nm_mask(w, 2, 4)[0].tolist() == [False, False, True, True, False, True]
    with pytest.raises(ConfigError, match="N:M"):
        P.nm_mask(w, 4, 4)


@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9, 0.95])
def test_global_exact_total_count(sparsity):
    scores = {"a": _w((13, 11), 1).abs(), "b": _w((5, 3, 3, 3), 2).abs() * 3, "c": _w((7,), 3).abs()}
    masks = P.global_score_masks(scores, sparsity)
    total = sum(s.numel() for s in scores.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    assert all(masks[k].shape == scores[k].shape for k in scores)
    removed = torch.cat([scores[k][~masks[k]] for k in scores])
    kept = torch.cat([scores[k][masks[k]] for k in scores])
    assert float(removed.max()) <= float(kept.min())
    # not layer-wise: the layer with 3x larger scores loses fewer of its weights than the others
    assert (~masks["b"]).float().mean() < (~masks["a"]).float().mean()


def test_global_ties_by_layer_order_then_index():
    masks = P.global_score_masks({"x": torch.ones(3), "y": torch.ones(3)}, 4 / 6)
    assert masks["x"].tolist() == [False, False, False] and masks["y"].tolist() == [False, True, True]


def test_compute_masks_layer_and_global():
    weights = {"fc1": _w((30, 20), 1), "fc2": _w((20, 30), 2), "fc3": _w((10, 20), 3)}
    glob = PruneSpec(sparsity=0.6, scope="global")
    specs = {"fc1": glob, "fc2": glob, "fc3": PruneSpec(sparsity=0.3)}
    masks = P.compute_masks(weights, specs)
    assert sum(int((~masks[k]).sum()) for k in ("fc1", "fc2")) == round(0.6 * 1200)
    assert int((~masks["fc3"]).sum()) == 60
    assert torch.equal(masks["fc3"], P.magnitude_mask(weights["fc3"], 0.3))
    assert torch.equal(masks["fc1"], P.global_score_masks({k: weights[k].abs() for k in ("fc1", "fc2")}, 0.6)["fc1"])


def test_compute_masks_every_method_and_disabled_layers():
    weights = {"a": _w((8, 16), 1), "b": _w((8, 16), 2), "c": _w((8, 16), 3), "d": _w((8, 16), 4),
               "e": _w((8, 16), 5), "f": _w((8, 16), 6)}
    specs = {
        "a": PruneSpec(sparsity=0.5, method="random"),
        "b": PruneSpec(sparsity=0.25, method="structured", norm=2),
        "c": PruneSpec(method="nm", n=1, m=4),
        "d": PruneSpec(sparsity=0.5, method="taylor"),
        "e": PruneSpec(sparsity=0.0),  # not enabled
    }
    taylor = {"d": _w((8, 16), 7).abs()}
    masks = P.compute_masks(weights, specs, calibration=taylor, seed=5)
    assert masks["e"] is None and masks["f"] is None
    assert int((~masks["a"]).sum()) == 64
    assert torch.equal(masks["b"], P.structured_mask(weights["b"], 0.25, 2))
    assert torch.equal(masks["c"], P.nm_mask(weights["c"], 1, 4))
    assert torch.equal(masks["d"], P.score_mask(taylor["d"], 0.5))
    again = P.compute_masks(weights, specs, calibration=taylor, seed=5)
    assert all(torch.equal(masks[k], again[k]) for k in "abcd")
    assert not torch.equal(masks["a"], P.compute_masks(weights, specs, calibration=taylor, seed=6)["a"])
    # a layer's random mask does not depend on which other layers are pruned
    alone = P.compute_masks({"a": weights["a"]}, {"a": specs["a"]}, seed=5)
    assert torch.equal(alone["a"], masks["a"])
    with pytest.raises(ConfigError, match="taylor"):
        P.compute_masks(weights, specs, seed=5)


@pytest.mark.parametrize("method", ["random", "taylor"])
def test_compute_masks_global_random_and_taylor(method):
    weights = {"a": _w((30, 20), 1), "b": _w((10, 30), 2)}
    taylor = {"a": _w((30, 20), 3).abs(), "b": _w((10, 30), 4).abs() * 10}
    spec = PruneSpec(sparsity=0.7, method=method, scope="global")
    masks = P.compute_masks(weights, {"a": spec, "b": spec}, calibration=taylor, seed=1)
    assert int((~masks["a"]).sum()) + int((~masks["b"]).sum()) == round(0.7 * 900)
    again = P.compute_masks(weights, {"a": spec, "b": spec}, calibration=taylor, seed=1)
    assert torch.equal(masks["a"], again["a"]) and torch.equal(masks["b"], again["b"])
    if method == "taylor":
        assert torch.equal(masks["b"], P.global_score_masks(taylor, 0.7)["b"])


def _digits_mlp():
    digits = load_digits()
    x = torch.tensor(digits.data[:256], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:256], dtype=torch.int64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    return net, x, y


def test_taylor_scores_match_manual_and_leave_model_untouched():
    net, x, y = _digits_mlp()
    net[2].bias.requires_grad_(False)  # a flag the function must restore
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    scores = P.taylor_scores(net, ["0", "2"], x, y, batches=3, batch_size=64)
    assert scores["0"].shape == (32, 64) and scores["2"].shape == (10, 32)
    assert all(torch.all(s >= 0) and s.sum() > 0 for s in scores.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert not net.training

    expected = torch.zeros(32, 64)
    for b in range(3):
        net.zero_grad()
        loss = nn.functional.cross_entropy(net(x[b * 64:(b + 1) * 64]), y[b * 64:(b + 1) * 64])
        grad, = torch.autograd.grad(loss, [net[0].weight])
        expected += (net[0].weight.detach() * grad).abs()
    torch.testing.assert_close(scores["0"], expected)


def test_taylor_scores_under_inference_mode_and_short_data():
    net, x, y = _digits_mlp()
    with torch.inference_mode():
        x_inf = x[:100].clone()
        scores = P.taylor_scores(net, ["2"], x_inf, y[:100], batches=10, batch_size=64)  # runs 2 batches
    assert scores["2"].shape == (10, 32) and float(scores["2"].sum()) > 0
    with pytest.raises(ConfigError, match="nope"):
        P.taylor_scores(net, ["nope"], x, y, batches=1, batch_size=8)


def test_docstring_examples():
    assert doctest.testmod(P, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
