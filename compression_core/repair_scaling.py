"""Activation-aware input-channel scaling before rounding: AWQ (Lin et al. 2023) and SmoothQuant (Xiao et al. 2022).

Both pick one positive scale s_j per input channel j of a layer and compute y = (W diag(s)) (x / s): the weight's
input channel j is multiplied by s_j and the layer divides its input by s, which leaves the fp32 function unchanged
(up to float rounding). Only then is the weight rounded, so the grid sees W diag(s):

    AWQ          s = m^α / sqrt(max(m^α) min(m^α)),  m_j = mean |x_j|,  α in {0, 0.05, ..., 1} chosen per layer
                 to minimise || x W^T - (x / s) Q(W diag(s))^T ||^2 on calibration inputs (α = 0 is RTN)
    SmoothQuant  s_j = max |x_j|^α / max |W_:,j|^(1-α)  (both clamped to >= 1e-5), α = config.alpha: it moves
                 activation outliers into the weights, so 8-bit activations (act_bits 8) clip less

For a convolution channel j means input channel j (all kernel positions of it; grouped and depthwise convs scale
the channels of each group's own weights). The 1/s is not folded into the previous operation: each scaled layer
keeps it as an exact input scaling (a forward pre-hook, `attach_input_scales`), and the C_in float32 scales are
stored beside the weight (size.py counts them, export writes them as the layer's `input_scale` section).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CompressionConfig
from .quantize import quantize_weight

SCALING_REPAIRS = ("awq", "smoothquant")
AWQ_ALPHAS = torch.linspace(0.0, 1.0, 21)
AWQ_SAMPLES = 64  # calibration samples whose layer inputs the AWQ search measures the output error on
MIN_STAT = 1e-5
CHUNK = 256


def linear_part(module: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's output without its bias, with `weight` (default: its own) in place of its weight."""
    weight = module.weight if weight is None else weight
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return module._conv_forward(x, weight, None)


def _channels(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(rows, C_in) view of an input: Linear's channels are the last dim, a convolution's dim 1."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return x.transpose(0, 1).reshape(x.shape[1], -1).T


def per_input_channel(module: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """s (C_in,) laid out to broadcast over the weight (O, C_in / groups, *kernel): each row sees its group's channels.

    Example:
        >>> conv = nn.Conv2d(4, 2, 3, groups=2)
        >>> per_input_channel(conv, torch.tensor([1., 2., 3., 4.])).flatten().tolist()
        [1.0, 2.0, 3.0, 4.0]
    """
    w = module.weight
    groups = getattr(module, "groups", 1)
    rows = s.reshape(groups, 1, -1).expand(groups, w.shape[0] // groups, -1).reshape(w.shape[0], -1)
    return rows.reshape(*rows.shape, *([1] * (w.dim() - 2)))


def _input_shape(module: nn.Module, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s if isinstance(module, nn.Linear) else s.reshape(1, -1, *([1] * (x.dim() - 2)))


def attach_input_scales(model: nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Install a forward pre-hook that divides the input of each named layer by its scales (on a model we own)."""
    modules = dict(model.named_modules())
    for name, s in scales.items():
        def hook(module, inputs, s=s):
            return (inputs[0] / _input_shape(module, s.to(inputs[0].device), inputs[0]),) + tuple(inputs[1:])
        modules[name].register_forward_pre_hook(hook)


@torch.no_grad()
def input_stats(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor, keep: int = 0) -> dict[str, dict]:
    """Per layer: {"absmax", "absmean"} over input channels (C_in,) on `x`, and "x": the inputs of the first
    `keep` samples (for the AWQ search)."""
    stats: dict[str, dict] = {name: {"absmax": None, "sum": 0.0, "rows": 0, "x": []} for name in modules}

    def observe(name):
        def hook(module, inputs):
            st, rows = stats[name], _channels(module, inputs[0]).abs().float()
            top = rows.amax(0)
            st["absmax"] = top if st["absmax"] is None else torch.maximum(st["absmax"], top)
            st["sum"], st["rows"] = st["sum"] + rows.sum(0), st["rows"] + len(rows)
            if sum(len(t) for t in st["x"]) < keep:
                st["x"].append(inputs[0][:keep])
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in modules.items()]
    try:
        for start in range(0, len(x), CHUNK):
            model(x[start:start + CHUNK])
    finally:
        for h in handles:
            h.remove()
    return {n: {"absmax": st["absmax"], "absmean": st["sum"] / max(st["rows"], 1),
                "x": torch.cat(st["x"])[:keep] if st["x"] else None} for n, st in stats.items()}


def smoothquant_scales(module: nn.Module, act_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^α / max|W_:,j|^(1-α), both maxima clamped to >= 1e-5 (as SmoothQuant does)."""
    w = module.weight.detach().abs()
    groups = getattr(module, "groups", 1)
    per_row = w.reshape(w.shape[0], w.shape[1], -1).amax(2)  # (O, C_in / groups)
    w_max = per_row.reshape(groups, -1, per_row.shape[1]).amax(1).reshape(-1)  # (C_in,)
    return act_absmax.clamp_min(MIN_STAT).pow(alpha) / w_max.clamp_min(MIN_STAT).pow(1.0 - alpha)


@torch.no_grad()
def awq_scales(module: nn.Module, act_absmean: torch.Tensor, x: torch.Tensor, spec, mask=None) -> torch.Tensor:
    """The AWQ scales of the α (AWQ_ALPHAS) whose rounded, scaled weight gives the least output error on x."""
    reference = linear_part(module, x)
    w = module.weight.detach()
    mean = act_absmean.clamp_min(MIN_STAT)
    best, best_err = torch.ones_like(mean), None
    for alpha in AWQ_ALPHAS.tolist():
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        col = per_input_channel(module, s)
        q = quantize_weight(w * col, spec, mask).weight
        err = float((linear_part(module, x / _input_shape(module, s, x), q) - reference).pow(2).mean())
        if best_err is None or err < best_err:  # α = 0 comes first: ties keep plain rounding
            best, best_err = s, err
    return best


@torch.no_grad()
def scale_inputs(model: nn.Module, modules: dict[str, nn.Module], specs: dict, masks: dict,
                 config: CompressionConfig, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Choose the input scales of every layer the repair applies to, scale the weights and attach the 1/s hooks.

    Args:
        model: the copy being compressed (modified in place). modules: its compressible layers by name.
        specs: {name: (quant, prune, skip)}. masks: {name: bool mask}. config: repair "awq" or "smoothquant".
        x: calibration inputs.

    Returns:
        {name: s (C_in,) float32} for the scaled layers: AWQ the layers whose weights are quantized, SmoothQuant
        every layer not skipped (its input is quantized to act_bits).
    """
    awq = config.repair == "awq"
    names = [n for n, (q, _, skip) in specs.items() if not skip and (q.enabled or not awq)]
    stats = input_stats(model, {n: modules[n] for n in names}, x, keep=AWQ_SAMPLES if awq else 0)
    scales = {}
    for name in names:
        module, st = modules[name], stats[name]
        if st["absmax"] is None:  # the layer never ran on the calibration data: nothing to measure
            continue
        s = awq_scales(module, st["absmean"], st["x"], specs[name][0], masks.get(name)) if awq \
            else smoothquant_scales(module, st["absmax"], config.alpha)
        module.weight.mul_(per_input_channel(module, s.to(module.weight.dtype)))
        scales[name] = s.float()
    attach_input_scales(model, scales)
    return scales
