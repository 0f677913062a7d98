"""Floating-point element formats (FP8 / FP6 / FP4) and the OCP Microscaling (MX) block formats.

An element format with e exponent and m mantissa bits (bias 2^(e-1) - 1, no infinities) has the non-negative
levels of its codes 0, 1, ... in increasing order: code c = (E, M) is M * 2^(1 - bias - m) for E = 0 (subnormal)
and (1 + M / 2^m) * 2^(E - bias) otherwise, up to the largest finite value. A value rounds to the nearest level,
ties to the even code (round half to even, as IEEE casts do), and saturates at the largest level; its stored code
is sign << (e + m) | level index. This equals torch's float8 casts and torchao's FP6 / FP4 kernels bit for bit.

| quantizer | e, m | largest | scale                                                    |
|-----------|------|---------|----------------------------------------------------------|
| fp8_e4m3  | 4, 3 | 448     | absmax / 448 per tensor, channel or group (scale_dtype)  |
| fp8_e5m2  | 5, 2 | 57344   | absmax / 57344                                           |
| fp6_e3m2  | 3, 2 | 28      | absmax / 28                                              |
| fp6_e2m3  | 2, 3 | 7.5     | absmax / 7.5                                             |
| fp4_e2m1  | 2, 1 | 6       | absmax / 6                                               |
| mxfp8 / mxfp6 / mxfp4 / mxint8 | E4M3 / E3M2 / E2M1 / int8 | | one E8M0 scale per 32 weights  |

FP elements: w_hat = fp(w / s) * s. MX (OCP MX v1.0, torchao `to_mx` default FLOOR scaling then `to_dtype`):
per block of 32 along the input dimension, b = clamp(exponent(absmax) - emax_elem, -127, 127) + 127 as one
byte; the elements are fp(w / max(2^(b - 127), 2^-126)) (FP8 clamped to ±max first), decoded as element * 2^(b-127).
MXINT8 elements are two's complement q = clamp(round(w / 2^(b - 127) * 64), -127, 127), value q / 64 (emax 0);
torchao 0.18 has no MXINT8, so it follows the OCP text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import quantize_blocks as blocks
from .config import SCALE_DTYPES, QuantSpec
from .methods import QuantizerInfo, register_quantizer
from .quantize import QuantResult, _masked

MX_BLOCK = 32
MXINT8_FRACTION_BITS = 6  # MXINT8 element = q / 2^6


@dataclass(frozen=True)
class ElementFormat:
    """A small float format: e exponent bits, m mantissa bits, its largest finite value."""

    ebits: int
    mbits: int
    max: float

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two the format holds (torchao's *_MAX_POW2)."""
        return math.floor(math.log2(self.max))


FORMATS = {"e4m3": ElementFormat(4, 3, 448.0), "e5m2": ElementFormat(5, 2, 57344.0),
           "e3m2": ElementFormat(3, 2, 28.0), "e2m3": ElementFormat(2, 3, 7.5), "e2m1": ElementFormat(2, 1, 6.0)}


@lru_cache(maxsize=None)
def levels(fmt: ElementFormat) -> torch.Tensor:
    """The format's non-negative finite levels, float32, in code order (code c -> levels[c])."""
    bias = 2 ** (fmt.ebits - 1) - 1
    values = []
    for code in range(2 ** (fmt.ebits + fmt.mbits)):
        e, m = code >> fmt.mbits, code & ((1 << fmt.mbits) - 1)
        value = m * 2.0 ** (1 - bias - fmt.mbits) if e == 0 else (1 + m / 2 ** fmt.mbits) * 2.0 ** (e - bias)
        if value > fmt.max:
            break  # E4M3's top code is NaN, E5M2's top exponent is inf / NaN
        values.append(value)
    return torch.tensor(values, dtype=torch.float32)


def round_to_format(x: torch.Tensor, fmt: ElementFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest level of `fmt` for each float32 value (ties to even, saturating).

    Returns:
        (codes int32 like x: sign << (e + m) | level index, values float32 like x, signed like x).
    """
    table = levels(fmt).to(x.device)
    a = x.abs()
    above = torch.searchsorted(table, a).clamp_max(len(table) - 1)  # first level >= |x| (the top when above)
    below = (above - 1).clamp_min(0)
    up, down = table[above] - a, a - table[below]  # exact: adjacent levels are at most a factor 2 apart
    take_below = (down < up) | ((down == up) & (below % 2 == 0))
    index = torch.where(take_below, below, above)
    negative = torch.signbit(x)
    value = torch.where(negative, -table[index], table[index])
    return (index | (negative.long() << (fmt.ebits + fmt.mbits))).to(torch.int32), value


def decode_format(codes: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Element values (float32) of stored codes sign << (e + m) | level index."""
    table = levels(fmt).to(codes.device)
    sign_bit = 1 << (fmt.ebits + fmt.mbits)
    index = (codes.long() & (sign_bit - 1)).clamp_max(len(table) - 1)
    return torch.where((codes.long() & sign_bit) != 0, -table[index], table[index])


# ---- FP elements with a tensor / channel / group scale ----------------------------------------------------

def _fp_elements(fmt: ElementFormat):
    """quantize: s = absmax / max (floored, rounded up to scale_dtype), w_hat = fp(w / s) * s."""
    def quantize(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
        kept = _masked(w.detach().float(), mask)
        rows = blocks.as_rows(kept, spec.granularity, spec.group_size)
        stored = blocks.round_scale_up(rows.abs().amax(1) / fmt.max, spec.scale_dtype)
        scale = blocks.side_to_float(stored, blocks.SCALE_KIND[spec.scale_dtype])[:, None]
        codes, values = round_to_format(rows / scale, fmt)
        weight = blocks.from_rows(values * scale, tuple(w.shape), spec.granularity)
        return QuantResult(weight=_masked(weight, mask), side={"scale": stored},
                           codes=blocks.from_rows(codes, tuple(w.shape), spec.granularity))

    def decode(stored: torch.Tensor, side: dict[str, torch.Tensor], spec: QuantSpec) -> torch.Tensor:
        rows = blocks.as_rows(stored, spec.granularity, spec.group_size)
        scale = blocks.side_to_float(side["scale"], blocks.SCALE_KIND[spec.scale_dtype])[:, None]
        return blocks.from_rows(decode_format(rows, fmt) * scale, tuple(stored.shape), spec.granularity)
    return quantize, decode


# ---- MX block formats ---------------------------------------------------------------------------------------

def mx_exponents(rows: torch.Tensor, emax: int) -> torch.Tensor:
    """uint8 E8M0 block exponents of (R, 32) blocks: floor(log2(absmax)) - emax, clamped, biased by 127."""
    absmax = rows.abs().amax(1)
    unbiased = ((absmax.view(torch.int32) >> 23) & 0xFF) - 127 - emax  # float32 exponent field, as torchao
    return (unbiased.clamp(-127, 127) + blocks.E8M0_BIAS).to(torch.uint8)


def _mx_layout(spec: QuantSpec, shape: tuple[int, ...]) -> dict[str, tuple[int, str]]:
    return {"scale": (blocks.row_count(shape, "group", MX_BLOCK), "e8m0")}


def _mx(fmt: ElementFormat | None):
    """quantize / decode of an MX format; fmt None = MXINT8."""
    emax = 0 if fmt is None else fmt.emax

    def elements(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if fmt is None:
            q = torch.round(x * 2 ** MXINT8_FRACTION_BITS).clamp(-127, 127).to(torch.int32)  # no -0 in int8
            return q & 0xFF, q.float() / 2 ** MXINT8_FRACTION_BITS
        if fmt.bits == 8:
            x = x.clamp(-fmt.max, fmt.max)  # torchao clamps before its float8 cast
        return round_to_format(x, fmt)

    def element_values(codes: torch.Tensor) -> torch.Tensor:
        if fmt is None:
            signed = codes.long() - ((codes.long() & 0x80) << 1)  # two's complement byte -> -127 .. 127
            return signed.float() / 2 ** MXINT8_FRACTION_BITS
        return decode_format(codes, fmt)

    def quantize(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
        kept = _masked(w.detach().float(), mask)
        rows = blocks.as_rows(kept, "group", MX_BLOCK)  # (blocks, 32), zero padding never raises absmax
        exps = mx_exponents(rows, emax)
        scale = (exps.to(torch.int32) << 23).view(torch.float32).clamp_min(blocks.F32_MIN_NORMAL)[:, None]
        codes, values = elements(rows / scale)
        weight = values * blocks.e8m0_to_float(exps)[:, None]  # decoded with 2^(b-127), as torchao's to_dtype
        return QuantResult(weight=_masked(blocks.from_rows(weight, tuple(w.shape), "group"), mask),
                           side={"scale": exps}, codes=blocks.from_rows(codes, tuple(w.shape), "group"))

    def decode(stored: torch.Tensor, side: dict[str, torch.Tensor], spec: QuantSpec) -> torch.Tensor:
        rows = blocks.as_rows(stored, "group", MX_BLOCK)
        weight = element_values(rows) * blocks.e8m0_to_float(side["scale"])[:, None]
        return blocks.from_rows(weight, tuple(stored.shape), "group")
    return quantize, decode


def _register() -> None:
    fp_names = {"fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2", "fp6_e3m2": "e3m2", "fp6_e2m3": "e2m3", "fp4_e2m1": "e2m1"}
    for name, key in fp_names.items():
        fmt = FORMATS[key]
        quantize, decode = _fp_elements(fmt)
        register_quantizer(QuantizerInfo(
            name=name, label=name.replace("_", " ").upper(), kind="format", bits=(fmt.bits,), value_storage="code",
            scale_storage="side", quantize=quantize, decode=decode, side_layout=blocks.scale_layout,
            granularities=("tensor", "channel", "group"), scale_dtypes=SCALE_DTYPES,
            description=f"{fmt.bits}-bit float elements {key.upper()} (largest {fmt.max:g}); scale = absmax / "
                        f"{fmt.max:g} per tensor, channel or group."))
    for name, key in {"mxfp8": "e4m3", "mxfp6": "e3m2", "mxfp4": "e2m1", "mxint8": None}.items():
        fmt = FORMATS.get(key)
        quantize, decode = _mx(fmt)
        element = "INT8" if fmt is None else key.upper()
        register_quantizer(QuantizerInfo(
            name=name, label=name.upper(), kind="format", bits=(8 if fmt is None else fmt.bits,),
            value_storage="code", scale_storage="side", quantize=quantize, decode=decode, side_layout=_mx_layout,
            granularities=("group",), default_group_size=MX_BLOCK, fixed_group_size=True,
            description=f"OCP Microscaling: {element} elements, one E8M0 (power-of-two) scale per 32 weights."))


_register()
