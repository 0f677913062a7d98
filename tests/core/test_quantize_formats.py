"""FP8 / FP6 / FP4 elements, MX and NF4: bit for bit against torch's float8 casts and torchao (the test oracle)."""
import re
import warnings

import pytest
import torch

from compression_core.config import ConfigError, QuantSpec
from compression_core.quantize import quantize_weight
from compression_core.quantize_formats import FORMATS, levels, round_to_format

FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
MX = {"mxfp8": "e4m3", "mxfp6": "e3m2", "mxfp4": "e2m1"}


def adversarial(shape: tuple[int, int], seed: int = 0, top: float = torch.finfo(torch.float32).max / 4):
    """Random and hostile weights of `shape`: zeros, one outlier, float32 subnormals, ±top, mixed magnitudes."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    outlier = torch.randn(shape, generator=g) * 0.01
    outlier[0, 3] = 1000.0
    mixed = torch.randn(shape, generator=g) * torch.logspace(-30, 30, n).reshape(shape)
    signs = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return {"random": torch.randn(shape, generator=g), "zeros": torch.zeros(shape), "outlier": outlier,
            "subnormal": torch.randn(shape, generator=g) * 1e-40, "max": signs * top,
            "mixed": mixed, "ties": torch.arange(n, dtype=torch.float32).reshape(shape) / 16 - n / 32}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as values, with -0.0 == 0.0 (torch.equal), and with no NaN anywhere."""
    return not torch.isnan(a).any() and torch.equal(a, b)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_element_rounding_equals_torch_float8_cast_on_every_float32_pattern_sample(name):
    dtype = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[name]
    fmt = FORMATS[name]
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-2**31, 2**31 - 1, (400_000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    x = x[torch.isfinite(x) & (x.abs() <= fmt.max)]
    ties = levels(fmt)[:-1] / 2 + levels(fmt)[1:] / 2  # exact midpoints between levels
    x = torch.cat([x, ties, -ties, levels(fmt), torch.tensor([fmt.max, -fmt.max, 0.0, -0.0])])
    codes, values = round_to_format(x, fmt)
    assert torch.equal(values, x.to(dtype).float())
    assert torch.equal(codes.to(torch.uint8), x.to(dtype).view(torch.uint8))  # our codes are the float8 bits


@pytest.mark.parametrize("quantizer", list(FP8))
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_fp8_quantizer_equals_scaled_torch_cast(quantizer, granularity):
    for case, w in adversarial((24, 70)).items():
        spec = QuantSpec(quantizer=quantizer, granularity=granularity, group_size=32)
        r = quantize_weight(w, spec)
        scale = r.side["scale"].float()
        rows = w.reshape(1, -1) if granularity == "tensor" else w
        if granularity == "group":  # 70 inputs: groups of 32, 32 and a partial 6
            rows = torch.nn.functional.pad(w, (0, 26)).reshape(-1, 32)
        expect = (rows / scale[:, None]).to(FP8[quantizer]).float() * scale[:, None]
        if granularity == "group":
            expect = expect.reshape(24, 96)[:, :70]
        assert same_bits(r.weight, expect.reshape(w.shape)), case
        absmax = rows.abs().amax(1)
        assert torch.equal(scale, torch.clamp(absmax / FORMATS[quantizer[-4:]].max, min=2.0 ** -126)), case


def test_fp6_fp4_rounding_equals_torchao_kernels():
    custom = pytest.importorskip("torchao.prototype.custom_fp_utils")
    g = torch.Generator().manual_seed(2)
    for name in ("e3m2", "e2m3", "e2m1"):
        fmt = FORMATS[name]
        table = levels(fmt)
        x = torch.cat([torch.randn(50_000, generator=g) * fmt.max, table, -table, table[:-1] / 2 + table[1:] / 2,
                       torch.tensor([fmt.max * 3, -fmt.max * 3, 1e-40, -1e-40])])
        ref = custom._floatx_unpacked_to_f32(custom._f32_to_floatx_unpacked(x, fmt.ebits, fmt.mbits),
                                             fmt.ebits, fmt.mbits)
        codes, values = round_to_format(x, fmt)
        assert torch.equal(values, ref), name
        assert torch.equal(codes.to(torch.uint8), custom._f32_to_floatx_unpacked(x, fmt.ebits, fmt.mbits)), name


def _torchao_mx(w: torch.Tensor, quantizer: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    elem = {"mxfp8": torch.float8_e4m3fn, "mxfp6": "fp6_e3m2", "mxfp4": torch.float4_e2m1fn_x2}[quantizer]
    rows = w.reshape(w.shape[0], -1)
    padded = torch.nn.functional.pad(rows, (0, -rows.shape[1] % 32)).contiguous()
    scale, data = mx.to_mx(padded, elem, 32)
    return mx.to_dtype(data, scale, elem, 32, torch.float32)[:, :rows.shape[1]].reshape(w.shape)


@pytest.mark.parametrize("quantizer", list(MX))
@pytest.mark.parametrize("shape", [(16, 64), (8, 50), (6, 3, 3, 3)])
def test_mx_equals_torchao_to_mx_then_to_dtype(quantizer, shape):
    for case, w in adversarial((shape[0], int(torch.tensor(shape[1:]).prod()))).items():
        w = w.reshape(shape)
        r = quantize_weight(w, QuantSpec(quantizer=quantizer))
        assert same_bits(r.weight, _torchao_mx(w, quantizer)), case
        assert r.side["scale"].dtype == torch.uint8 and r.side["scale"].numel() == shape[0] * -(-w[0].numel() // 32)


def test_mxint8_follows_the_ocp_definition():
    w = torch.tensor([[1.0, -0.5, 0.75, 0.3, 1.99] + [0.0] * 27, [1000.0, 3.0] + [0.0] * 30])
    r = quantize_weight(w, QuantSpec(quantizer="mxint8"))
    # block 0: absmax 1.99 -> exponent 0, scale 1; elements round(w * 64) / 64, 1.99 * 64 = 127.36 -> 127
    assert torch.equal(r.side["scale"], torch.tensor([127, 136], dtype=torch.uint8))  # 2^0 and 2^9
    assert r.weight[0, :5].tolist() == [1.0, -0.5, 0.75, 19 / 64, 127 / 64]
    assert r.weight[1, 0] == 1000.0 and r.weight[1, 1] == 0.0  # 3 / 512 * 64 = 0.375 -> 0
    assert int(r.codes[0, 1]) == 256 - 32  # -0.5 * 64 = -32 in two's complement


def _torchao_nf4(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nf4 = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    return nf4.to_nf4(w, block, 256).get_original_weight()


@pytest.mark.parametrize("shape,block", [((256, 64), 64), ((128, 512), 64), ((64, 1024), 32), ((512, 128), 128)])
def test_nf4_equals_torchao_to_nf4(shape, block):
    for case, w in adversarial(shape, seed=3, top=1e34).items():  # NF4's mean of block scales must stay finite
        r = quantize_weight(w, QuantSpec(quantizer="nf4", group_size=block))
        assert same_bits(r.weight, _torchao_nf4(w, block)), case
        assert r.side["scale_q"].dtype == torch.int8 and r.side["scale_factor"].numel() == w.numel() // block // 256


def test_nf4_partial_blocks_and_no_double_quant():
    w = torch.randn(5, 70)  # 2 blocks per row, the second holds 6 real weights; 10 scales, one partial scale block
    r = quantize_weight(w, QuantSpec(quantizer="nf4"))
    assert r.side["scale_q"].numel() == 10 and r.side["scale_factor"].numel() == 1
    plain = quantize_weight(w, QuantSpec(quantizer="nf4", double_quant=False))
    absmax = torch.stack([w[:, :64].abs().amax(1), w[:, 64:].abs().amax(1)], 1).reshape(-1)
    assert torch.equal(plain.side["scale"], absmax)
    assert torch.equal(plain.weight.abs().amax(1), w.abs().amax(1))  # each block's absmax is the level ±1.0


def test_uniform_group_partial_tail_equals_per_group_fake_quant():
    w = torch.randn(4, 3, 5, 5)  # in x kh x kw = 75: groups of 32, 32 and 11
    for scheme in ("sym", "asym"):
        r = quantize_weight(w, QuantSpec(bits=4, scheme=scheme, granularity="group", group_size=32))
        rows = w.reshape(4, 75)
        for start in (0, 32, 64):
            block = rows[:, start:start + 32]
            one = quantize_weight(block.contiguous(), QuantSpec(bits=4, scheme=scheme, granularity="channel"))
            assert torch.equal(r.weight.reshape(4, 75)[:, start:start + 32], one.weight), (scheme, start)
        assert r.side["scale"].numel() == 12 and ("zero_point" in r.side) == (scheme == "asym")


@pytest.mark.parametrize("scale_dtype", ["fp16", "e8m0"])
def test_scale_dtype_rounds_scales_up_to_their_type(scale_dtype):
    w = torch.randn(8, 96)
    fp32 = quantize_weight(w, QuantSpec(bits=4, granularity="group", group_size=32))
    r = quantize_weight(w, QuantSpec(bits=4, granularity="group", group_size=32, scale_dtype=scale_dtype))
    stored = r.side["scale"]
    if scale_dtype == "fp16":
        assert stored.dtype == torch.float16
        value = stored.float()
    else:
        assert stored.dtype == torch.uint8
        value = 2.0 ** (stored.float() - 127)
    assert (value >= fp32.side["scale"]).all() and (value < 2 * fp32.side["scale"]).all()
    assert (r.weight.abs().amax(1) <= w.abs().amax(1) + value.reshape(8, 3).amax(1)).all()


def test_masked_weights_stay_exact_zero_in_every_format():
    w = torch.randn(8, 64)
    mask = torch.rand(8, 64) > 0.5
    mask[0] = False  # a whole row, so whole blocks, pruned
    for q in ("fp8_e4m3", "fp4_e2m1", "mxfp4", "mxint8", "nf4"):
        r = quantize_weight(w, QuantSpec(quantizer=q), mask)
        assert (r.weight[~mask] == 0).all() and torch.isfinite(r.weight).all(), q


@pytest.mark.parametrize("kwargs,message", [
    ({"quantizer": "mxfp4", "granularity": "tensor"}, "granularity for quantizer mxfp4 must be group (32-element"),
    ({"quantizer": "nf4", "granularity": "tensor"}, "granularity for quantizer nf4 must be group"),
    ({"bits": 4, "granularity": "group", "group_size": 0}, "group size must be a positive integer"),
    ({"bits": 4, "granularity": "group", "group_size": 2.5}, "group size must be a positive integer"),
    ({"bits": 4, "scale_dtype": "fp8"}, "scale dtype must be one of fp32, fp16, e8m0"),
])
def test_bad_format_settings_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        QuantSpec(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, count", [
    (QuantSpec(quantizer="fp4_e2m1", granularity="group", group_size=16), 15),  # ±{0.5 .. 6} and 0
    (QuantSpec(quantizer="mxfp6"), 63),  # 64 codes, +0 and -0 the same value
    (QuantSpec(quantizer="mxint8"), 256),  # two's complement -128 .. 127 (the quantizer itself stops at -127)
    (QuantSpec(quantizer="nf4", group_size=32), 16),
    (QuantSpec(bits=3, scheme="asym", granularity="group", group_size=8), 8),
])
def test_histogram_levels_of_a_block_format_are_the_blocks_representable_values(spec, count):
    from compression_core.compress import compress_weight
    from compression_core.histograms import grid_levels

    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(5))
    w[4, 21] = 9.0  # the block holding it is the one shown
    layer = compress_weight(w, spec)
    g = grid_levels(layer)
    assert g.block is not None and len(g.levels) == count and list(g.levels) == sorted(set(g.levels))
    assert g.clip == (g.levels[0], g.levels[-1]) and g.levels[0] <= 0 < g.levels[-1] and 0.0 in g.levels
    block_values = set(w.new_tensor(g.levels).float().tolist())
    assert layer.weight[4, 21].item() in block_values  # the outlier's own block
    assert max(layer.weight.abs().reshape(-1).tolist()) <= max(map(abs, g.levels))
