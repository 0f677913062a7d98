"""Weight and activation quantizers: pure tensor functions, no modules, nothing mutated.

Uniform affine grids follow PyTorch's observers and fake-quant kernels, so for the same scale and zero point our
quantize-dequantize is bit-identical to `torch.fake_quantize_per_tensor_affine` / `_per_channel_affine`:

    q = clamp(round(w / scale) + zero_point, qmin, qmax)      round = half to even, w / scale as w * (1 / scale)
    w_hat = (q - zero_point) * scale

| scheme | integer range             | float range (lo <= 0 <= hi)      | scale                   | zero_point     |
|--------|---------------------------|----------------------------------|-------------------------|----------------|
| sym    | [-(2^(b-1)-1), 2^(b-1)-1] | [-max(-lo, hi), max(-lo, hi)]    | max(-lo, hi)/(2^(b-1)-1) | 0             |
| asym   | [0, 2^b-1]                | [min(lo, 0), max(hi, 0)]         | (hi - lo)/(2^b - 1)     | -round(lo/scale) |

| granularity | weight shape                                                      | scale / zero_point shape |
|-------------|-------------------------------------------------------------------|--------------------------|
| tensor      | any                                                               | (1,)                     |
| channel     | Linear (O, I), Conv1d/2d/3d (O, I / groups, *kernel), depthwise: I / groups = 1 | (O,): axis 0 |
| group g     | blocks of g along the input dimension, K = I x kernel (quantize_blocks)          | side: (O * ceil(K / g),) |

A scale is never below float32 eps (an all-zero range), as in torch's observers. Group scales, and a scale
stored as fp16 or e8m0 (`scale_dtype`, rounded up to that type), go to `QuantResult.side` with the zero points;
the grid is then the same per row of the block table. The block and float number formats (FP8 / FP6 / FP4, MX,
NF4) live in `quantize_formats` and `quantize_nf4`.

Non-uniform quantizers (`quantize_codebook`, re-exported here) return integer codes into a float32 codebook:
k-means weight sharing (Deep Compression) and power-of-two levels. The built-in quantizers register here, in
display order. Every quantizer takes an optional `mask` (True = kept): statistics come from the kept
weights only, and the returned weight is exactly +0.0 wherever the mask is False.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import quantize_blocks as blocks
from .config import ALLOWED_BITS, GRANULARITIES, RANGES, SCALE_DTYPES, SCHEMES, ConfigError, QuantSpec
from .methods import QuantizerInfo, quantizer_info, register_quantizer
from .quantize_codebook import kmeans_quantize, pow2_quantize

EPS = torch.finfo(torch.float32).eps  # smallest scale, as torch's observers use for all-zero ranges
MSE_SHRINKS = torch.linspace(1.0, 0.05, 80)  # candidate fractions of the min-max range for range="mse"
_ROUNDER = 1.5 * 2**23  # float32 x + _ROUNDER - _ROUNDER == round(x), half to even, for |x| < 2^22


@dataclass(frozen=True)
class QuantResult:
    """One quantized weight.

    weight: float32, same shape as the input; exactly 0 where the mask is False.
    codes: int32, same shape (grids: q in [qmin, qmax]; codebooks: index into `codebook`; pruned positions
        hold the code of 0 for grids and index 0 otherwise); None for bits 32 and float casts.
    scale, zero_point: float32 / int32 of shape (1,) or (C_out,) for grids; None otherwise.
    codebook: float32 sorted levels (at most 2^bits) for codebook quantizers; None otherwise.
    side: named side tensors in their storage form (quantize_blocks.SIDE_KINDS) where the quantizer's
        `side_layout` gives one for this spec (group scales, FP / MX / NF4 formats); None otherwise. The codes
        are then the unsigned stored values (grids: q as above, stored as q - qmin).
    """

    weight: torch.Tensor
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    side: dict[str, torch.Tensor] | None = None


# ---- uniform affine grids -------------------------------------------------------------------------

def qrange(bits: int, scheme: str) -> tuple[int, int]:
    """Integer range of a b-bit grid.

    Example:
        >>> qrange(4, "sym"), qrange(4, "asym")
        ((-7, 7), (0, 15))
    """
    if scheme not in ("sym", "asym"):
        raise ConfigError(f"scheme must be sym or asym; got {scheme!r}")
    if not (isinstance(bits, int) and 1 <= bits <= 16) or (scheme == "sym" and bits == 1):
        lowest = 1 if scheme == "asym" else 2
        raise ConfigError(f"bits for a {scheme} integer grid must be in {lowest}-16; got {bits!r}")
    if scheme == "sym":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _affine_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    """torch.ao observers' `_calculate_qparams`, op for op: (C,) float range -> (C,) scale, (C,) int32 zero point."""
    zeros = torch.zeros_like(lo)
    lo, hi = torch.minimum(lo, zeros), torch.maximum(hi, zeros)  # the float range contains 0
    eps = torch.tensor([EPS], device=lo.device)
    if symmetric:
        scale = torch.maximum(torch.maximum(-lo, hi) / (float(qmax - qmin) / 2), eps)
        return scale, torch.zeros(lo.shape, dtype=torch.int32, device=lo.device)
    scale = torch.maximum((hi - lo) / float(qmax - qmin), eps)
    zero_point = torch.clamp(qmin - torch.round(lo / scale).to(torch.int32), qmin, qmax)
    return scale, zero_point.to(torch.int32)


def _rows(w: torch.Tensor, granularity: str, mask: torch.Tensor | None):
    """(G, n) view of w, one row per quantization group, and the matching kept-mask rows (or None)."""
    groups = w.shape[0] if granularity == "channel" else 1
    rows = w.detach().reshape(groups, -1).float()
    return rows, None if mask is None else mask.reshape(groups, -1)


def _sort(t: torch.Tensor) -> torch.Tensor:
    """Values of t sorted along the last dim; numpy's SIMD sort is ~10x faster than torch.sort on CPU."""
    return torch.from_numpy(np.sort(t.detach().cpu().numpy(), axis=-1)).to(t.device)


def _row_quantiles(rows: torch.Tensor, valid: torch.Tensor | None, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Per-row quantiles (linear interpolation, like torch.quantile) over the valid entries; 0 for empty rows."""
    vals = rows if valid is None else rows.masked_fill(~valid, math.inf)  # invalid entries sort last
    ordered = _sort(vals)
    count = torch.full((rows.shape[0],), rows.shape[1], device=rows.device) if valid is None else valid.sum(1)
    last = (count - 1).clamp_min(0)
    out = []
    for q in qs:
        pos = q * last.double()
        below = pos.floor().long()
        above = torch.minimum(below + 1, last)
        frac = (pos - below).float()
        a, b = ordered.gather(1, below[:, None])[:, 0], ordered.gather(1, above[:, None])[:, 0]
        out.append(torch.where(count > 0, torch.lerp(a, b, frac), torch.zeros_like(a)))
    return out


def _minmax(rows: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if valid is None:
        return rows.amin(1), rows.amax(1)
    # an all-pruned row gives (+inf, -inf), which the "range contains 0" step turns into (0, 0)
    return rows.masked_fill(~valid, math.inf).amin(1), rows.masked_fill(~valid, -math.inf).amax(1)


def _mse_range(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    """Shrink each row's [lo, hi] by the factor in MSE_SHRINKS whose quantize-dequantize has the least L2 error.

    rows must already hold 0 at pruned positions (0 is always on the grid, so they add no error). One
    candidate at a time keeps the (G, n) temporary in cache, which is what makes this fast.
    """
    shrinks = MSE_SHRINKS.to(rows.device)[:, None]  # (K, 1)
    scales, zps = _affine_qparams(shrinks * lo, shrinks * hi, qmin, qmax, symmetric)  # (K, G) each
    inv_scales, zps = torch.reciprocal(scales), zps.float()
    errors = torch.empty_like(scales)
    t = torch.empty_like(rows)
    neg_rows = -rows
    for k in range(len(shrinks)):
        torch.mul(rows, inv_scales[k, :, None], out=t)
        # round half to even by adding and removing 1.5 * 2^23 (exact while |t| < 2^22, and here
        # |t| <= (qmax - qmin) / min(MSE_SHRINKS)); unlike torch.round it is not threaded for small tensors
        t.add_(_ROUNDER).sub_(_ROUNDER)
        if symmetric:  # zero point 0: a scalar clamp, the fast path
            t.clamp_(qmin, qmax)
        else:
            zp = zps[k, :, None]
            t.add_(zp).clamp_(qmin, qmax).sub_(zp)
        torch.addcmul(neg_rows, t, scales[k, :, None], out=t)  # dequantized - w
        torch.linalg.vector_norm(t, dim=1, out=errors[k])
    best = shrinks[errors.argmin(0), 0]  # argmin takes the first minimum: ties keep the wider range
    return lo * best, hi * best


def choose_qparams(w: torch.Tensor, bits: int, scheme: str = "sym", granularity: str = "channel",
                   range_method: str = "minmax", percentile: float = 99.9,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of a uniform grid for `w`.

    Args:
        w: weight, any rank; per-channel groups are slices along axis 0.
        bits: 1-16 (1 only with asym).
        scheme: "sym" (zero point 0) or "asym".
        granularity: "tensor" or "channel".
        range_method: "minmax"; "percentile" (clip at the `percentile` of |w| for sym, at the low / high
            tails for asym); "mse" (the shrink of the min-max range with the least quantization error).
        percentile: in (50, 100], used by "percentile".
        mask: bool like w, True = kept; statistics come from kept weights only.

    Returns:
        (scale float32, zero_point int32), each of shape (1,) or (C_out,).

    Example:
        >>> w = torch.tensor([[-1.0, 0.5], [0.2, 0.4]])
        >>> choose_qparams(w, 8, "sym", "channel")
        (tensor([0.0079, 0.0031]), tensor([0, 0], dtype=torch.int32))
    """
    if granularity not in ("tensor", "channel"):
        raise ConfigError(f"granularity must be tensor or channel; got {granularity!r}")
    qmin, qmax = qrange(bits, scheme)
    symmetric = scheme == "sym"
    rows, valid = _rows(w, granularity, mask)
    if range_method == "minmax":
        lo, hi = _minmax(rows, valid)
    elif range_method == "percentile":
        p = float(percentile) / 100.0
        if symmetric:
            (clip,) = _row_quantiles(rows.abs(), valid, (p,))
            lo, hi = -clip, clip
        else:
            lo, hi = _row_quantiles(rows, valid, (1.0 - p, p))
    elif range_method == "mse":
        lo, hi = _minmax(rows, valid)
        kept_rows = rows if valid is None else torch.where(valid, rows, torch.zeros_like(rows))
        zeros = torch.zeros_like(lo)
        lo, hi = _mse_range(kept_rows, torch.minimum(lo, zeros), torch.maximum(hi, zeros), qmin, qmax, symmetric)
    else:
        raise ConfigError(f"range must be one of minmax, percentile, mse; got {range_method!r}")
    return _affine_qparams(lo, hi, qmin, qmax, symmetric)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize on PyTorch's fused kernels: per tensor when scale has one entry, else per channel (axis 0).

    Example:
        >>> fake_quantize(torch.tensor([0.26, -1.0]), torch.tensor([0.5]), torch.tensor([0], dtype=torch.int32), -1, 1)
        tensor([ 0.5000, -0.5000])
    """
    zero_point = zero_point.to(torch.int32)
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(w, scale.float(), zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point, 0, qmin, qmax)


def _per_row(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(1,) or (C,) -> shape that broadcasts along axis 0 of an ndim-rank tensor."""
    return t.reshape(-1, *([1] * (ndim - 1)))


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                   qmax: int) -> torch.Tensor:
    """Integer codes q = clamp(round(w * (1 / scale)) + zero_point, qmin, qmax), int32, same shape as w.

    `dequantize_codes` of these codes equals `fake_quantize` bit for bit.
    """
    inv = _per_row(torch.reciprocal(scale.float()), w.dim())
    q = torch.round(w * inv) + _per_row(zero_point, w.dim()).float()
    return q.clamp_(qmin, qmax).to(torch.int32)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """(codes - zero_point) * scale as float32, scale / zero point broadcast along axis 0."""
    zp = _per_row(zero_point, codes.dim()).to(torch.int32)
    return (codes.to(torch.int32) - zp).float() * _per_row(scale.float(), codes.dim())


# ---- one entry point --------------------------------------------------------------------------------

def _masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """t with +0.0 (never -0.0) where mask is False."""
    return t if mask is None else torch.where(mask, t, torch.zeros_like(t))


def _uniform(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
    qmin, qmax = qrange(spec.bits, spec.scheme)
    kept = _masked(w.float(), mask)  # pruned weights are 0, which the grid maps to exactly 0
    if _uniform_layout(spec, tuple(w.shape)) is not None:
        return _uniform_rows(kept, spec, mask, qmin, qmax)
    scale, zero_point = choose_qparams(kept, spec.bits, spec.scheme, spec.granularity, spec.range,
                                       spec.percentile, mask)
    weight = _masked(fake_quantize(kept, scale, zero_point, qmin, qmax), mask)
    return QuantResult(weight=weight, codes=quantize_codes(kept, scale, zero_point, qmin, qmax),
                       scale=scale, zero_point=zero_point)


def _uniform_layout(spec: QuantSpec, shape: tuple[int, ...]) -> dict[str, tuple[int, str]] | None:
    """Side tensors of a uniform grid with group scales or a scale stored below fp32; None = the classic layout
    (one fp32 scale per tensor / channel, `QuantResult.scale`)."""
    if spec.granularity != "group" and spec.scale_dtype == "fp32":
        return None
    layout = blocks.scale_layout(spec, shape)
    if spec.scheme == "asym":  # zero points lie in [0, 2^bits - 1]: one byte each up to 8 bits
        layout["zero_point"] = (layout["scale"][0], "uint8" if spec.bits <= 8 else "int32")
    return layout


def _uniform_rows(kept: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None, qmin: int, qmax: int):
    """The grid of `_uniform` with one scale (+ zero point) per row of the block table (quantize_blocks)."""
    rows = blocks.as_rows(kept, spec.granularity, spec.group_size)  # (R, L)
    valid = blocks.valid_rows(tuple(kept.shape), mask, spec.granularity, spec.group_size, kept.device)
    scale, zero_point = choose_qparams(rows, spec.bits, spec.scheme, "channel", spec.range, spec.percentile, valid)
    stored = blocks.round_scale_up(scale, spec.scale_dtype)  # rounded up: the range stays covered
    scale = blocks.side_to_float(stored, blocks.SCALE_KIND[spec.scale_dtype])
    codes = quantize_codes(rows, scale, zero_point, qmin, qmax)
    weight = blocks.from_rows(dequantize_codes(codes, scale, zero_point), tuple(kept.shape), spec.granularity)
    zp_dtype = blocks.SIDE_KINDS[_uniform_layout(spec, tuple(kept.shape))["zero_point"][1]][2] \
        if spec.scheme == "asym" else None
    side = {"scale": stored} | ({"zero_point": zero_point.to(zp_dtype)} if zp_dtype else {})
    return QuantResult(weight=_masked(weight, mask), side=side,
                       codes=blocks.from_rows(codes, tuple(kept.shape), spec.granularity))


def _uniform_decode(stored: torch.Tensor, side: dict[str, torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    """Weight of `_uniform_rows` from its stored codes (q - qmin) and side tensors."""
    qmin = qrange(spec.bits, spec.scheme)[0]
    rows = blocks.as_rows(stored + qmin, spec.granularity, spec.group_size)
    scale = blocks.side_to_float(side["scale"], blocks.SCALE_KIND[spec.scale_dtype])
    zero_point = side.get("zero_point", torch.zeros(scale.shape, dtype=torch.int32)).to(torch.int32)
    return blocks.from_rows(dequantize_codes(rows, scale, zero_point), tuple(stored.shape), spec.granularity)


def _codebook(quantizer):
    """A quantize function for a (w, bits, mask) -> (codes, codebook) quantizer."""
    def quantize(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
        codes, codebook = quantizer(w, spec.bits, mask)
        return QuantResult(weight=_masked(codebook[codes.long()], mask), codes=codes, codebook=codebook)
    return quantize


def _cast(dtype: torch.dtype):
    """A quantize function that casts to `dtype` and back."""
    def quantize(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
        return QuantResult(weight=_masked(w.to(dtype).float(), mask))
    return quantize


_INTEGER_BITS = tuple(b for b in ALLOWED_BITS if b < 32)
register_quantizer(QuantizerInfo(
    name="uniform", label="uniform", kind="grid", bits=_INTEGER_BITS, value_storage="code", scale_storage="scale",
    schemes=SCHEMES, granularities=GRANULARITIES, ranges=RANGES, quantize=_uniform, scale_dtypes=SCALE_DTYPES,
    side_layout=_uniform_layout, decode=_uniform_decode,
    description="Affine integer grid: q = clamp(round(w / scale) + zero_point), per tensor, channel or group."))
register_quantizer(QuantizerInfo(
    name="kmeans", label="k-means", kind="codebook", bits=_INTEGER_BITS, value_storage="code",
    scale_storage="codebook", quantize=_codebook(kmeans_quantize),
    description="Weight sharing: 1-D k-means with 2^bits centroids; codes index a float32 codebook."))
register_quantizer(QuantizerInfo(
    name="pow2", label="power of two", kind="codebook", bits=_INTEGER_BITS, value_storage="code",
    scale_storage="codebook", quantize=_codebook(pow2_quantize),
    description="Levels 0 and ±2^k: multiplications become shifts."))
register_quantizer(QuantizerInfo(
    name="fp16", label="fp16 cast", kind="cast", bits=(16,), value_storage="float16", scale_storage="none",
    quantize=_cast(torch.float16), description="Plain IEEE half-precision cast."))
register_quantizer(QuantizerInfo(
    name="bf16", label="bf16 cast", kind="cast", bits=(16,), value_storage="bfloat16", scale_storage="none",
    quantize=_cast(torch.bfloat16), description="Plain bfloat16 cast: fp32's range, 8 bits of mantissa."))


def quantize_weight(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> QuantResult:
    """Quantize one layer's weight as `spec` says; the survivors of `mask` only.

    Args:
        w: float weight (not modified).
        spec: bits 32 returns w unchanged (times mask); otherwise the registered quantizer's function runs
            (fp16 / bf16 cast and cast back; uniform, kmeans and pow2 as in `choose_qparams`,
            `kmeans_quantize`, `pow2_quantize`).
        mask: bool like w, True = kept, or None (all kept).

    Returns:
        QuantResult whose `weight` is float32 and exactly 0 wherever mask is False.

    Example:
        >>> w = torch.tensor([[0.3, -0.7, 0.05, 1.2]])
        >>> r = quantize_weight(w, QuantSpec(bits=2, scheme="sym"), mask=w.abs() > 0.1)
        >>> r.weight, r.codes
        (tensor([[ 0.0000, -1.2000,  0.0000,  1.2000]]), tensor([[ 0, -1,  0,  1]], dtype=torch.int32))
    """
    w = w.detach()
    if not spec.enabled:
        return QuantResult(weight=_masked(w.float().clone(), mask))
    return quantizer_info(spec.quantizer).quantize(w, spec, mask)


# ---- activations ------------------------------------------------------------------------------------

def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int, int, int]:
    """Asymmetric per-tensor grid for an observed activation range [lo, hi] (widened to contain 0).

    Returns:
        (scale, zero_point, qmin, qmax), the same numbers torch's MinMaxObserver(quint8) gives for 8 bits.

    Example:
        >>> activation_qparams(0.0, 2.55, 8)
        (0.009999999776482582, 0, 0, 255)
    """
    qmin, qmax = qrange(bits, "asym")
    scale, zero_point = _affine_qparams(torch.tensor([float(lo)]), torch.tensor([float(hi)]), qmin, qmax, False)
    return float(scale), int(zero_point), qmin, qmax


def fake_quantize_activation(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Per-tensor quantize-dequantize of an activation (differentiable: straight-through inside the range)."""
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), int(qmin), int(qmax))
