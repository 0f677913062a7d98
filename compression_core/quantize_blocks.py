"""Block layout and scale storage shared by the block (group-wise) quantizers: pure tensor functions.

A weight is viewed as rows along its input dimension, (C_out, K) with K = in x kh x kw for convolutions, and
every quantizer with side data computes one scale per row of this table:

| granularity | rows (R, L)                                  | scales |
|-------------|----------------------------------------------|--------|
| tensor      | (1, n)                                       | 1      |
| channel     | (C_out, K)                                   | C_out  |
| group g     | (C_out * ceil(K / g), g), last group padded  | C_out * ceil(K / g) |

Padding holds 0 and is marked invalid: statistics never see it, it is never stored, and `from_rows` drops it.

A scale is stored in its own type (`scale_dtype`): fp32, fp16, or e8m0 (a power of two 2^(b - 127), one byte
b as in OCP MX). A scale is rounded *up* to its type, so the grid still covers the range it was chosen for
(no extra clipping) and an asymmetric zero point stays valid. Side tensors are kept in their storage form
(float32 / float16 / uint8 e8m0 / uint8 / int8 / int32 tensors); `SIDE_KINDS` gives the width the size model counts
and the little-endian layout the packed export writes.
"""
from __future__ import annotations

import math

import torch
# side storage kind -> (bits per entry, numpy dtype of its bytes in the packed file, torch dtype in memory)
SIDE_KINDS = {"float32": (32, "<f4", torch.float32), "float16": (16, "<f2", torch.float16),
              "e8m0": (8, "u1", torch.uint8), "uint8": (8, "u1", torch.uint8), "int8": (8, "i1", torch.int8),
              "int32": (32, "<i4", torch.int32)}
SCALE_KIND: dict[str, str] = {"fp32": "float32", "fp16": "float16", "e8m0": "e8m0"}  # scale_dtype -> side storage kind
E8M0_BIAS = 127
F32_MIN_NORMAL = 2.0 ** -126
MIN_SCALE = {"fp32": F32_MIN_NORMAL, "fp16": 2.0 ** -24, "e8m0": F32_MIN_NORMAL}  # smallest stored scale


def row_count(shape: tuple[int, ...], granularity: str, group_size: int | None) -> int:
    """Number of rows (= scales) of a weight of `shape` (see the module table)."""
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return shape[0]
    k = math.prod(shape[1:])
    return shape[0] * -(-k // group_size)


def as_rows(t: torch.Tensor, granularity: str, group_size: int | None = None, fill: float | bool = 0):
    """(R, L) row table of t as in the module table; a partial last group is padded with `fill`."""
    if granularity == "tensor":
        return t.reshape(1, -1)
    rows = t.reshape(t.shape[0], -1)
    if granularity == "channel":
        return rows
    pad = -rows.shape[1] % group_size
    if pad:
        rows = torch.cat([rows, rows.new_full((rows.shape[0], pad), fill)], dim=1)
    return rows.reshape(-1, group_size)


def valid_rows(shape: tuple[int, ...], mask: torch.Tensor | None, granularity: str, group_size: int | None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool (R, L): True at real, kept weights; False at pruned positions and at padding."""
    kept = torch.ones(shape, dtype=torch.bool, device=device) if mask is None else mask.to(torch.bool)
    return as_rows(kept, granularity, group_size, fill=False)


def from_rows(rows: torch.Tensor, shape: tuple[int, ...], granularity: str) -> torch.Tensor:
    """Inverse of `as_rows`: drop the padding and restore `shape`."""
    if granularity == "group":
        rows = rows.reshape(shape[0], -1)[:, :math.prod(shape[1:])]
    return rows.reshape(shape)


def round_scale_up(scale: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """The float32 scales, each rounded up to the nearest value of `scale_dtype`, in that type's storage form.

    Returns:
        float32 (fp32), float16 (fp16, clamped to its largest finite value) or uint8 biased exponents (e8m0).
    """
    scale = scale.float().clamp_min(MIN_SCALE[scale_dtype])
    if scale_dtype == "fp32":
        return scale
    if scale_dtype == "fp16":
        half = scale.clamp_max(torch.finfo(torch.float16).max).to(torch.float16)
        below = (half.float() < scale) & (half < torch.finfo(torch.float16).max)
        return torch.where(below, (half.view(torch.int16) + 1).view(torch.float16), half)  # next value up
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa * 2^exponent, mantissa in [0.5, 1)
    power = exponent - (mantissa == 0.5).to(exponent.dtype)  # ceil(log2(scale))
    return (power + E8M0_BIAS).clamp(0, 254).to(torch.uint8)


def e8m0_to_float(biased: torch.Tensor) -> torch.Tensor:
    """2^(b - 127) as float32 for uint8 biased exponents b (b = 0 gives 2^-127, a float32 subnormal)."""
    offset = biased.view(torch.uint8).to(torch.int16) - E8M0_BIAS
    return torch.pow(torch.full_like(offset, 2.0, dtype=torch.float32), offset)


def side_to_float(stored: torch.Tensor, kind: str) -> torch.Tensor:
    """A stored scale tensor of side kind `kind` as the float32 values the quantizer computed with."""
    return e8m0_to_float(stored) if kind == "e8m0" else stored.float()


def scale_layout(spec, shape: tuple[int, ...]) -> dict[str, tuple[int, str]]:
    """{"scale": (count, side kind)} for a quantizer whose one scale per row is stored as `spec.scale_dtype`."""
    return {"scale": (row_count(shape, spec.granularity, spec.group_size), SCALE_KIND[spec.scale_dtype])}
