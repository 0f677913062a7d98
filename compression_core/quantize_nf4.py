"""NF4 (QLoRA, Dettmers et al. 2023): 16 normal-float levels per block, block scales double-quantized to int8.

Blocks of `group_size` (default 64) run along the input dimension (quantize_blocks; a partial last block is padded
and the padding never stored). Op for op as torchao's `NF4Tensor` (`to_nf4(w, 64, 256)` then
`get_original_weight()`), so equal to it bit for bit wherever torchao accepts the shape:

    s_b   = absmax of block b                                     (float32)
    code  = argmin_k |w / s_b - NF4[k]|                           (elements use the exact s_b)
    double quantization (default), blocks of 256 scales:
    mean  = mean over b of s_b;   d_b = s_b - mean
    f_j   = 256 / (2 * absmax of d over scale block j)            (float32, one per 256 scales)
    q_b   = clamp(round(d_b * f_j), -128, 127)                    (int8)
    w_hat = NF4[code] * (q_b / f_j + mean)
    without it (double_quant False): w_hat = NF4[code] * s_b, s_b stored as float32.

Stored: 4-bit codes, int8 q_b + float32 f_j + one float32 mean (or float32 s_b). One deliberate difference: a
block whose absmax is 0 (all zero or all pruned) takes the code of 0.0, where torchao divides 0 by 0.
"""
from __future__ import annotations

import torch

from . import quantize_blocks as blocks
from .config import QuantSpec
from .methods import QuantizerInfo, register_quantizer
from .quantize import QuantResult, _masked

NF4_LEVELS = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)  # QLoRA's table, as torchao rounds it
ZERO_CODE = NF4_LEVELS.index(0.0)
SCALE_BLOCK = 256  # scales per double-quantization block
CHUNK = 1 << 18  # weights compared with the 16 levels at a time, bounding the (chunk, 16) temporary


def nf4_table(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def nearest_codes(scaled: torch.Tensor) -> torch.Tensor:
    """int32 index of the nearest NF4 level for each value of a 1-D tensor (torchao's quantize_tensor_nearest)."""
    table = nf4_table(scaled.device)
    out = torch.empty(scaled.numel(), dtype=torch.int32, device=scaled.device)
    for start in range(0, scaled.numel(), CHUNK):
        part = scaled[start:start + CHUNK].unsqueeze(-1)  # (chunk, 1)
        out[start:start + CHUNK] = (part - table).abs().min(dim=-1).indices.to(torch.int32)
    return out


def double_quantize(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 q (B,), float32 factors (ceil(B / 256),), float32 mean (1,)) of block scales (B,), as torchao."""
    mean = scales.mean()
    centred = scales - mean
    pad = -centred.numel() % SCALE_BLOCK  # a partial last block of scales: zeros never raise its absmax
    padded = torch.cat([centred, centred.new_zeros(pad)]).reshape(-1, SCALE_BLOCK)
    factor = 256 / (2 * padded.abs().amax(1))  # inf where every scale equals the mean
    q = (padded * factor[:, None]).round().clamp(-128, 127)
    q = torch.nan_to_num(q, nan=0.0)  # 0 * inf: any q decodes to 0 / inf = 0 there
    return q.reshape(-1)[:scales.numel()].to(torch.int8), factor, mean.reshape(1)


def dequantize_scales(q: torch.Tensor, factor: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """q / f + mean per block scale, float32 (B,), as torchao's dequantize_scalers."""
    per_scale = factor.repeat_interleave(SCALE_BLOCK)[:q.numel()]
    return (q / per_scale).to(torch.float32) + mean


def _layout(spec: QuantSpec, shape: tuple[int, ...]) -> dict[str, tuple[int, str]]:
    count = blocks.row_count(shape, "group", spec.group_size)
    if not spec.double_quant:
        return {"scale": (count, "float32")}
    return {"scale_q": (count, "int8"), "scale_factor": (-(-count // SCALE_BLOCK), "float32"),
            "scale_mean": (1, "float32")}


def _scales(side: dict[str, torch.Tensor]) -> torch.Tensor:
    if "scale" in side:
        return side["scale"]
    return dequantize_scales(side["scale_q"], side["scale_factor"], side["scale_mean"])


def _quantize(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> QuantResult:
    kept = _masked(w.detach().float(), mask)
    rows = blocks.as_rows(kept, "group", spec.group_size)  # (B, group_size)
    absmax = rows.abs().amax(1)
    codes = nearest_codes((rows / absmax[:, None]).reshape(-1)).reshape(rows.shape)
    codes = torch.where((absmax == 0)[:, None], ZERO_CODE, codes)
    side = ({"scale": absmax} if not spec.double_quant else
            dict(zip(("scale_q", "scale_factor", "scale_mean"), double_quantize(absmax))))
    weight = nf4_table(w.device)[codes.long()] * _scales(side)[:, None]
    shape = tuple(w.shape)
    codes = blocks.from_rows(codes, shape, "group")
    if mask is not None:
        codes = torch.where(mask, codes, ZERO_CODE)  # a pruned weight stores the code of 0.0
    return QuantResult(weight=_masked(blocks.from_rows(weight, shape, "group"), mask), codes=codes, side=side)


def _decode(stored: torch.Tensor, side: dict[str, torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    rows = blocks.as_rows(stored, "group", spec.group_size)
    weight = nf4_table(stored.device)[rows.long().clamp(0, 15)] * _scales(side)[:, None]
    return blocks.from_rows(weight, tuple(stored.shape), "group")


register_quantizer(QuantizerInfo(
    name="nf4", label="NF4", kind="format", bits=(4,), value_storage="code", scale_storage="side",
    quantize=_quantize, decode=_decode, side_layout=_layout, granularities=("group",), default_group_size=64,
    double_quant=True,
    description="QLoRA NormalFloat: 16 levels for normally distributed weights, absmax scale per block of 64, "
                "scales double-quantized to int8."))
