"""Weight / activation quantizers against PyTorch's observers and fake-quant kernels, plus codebook invariants."""
import doctest
import math

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from compression_core import quantize as Q
from compression_core.config import ConfigError, QuantSpec


def _tensors() -> dict[str, torch.Tensor]:
    """Random and realistic weights: Gaussian, a Conv2d / Conv1d init, heavy tails, an all-zero channel."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    heavy = torch.distributions.Laplace(0.0, 0.02).sample((64, 120))
    heavy[3, 7] = 0.9  # an outlier
    zero_row = torch.randn(16, 50, generator=g) * 0.1
    zero_row[5] = 0.0
    positive = torch.rand(12, 30, generator=g) + 0.1  # all > 0: the range must still contain 0
    return {
        "gauss": torch.randn(32, 100, generator=g) * 0.05,
        "conv2d": nn.Conv2d(6, 16, 5).weight.detach().clone(),
        "conv1d": nn.Conv1d(4, 8, 3).weight.detach().clone(),
        "heavy": heavy,
        "zero_row": zero_row,
        "positive": positive,
    }


TENSORS = _tensors()


def _observer(bits: int, scheme: str, granularity: str):
    qmin, qmax = Q.qrange(bits, scheme)
    dtype = torch.qint8 if scheme == "sym" else torch.quint8
    if granularity == "channel":
        qscheme = torch.per_channel_symmetric if scheme == "sym" else torch.per_channel_affine
        return PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    qscheme = torch.per_tensor_symmetric if scheme == "sym" else torch.per_tensor_affine
    return MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)


def _torch_fake_quant(w, scale, zp, qmin, qmax, granularity):
    if granularity == "channel":
        return torch.fake_quantize_per_channel_affine(w, scale.float(), zp.to(torch.int32), 0, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), qmin, qmax)


def test_qrange():
    assert Q.qrange(8, "sym") == (-127, 127)
    assert Q.qrange(8, "asym") == (0, 255)
    assert Q.qrange(2, "sym") == (-1, 1)
    assert Q.qrange(1, "asym") == (0, 1)
    assert Q.qrange(16, "sym") == (-32767, 32767)
    with pytest.raises(ConfigError, match="bits"):
        Q.qrange(1, "sym")
    with pytest.raises(ConfigError, match="scheme"):
        Q.qrange(4, "affine")


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("name", list(TENSORS))
def test_minmax_matches_torch_observer_and_kernel(name, bits, scheme, granularity):
    w = TENSORS[name]
    qmin, qmax = Q.qrange(bits, scheme)
    obs = _observer(bits, scheme, granularity)
    obs(w)
    ref_scale, ref_zp = obs.calculate_qparams()
    scale, zp = Q.choose_qparams(w, bits, scheme, granularity, "minmax")
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == ((w.shape[0],) if granularity == "channel" else (1,))
    assert torch.equal(scale, ref_scale.reshape(scale.shape))
    assert torch.equal(zp, ref_zp.reshape(zp.shape).to(torch.int32))

    ref = _torch_fake_quant(w, ref_scale, ref_zp, qmin, qmax, granularity)
    assert (Q.fake_quantize(w, scale, zp, qmin, qmax) - ref).abs().max() == 0
    # our own integer path agrees with the kernel bit for bit
    codes = Q.quantize_codes(w, scale, zp, qmin, qmax)
    assert codes.dtype == torch.int32 and int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert torch.equal(Q.dequantize_codes(codes, scale, zp), ref)
    spec = QuantSpec(bits=bits, scheme=scheme, granularity=granularity)
    result = Q.quantize_weight(w, spec)
    assert torch.equal(result.weight, ref) and torch.equal(result.codes, codes)
    assert len(torch.unique(codes)) <= 2**bits


@pytest.mark.parametrize("scheme", ["sym", "asym"])
def test_16_bit_and_1_bit_codes_match_kernel(scheme):
    w = TENSORS["gauss"]
    for bits in ([16] if scheme == "sym" else [1, 16]):
        qmin, qmax = Q.qrange(bits, scheme)
        scale, zp = Q.choose_qparams(w, bits, scheme, "channel")
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
        assert torch.equal(Q.dequantize_codes(Q.quantize_codes(w, scale, zp, qmin, qmax), scale, zp), ref)
    assert (Q.quantize_weight(w, QuantSpec(bits=16)).weight - w).abs().max() < 1e-5


def test_range_contains_zero_and_zero_channel_uses_eps():
    scale, zp = Q.choose_qparams(TENSORS["positive"], 8, "asym", "channel")
    assert torch.all(zp == 0)  # lo widened to 0
    scale, zp = Q.choose_qparams(TENSORS["zero_row"], 4, "sym", "channel")
    assert float(scale[5]) == torch.finfo(torch.float32).eps
    assert torch.all(Q.quantize_weight(TENSORS["zero_row"], QuantSpec(bits=4)).weight[5] == 0)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_percentile_matches_torch_quantile(granularity):
    w = TENSORS["heavy"]
    rows = w.reshape(w.shape[0] if granularity == "channel" else 1, -1)
    scale, _ = Q.choose_qparams(w, 8, "sym", granularity, "percentile", 99.0)
    clip = torch.quantile(rows.abs(), 0.99, dim=1)
    torch.testing.assert_close(scale, clip / 127, rtol=1e-6, atol=0)
    scale, zp = Q.choose_qparams(w, 8, "asym", granularity, "percentile", 97.5)
    lo = torch.quantile(rows, 0.025, dim=1).clamp(max=0)
    hi = torch.quantile(rows, 0.975, dim=1).clamp(min=0)
    torch.testing.assert_close(scale, (hi - lo) / 255, rtol=1e-6, atol=0)
    # the outlier no longer sets the per-tensor range
    assert float(Q.choose_qparams(w, 8, "sym", "tensor", "percentile", 99.0)[0]) < 0.9 / 127 / 4


def test_percentile_with_mask_matches_nanquantile():
    w = TENSORS["heavy"]
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.6
    scale, _ = Q.choose_qparams(w, 4, "sym", "channel", "percentile", 99.0, mask=mask)
    ref = torch.nanquantile(w.abs().masked_fill(~mask, math.nan), 0.99, dim=1)
    torch.testing.assert_close(scale, ref / 7, rtol=1e-6, atol=0)


def _quant_error(w, scale, zp, bits, scheme, granularity):
    qmin, qmax = Q.qrange(bits, scheme)
    rows = w.shape[0] if granularity == "channel" else 1
    return (Q.fake_quantize(w, scale, zp, qmin, qmax) - w).reshape(rows, -1).square().sum(1)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_range_never_worse_than_minmax(bits, scheme, granularity):
    w = TENSORS["heavy"]
    mse = _quant_error(w, *Q.choose_qparams(w, bits, scheme, granularity, "mse"), bits, scheme, granularity)
    mm = _quant_error(w, *Q.choose_qparams(w, bits, scheme, granularity, "minmax"), bits, scheme, granularity)
    assert torch.all(mse <= mm)
    if bits == 2 or (bits == 4 and granularity == "tensor"):  # where the outlier sets the range, clipping pays
        assert float(mse.sum()) < 0.7 * float(mm.sum())


def test_mse_is_best_of_its_candidates():
    w = TENSORS["gauss"]
    scale, _ = Q.choose_qparams(w, 3, "sym", "tensor", "mse")
    errors = []
    for alpha in Q.MSE_SHRINKS:
        s = torch.clamp(w.abs().max() * alpha / 3, min=torch.finfo(torch.float32).eps).reshape(1)
        errors.append(float(_quant_error(w, s, torch.zeros(1, dtype=torch.int32), 3, "sym", "tensor")))
    chosen = float(_quant_error(w, scale, torch.zeros(1, dtype=torch.int32), 3, "sym", "tensor"))
    assert chosen == pytest.approx(min(errors), rel=1e-5)


def _all_specs() -> list[QuantSpec]:
    specs = [
        QuantSpec(bits=32),
        QuantSpec(bits=16, quantizer="fp16"),
        QuantSpec(bits=16, quantizer="bf16"),
        QuantSpec(bits=1, scheme="asym"),
        QuantSpec(bits=16, scheme="asym"),
    ]
    specs += [QuantSpec(bits=b, quantizer=q) for q in ("kmeans", "pow2") for b in (1, 2, 4, 8)]
    specs += [
        QuantSpec(bits=b, scheme=s, granularity=g, range=r)
        for b in (2, 4, 8) for s in ("sym", "asym") for g in ("tensor", "channel")
        for r in ("minmax", "percentile", "mse")
    ]
    return specs


def _spec_id(s: QuantSpec) -> str:
    return f"{s.quantizer}-{s.bits}-{s.scheme}-{s.granularity}-{s.range}"


@pytest.mark.parametrize("spec", _all_specs(), ids=_spec_id)
@pytest.mark.parametrize("name", ["conv2d", "positive", "heavy"])
def test_pruned_weights_stay_exactly_zero(name, spec):
    w = TENSORS[name]
    mask = w.abs() > w.abs().flatten().kthvalue(w.numel() // 2).values  # prune the smaller half
    result = Q.quantize_weight(w, spec, mask)
    assert result.weight.dtype == torch.float32 and result.weight.shape == w.shape
    pruned = result.weight[~mask]
    assert torch.all(pruned == 0) and not torch.any(torch.signbit(pruned))  # +0.0, never -0.0
    if result.codebook is not None:
        assert result.codebook.numel() <= 2**spec.bits
        assert torch.equal(result.weight[mask], result.codebook[result.codes.long()][mask])
    if result.scale is not None:  # the stored codes rebuild the weight exactly, zeros included
        assert torch.equal(Q.dequantize_codes(result.codes, result.scale, result.zero_point), result.weight)


def test_statistics_come_from_kept_weights_only():
    w = TENSORS["gauss"].clone()
    w[0, 0] = 50.0  # a huge weight that is pruned
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[0, 0] = False
    for spec in (QuantSpec(bits=4, granularity="tensor"), QuantSpec(bits=4, scheme="asym", range="mse")):
        masked = Q.quantize_weight(w, spec, mask)
        clean = Q.quantize_weight(torch.where(mask, w, 0.0), spec)
        assert torch.equal(masked.scale, clean.scale) and torch.equal(masked.weight, clean.weight)
    codes, codebook = Q.kmeans_quantize(w, 3, mask)
    assert float(codebook.max()) <= float(w[mask].max())
    codes, codebook = Q.pow2_quantize(w, 3, mask)
    assert float(codebook.max()) <= 2 * float(w[mask].abs().max())
    all_pruned = Q.quantize_weight(w, QuantSpec(bits=4, range="percentile"), torch.zeros_like(mask))
    assert torch.all(all_pruned.weight == 0)


def test_float_casts_and_off():
    w = TENSORS["gauss"]
    assert torch.equal(Q.quantize_weight(w, QuantSpec(bits=16, quantizer="fp16")).weight, w.half().float())
    assert torch.equal(Q.quantize_weight(w, QuantSpec(bits=16, quantizer="bf16")).weight, w.bfloat16().float())
    off = Q.quantize_weight(w, QuantSpec(bits=32))
    assert torch.equal(off.weight, w) and off.weight is not w and off.codes is None and off.scale is None


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_kmeans_codebook_is_a_lloyd_fixed_point(bits):
    w = TENSORS["heavy"]
    codes, codebook = Q.kmeans_quantize(w, bits, iters=200)
    assert codes.shape == w.shape and codes.dtype == torch.int32
    assert 1 <= codebook.numel() <= 2**bits
    assert torch.all(codebook[1:] > codebook[:-1])
    counts = torch.bincount(codes.flatten().long(), minlength=codebook.numel())
    assert torch.all(counts > 0)  # empty clusters were dropped
    # converged: each centroid is the mean of its cluster, and each weight sits at its nearest centroid
    sums = torch.zeros(codebook.numel(), dtype=torch.float64)
    means = sums.index_add_(0, codes.flatten().long(), w.flatten().double())
    torch.testing.assert_close(codebook.double(), means / counts, rtol=1e-5, atol=1e-7)
    nearest = (w.reshape(-1, 1) - codebook).abs().argmin(1)
    assert torch.equal(codebook[nearest], codebook[codes.flatten().long()])


def test_kmeans_deterministic_and_drops_empty_clusters():
    w = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 10.0])
    codes, codebook = Q.kmeans_quantize(w, 4)
    assert codebook.tolist() == [0.0, 1.0, 10.0]  # 16 linearly spaced centroids collapse to 3 clusters
    assert torch.equal(codebook[codes.long()], w)
    w = TENSORS["conv2d"]
    a, b = Q.kmeans_quantize(w, 5), Q.kmeans_quantize(w.clone(), 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_kmeans_linear_init_matches_reference_lloyd():
    w = TENSORS["gauss"].flatten()
    codes, codebook = Q.kmeans_quantize(w, 3, iters=5)
    c = torch.linspace(float(w.min()), float(w.max()), 8, dtype=torch.float64)  # Deep Compression's linear init
    x = w.double()
    for _ in range(5):
        assign = (x[:, None] - c).abs().argmin(1)
        c = torch.stack([x[assign == j].mean() if (assign == j).any() else c[j] for j in range(8)])
    assign = (x[:, None] - c).abs().argmin(1)
    torch.testing.assert_close(codebook.double(), c[torch.unique(assign)], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pow2_levels(bits):
    w = TENSORS["conv2d"]
    codes, codebook = Q.pow2_quantize(w, bits)
    assert codebook.numel() == 2**bits - 1 <= 2**bits
    assert 0.0 in codebook.tolist()
    nonzero = codebook[codebook != 0].abs()
    exponents = torch.log2(nonzero.double())
    assert torch.equal(exponents, exponents.round())  # every level is ±2^k
    assert float(exponents.max()) == round(math.log2(float(w.abs().max())))
    assert torch.equal(codebook, -codebook.flip(0))  # symmetric
    # nearest level in the linear domain
    nearest = (w.reshape(-1, 1) - codebook).abs().min(1).values
    assert torch.equal((codebook[codes.long()].flatten() - w.flatten()).abs(), nearest)


def test_pow2_one_bit_is_a_signed_power_of_two():
    w = TENSORS["gauss"]
    codes, codebook = Q.pow2_quantize(w, 1)
    k = round(math.log2(float(w.abs().mean())))
    assert codebook.tolist() == [-(2.0**k), 2.0**k]
    assert torch.equal(torch.sign(codebook[codes.long()]), torch.sign(w))


def test_activation_qparams_match_observer_and_kernel():
    x = torch.randn(256, 20) * 3 + 1
    for bits in (4, 8):
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2**bits - 1)
        obs(x)
        ref_scale, ref_zp = obs.calculate_qparams()
        scale, zp, qmin, qmax = Q.activation_qparams(float(x.min()), float(x.max()), bits)
        assert (scale, zp, qmin, qmax) == (float(ref_scale), int(ref_zp), 0, 2**bits - 1)
        out = Q.fake_quantize_activation(x, scale, zp, qmin, qmax)
        assert torch.equal(out, torch.fake_quantize_per_tensor_affine(x, ref_scale, ref_zp.int(), qmin, qmax))
        assert len(torch.unique(out)) <= 2**bits
    assert Q.activation_qparams(0.5, 2.0, 8)[1] == 0  # a positive range is widened to contain 0


def test_docstring_examples():
    assert doctest.testmod(Q, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
