"""GPTQ (Frantar et al. 2022): round one weight column at a time and push its rounding error onto the columns not yet
rounded, weighted by the inverse Hessian of the layer's inputs, so the layer's *output* error stays small.

For a layer y = W x with W of shape (O, K) (K = in x kh x kw for convolutions, the order of `weight.reshape(O, -1)`
and of `F.unfold`) and calibration inputs X of shape (n, K):

    H = 2/n X^T X + λ I                     λ = percdamp x mean(diag H)   (damping, default 1 %)
    U = chol(H^-1)^T  (upper)               q_j = grid(w_j)               (the layer's own RTN scales)
    W[:, j:] -= ((w_j - q_j) / U_jj) U_j,j:                               (for every column j, in order)

done in blocks of 128 columns with lazy updates of the columns after the block; `act_order` visits columns by
decreasing diag(H). Scales and zero points are the ones round-to-nearest chooses on the original weight (channel,
tensor or group rows, `quantize_blocks`), so the stored format and its size do not change. Pruned weights are
rounded to exactly 0 (their error is compensated like any other).

Handled: nn.Linear (inputs (N, ..., in)), nn.Conv1d and nn.Conv2d of any stride, dilation, padding mode and
groups (grouped and depthwise convolutions get one Hessian per group). nn.Conv3d is refused (no unfold).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import quantize_blocks as blocks
from .config import QuantSpec
from .quantize import QuantResult, qrange, quantize_weight

BLOCK = 128
PERCDAMP = 0.01
CHUNK = 256  # calibration samples per forward pass
GPTQ_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class Grid:
    """The per-row grid of one weight as (O, K) tables: scale and zero point of every weight, codes range."""

    scale: torch.Tensor  # float32 (O, K)
    zero_point: torch.Tensor  # int32 (O, K)
    qmin: int
    qmax: int


def check_layer(name: str, module: nn.Module) -> None:
    """Raise ValueError (one line) when GPTQ cannot handle the layer's type."""
    if not isinstance(module, GPTQ_TYPES):
        raise ValueError(f"GPTQ cannot handle layer {name!r} of type nn.{type(module).__name__}; it handles "
                         "nn.Linear, nn.Conv1d and nn.Conv2d (use --layer NAME:skip=1 or another repair)")


def unfold_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies its (O, K) weight with: (N x positions, K) for convolutions, (N x ..., in)
    for Linear.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3, padding=1)
        >>> x = torch.randn(2, 3, 5, 5)
        >>> rows = unfold_input(conv, x)                                   # (2 * 25, 27)
        >>> y = (rows @ conv.weight.reshape(4, -1).T).reshape(2, 25, 4).permute(0, 2, 1).reshape(2, 4, 5, 5)
        >>> torch.allclose(y, conv._conv_forward(x, conv.weight, None), atol=1e-5)
        True
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # also resolves padding="same"
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C x k, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Captured(Exception):
    """Raised by the capture hook to skip the rest of the forward pass once the layer's input is seen."""


@torch.no_grad()
def layer_hessians(model: nn.Module, module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """H = 2/n X^T X of the inputs `module` sees while `model` runs on `x`; one (K, K) matrix per conv group
    ([] when the model never calls it).

    The first sample runs the whole model and counts the layer's calls; when it is called once per forward, the
    other passes stop right after it (the layers after it cannot change its input).
    """
    groups = getattr(module, "groups", 1)
    state = {"n": 0, "h": None, "calls": 0, "stop": False}

    def hook(_, inputs):
        rows = unfold_input(module, inputs[0]).float()  # (n, groups x K)
        rows = rows.reshape(len(rows), groups, -1).transpose(0, 1)  # (groups, n, K)
        total = state["n"] + rows.shape[1]
        h = torch.bmm(rows.transpose(1, 2), rows) * (2.0 / total)
        state["h"] = h if state["h"] is None else state["h"] * (state["n"] / total) + h
        state["n"], state["calls"] = total, state["calls"] + 1
        if state["stop"]:
            raise _Captured

    handle = module.register_forward_pre_hook(hook)
    try:
        model(x[:1])
        state["stop"] = state["calls"] == 1
        for start in range(1, len(x), CHUNK):
            try:
                model(x[start:start + CHUNK])
            except _Captured:
                pass
    finally:
        handle.remove()
    return [] if state["h"] is None else list(state["h"])


def grid_of(rtn: QuantResult, spec: QuantSpec, shape: tuple[int, ...]) -> Grid:
    """Scale and zero point of every weight, as (O, K) tables, from the round-to-nearest result on the weight."""
    out, k = shape[0], math.prod(shape[1:])
    if rtn.side is not None:
        scale = blocks.side_to_float(rtn.side["scale"], blocks.SCALE_KIND[spec.scale_dtype])
        zero_point = rtn.side.get("zero_point", torch.zeros_like(scale, dtype=torch.int32)).to(torch.int32)
    else:
        scale, zero_point = rtn.scale.float(), rtn.zero_point.to(torch.int32)
    if spec.granularity == "group":  # one entry per block of group_size columns (last block partial)
        per_row = -(-k // spec.group_size)
        cols = torch.arange(k, device=scale.device) // spec.group_size
        scale, zero_point = scale.reshape(out, per_row)[:, cols], zero_point.reshape(out, per_row)[:, cols]
    else:  # (1,) per tensor or (O,) per channel
        scale, zero_point = scale.reshape(-1, 1).expand(out, k), zero_point.reshape(-1, 1).expand(out, k)
    qmin, qmax = qrange(spec.bits, spec.scheme)
    return Grid(scale.contiguous(), zero_point.contiguous(), qmin, qmax)


def _round_column(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int):
    """(codes, dequantized) of one column, op for op as quantize.quantize_codes / dequantize_codes."""
    codes = (torch.round(w * torch.reciprocal(scale)) + zero_point.float()).clamp_(qmin, qmax).to(torch.int32)
    return codes, (codes - zero_point).float() * scale


def _inverse_hessian_factor(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped H^-1; dead inputs (diag 0) get 1 so they propagate nothing."""
    h = h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.diagonal(h).mean()
    for _ in range(6):  # more damping until H is numerically positive definite
        chol, info = torch.linalg.cholesky_ex(h + damp * torch.eye(len(h), dtype=h.dtype, device=h.device))
        if info == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).float()
        damp = damp * 10 if damp > 0 else 1e-8
    raise ValueError("GPTQ: the calibration inputs' Hessian is not positive definite even with damping")


def gptq_matrix(w: torch.Tensor, h: torch.Tensor, grid: Grid, keep: torch.Tensor | None = None, *,
                act_order: bool = False, percdamp: float = PERCDAMP, block: int = BLOCK) -> torch.Tensor:
    """GPTQ codes of a 2-D weight on a fixed grid.

    Args:
        w: (O, K) float weight (not modified). h: (K, K) Hessian 2/n X^T X of the layer's inputs.
        grid: the per-weight scale / zero point tables (O, K) and the code range.
        keep: bool (O, K), False = pruned (rounded to exactly 0); None = all kept.
        act_order: visit columns by decreasing diag(h). percdamp: damping as a fraction of mean(diag h).
        block: columns per lazy-update block.

    Returns:
        int32 codes (O, K); `(codes - zero_point) * scale` is the new weight.
    """
    w = w.float().clone()
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else \
        torch.arange(len(h), device=h.device)
    w, h = w[:, order], h[order][:, order]
    scale, zp = grid.scale[:, order], grid.zero_point[:, order]
    kept = None if keep is None else keep[:, order]
    u = _inverse_hessian_factor(h, percdamp)
    codes = torch.empty_like(w, dtype=torch.int32)
    for i1 in range(0, w.shape[1], block):
        i2 = min(i1 + block, w.shape[1])
        errors = torch.empty(w.shape[0], i2 - i1, device=w.device)
        for i in range(i1, i2):
            codes[:, i], q = _round_column(w[:, i], scale[:, i], zp[:, i], grid.qmin, grid.qmax)
            if kept is not None:  # pruned: the stored value is the code of 0
                codes[:, i] = torch.where(kept[:, i], codes[:, i], zp[:, i])
                q = torch.where(kept[:, i], q, torch.zeros_like(q))
            err = (w[:, i] - q) / u[i, i]
            w[:, i:i2] -= err[:, None] * u[i, i:i2][None, :]
            errors[:, i - i1] = err
        w[:, i2:] -= errors @ u[i1:i2, i2:]  # lazy update of everything after the block
    return codes[:, torch.argsort(order)]


def gptq_weight(w: torch.Tensor, hessians: list[torch.Tensor], spec: QuantSpec, mask: torch.Tensor | None = None,
                *, act_order: bool = False) -> QuantResult:
    """GPTQ for one layer's weight on the grid round-to-nearest would use; the result is stored like RTN's.

    Args:
        w: the layer's weight (O, ...), not modified. hessians: one (K, K) per conv group (`layer_hessians`).
        spec: a uniform-grid QuantSpec (tensor, channel or group). mask: bool like w, True = kept, or None.
        act_order: columns in decreasing order of the Hessian's diagonal.

    Returns:
        QuantResult with the RTN scales / side tensors and GPTQ's codes and weight (exactly 0 where pruned).
    """
    rtn = quantize_weight(w, spec, mask)
    shape = tuple(w.shape)
    grid = grid_of(rtn, spec, shape)
    w2 = w.detach().float().reshape(shape[0], -1)
    keep = None if mask is None else mask.reshape(shape[0], -1).bool()
    rows = shape[0] // len(hessians)  # output channels per conv group
    codes = torch.cat([
        gptq_matrix(w2[sl], h, Grid(grid.scale[sl], grid.zero_point[sl], grid.qmin, grid.qmax),
                    None if keep is None else keep[sl], act_order=act_order)
        for sl, h in ((slice(g * rows, (g + 1) * rows), h) for g, h in enumerate(hessians))])
    weight = (codes - grid.zero_point).float() * grid.scale
    if keep is not None:
        weight = torch.where(keep, weight, torch.zeros_like(weight))
    return QuantResult(weight=weight.reshape(shape), codes=codes.reshape(shape), scale=rtn.scale,
                       zero_point=rtn.zero_point, side=rtn.side)


def run_gptq(model: nn.Module, modules: dict[str, nn.Module], plan: dict, x: torch.Tensor, act_order: bool,
             write) -> tuple[dict, float]:
    """GPTQ every planned layer in model order, each on the inputs the already-quantized layers before it give.

    Args:
        model: the copy being compressed (its weights are overwritten layer by layer).
        modules: compressible layers by name. plan: {name: (quant spec, mask)} of the layers GPTQ quantizes.
        x: calibration inputs. act_order: as in `gptq_matrix`. write: (name, QuantResult) -> LayerCompression,
            which stores the result into the module.

    Returns:
        ({name: LayerCompression}, seconds spent).
    """
    start = time.perf_counter()
    done = {}
    for name, (spec, mask) in plan.items():
        module = modules[name]
        hessians = layer_hessians(model, module, x)
        if not hessians:
            raise ValueError(f"GPTQ: layer {name!r} never ran on the calibration data, so it has no inputs to "
                             "measure; skip it with --layer NAME:skip=1")
        done[name] = write(name, gptq_weight(module.weight.detach(), hessians, spec, mask, act_order=act_order))
    return done, time.perf_counter() - start
