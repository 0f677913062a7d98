"""compress(): the one verb that turns a model and a CompressionConfig into a new, compressed model.

Out-of-place: the model passed in is never touched. Order: fold each BatchNorm into the conv before it (`fold.py`,
when config.fold_bn) -> prune -> quantize the survivors (zeros stay exactly zero) -> activation calibration ->
bias correction -> fine-tuning with fixed masks (re-quantized after).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import prune as prune_ops
from . import quantize as quant_ops
from .compressed import CompressedModel, LayerCompression, compressible_layers
from .config import CompressionConfig, PruneSpec, QuantSpec
from .fold import cached_conv_bn_pairs, fold_batchnorms, fold_note
from .methods import prune_method_info, prune_methods

Progress = Callable[[str, float], None]  # (stage, fraction done)
CALIB_SAMPLES = 512
FINETUNE_BATCH = 128
FINETUNE_LR = 1e-4


def compress(
    model: nn.Module,
    config: CompressionConfig,
    calib: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> CompressedModel:
    """Return a compressed copy of `model` as described by `config`.

    Args:
        model: any module with Linear / Conv1d / Conv2d / Conv3d layers (compressed.COMPRESSIBLE_TYPES); not
            modified.
        config: what to do (global specs plus per-layer overrides).
        calib: (x, y) training samples on the model's device; needed for pruning methods that need calibration
            (taylor), activation quantization, bias correction and fine-tuning.
        progress: optional callback (stage, fraction) for the slow stages.

    Returns:
        CompressedModel whose `.model` is a new module in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4))
        >>> cm = compress(net, CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5)))
        >>> cm.layers["0"].nnz
        16
    """
    _check_finite(model)
    specs = {name: config.for_layer(name) for name, _ in compressible_layers(model)}
    unknown = {o.name for o in config.overrides} - specs.keys()
    if unknown:
        raise ValueError(f"override names no compressible layer: {sorted(unknown)}; layers are {list(specs)}")
    needs_calib = config.act_bits < 32 or config.bias_correction or config.finetune_steps > 0 or any(
        prune_method_info(p.method).needs_calibration and p.enabled and not skip for _, p, skip in specs.values())
    if needs_calib and calib is None:
        calibrated = "/".join(name for name, info in prune_methods().items() if info.needs_calibration)
        raise ValueError(f"this config needs calibration data ({calibrated} pruning, act_bits, bias correction or "
                         "fine-tuning): pass calib=(x, y)")

    pairs, note = cached_conv_bn_pairs(model) if config.fold_bn else ([], "")  # names are the same in the copy
    new = copy.deepcopy(model).eval()
    fold_batchnorms(new, pairs)
    reference = copy.deepcopy(new) if config.bias_correction else model  # bias correction compares folded to folded
    modules = dict(compressible_layers(new))
    masks = _masks(new, modules, specs, config, calib)
    layers = {name: _compress_layer(name, modules[name], masks.get(name), *specs[name]) for name in modules}

    cm = CompressedModel(model=new, config=config, layers=layers, folded=tuple(pairs),
                         fold_note=fold_note(pairs, note, config.fold_bn))
    if config.act_bits < 32:
        cm.act_qparams = _calibrate_activations(new, modules, config.act_bits, calib)
        attach_activation_quant(new, cm.act_qparams)
    if config.bias_correction:
        _correct_biases(reference, new, modules, calib)
    if config.finetune_steps > 0:
        cm.finetune_log = _finetune(cm, modules, calib, config.finetune_steps, config.seed, progress)
    return cm


# ---- pruning + weight quantization -------------------------------------------------------------

def _masks(model, modules, specs, config, calib) -> dict[str, torch.Tensor | None]:
    prune_specs = {name: p for name, (_, p, skip) in specs.items() if not skip and p.enabled}
    if not prune_specs:
        return {}
    calibration: dict[str, torch.Tensor] = {}
    for method in dict.fromkeys(p.method for p in prune_specs.values()):  # in first-use order
        info = prune_method_info(method)
        if info.needs_calibration:
            x, y = calib
            calibration.update(info.calibrate(model, [n for n, p in prune_specs.items() if p.method == method], x, y))
    weights = {name: modules[name].weight.detach() for name in prune_specs}
    return prune_ops.compute_masks(weights, prune_specs, calibration=calibration, seed=config.seed)


@torch.no_grad()
def compress_weight(weight: torch.Tensor, quant: QuantSpec = QuantSpec(), prune: PruneSpec = PruneSpec(), *,
                    mask: torch.Tensor | None = None, name: str = "weight", seed: int = 0) -> LayerCompression:
    """Prune one weight tensor, then quantize its survivors: the per-layer step of `compress`, out of place.

    Args:
        weight: a layer's weight, (C_out, ...) — not modified.
        quant: how the (surviving) values are quantized.
        prune: how the tensor is pruned on its own (global ranking needs all layers: `compress` passes `mask`).
            Methods that need calibration data (taylor) need `mask`.
        mask: bool, True = kept, computed elsewhere; None = from `prune` (no mask when it is not enabled).
        name: the layer's name (it also seeds random pruning, with `seed`).
        seed: seeds random pruning.

    Returns:
        LayerCompression with the new weight (exactly 0 where pruned), the mask and the quantizer's codes.

    Example:
        >>> layer = compress_weight(torch.randn(4, 8), QuantSpec(bits=2), PruneSpec(sparsity=0.5))
        >>> layer.nnz, int(layer.weight.count_nonzero()) <= 16, layer.codes.unique().numel() <= 4
        (16, True, True)
    """
    if mask is None and prune.enabled:
        mask = prune_ops.compute_masks({name: weight}, {name: prune}, seed=seed)[name]
    q = quant_ops.quantize_weight(weight, quant, mask)
    return LayerCompression(name, tuple(weight.shape), q.weight, quant, prune, mask=mask, codes=q.codes,
                            scale=q.scale, zero_point=q.zero_point, codebook=q.codebook, side=q.side)


@torch.no_grad()
def _compress_layer(name: str, module: nn.Module, mask, quant: QuantSpec, prune: PruneSpec,
                    skip: bool) -> LayerCompression:
    """`compress_weight` with the layer's mask, written into `module` (the layer keeps the module's weight)."""
    w = module.weight.detach()
    if skip:
        return LayerCompression(name, tuple(w.shape), w, QuantSpec(), PruneSpec(), skipped=True)
    layer = compress_weight(w, quant, prune, mask=mask, name=name)
    module.weight.copy_(layer.weight)
    layer.weight = module.weight.detach()
    return layer


def _check_finite(model: nn.Module) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"model tensor {name!r} contains NaN or Inf; fix the checkpoint before compressing")


# ---- activations -------------------------------------------------------------------------------

@torch.no_grad()
def _calibrate_activations(model, modules, bits, calib) -> dict[str, tuple[float, int, int, int]]:
    """Min/max of each compressible layer's input over a calibration batch -> asym per-tensor qparams."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def observe(name):
        def hook(_, inputs):
            x = inputs[0]
            lo[name] = min(lo.get(name, 0.0), float(x.min()))
            hi[name] = max(hi.get(name, 0.0), float(x.max()))
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in modules.items()]
    try:
        x = calib[0][:CALIB_SAMPLES]
        for start in range(0, len(x), 256):
            model(x[start:start + 256])
    finally:
        for h in handles:
            h.remove()
    return {n: quant_ops.activation_qparams(lo[n], hi[n], bits) for n in modules if n in lo}


def attach_activation_quant(model: nn.Module, act_qparams: dict[str, tuple[float, int, int, int]]) -> None:
    """Install a forward pre-hook that fake-quantizes the input of each named layer (on a model we own)."""
    modules = dict(model.named_modules())
    for name, (scale, zp, qmin, qmax) in act_qparams.items():
        def hook(_, inputs, scale=scale, zp=zp, qmin=qmin, qmax=qmax):
            return (quant_ops.fake_quantize_activation(inputs[0], scale, zp, qmin, qmax),) + tuple(inputs[1:])
        modules[name].register_forward_pre_hook(hook)


# ---- repair ------------------------------------------------------------------------------------

@torch.no_grad()
def _correct_biases(original, new, modules, calib) -> None:
    """Bias correction: shift each layer's bias by the mean output error E[W x] - E[W_q x] on calibration data.

    Layers are corrected in order with the already-corrected model feeding them, so errors do not compound.
    """
    x = calib[0][:CALIB_SAMPLES]
    ref_modules = dict(compressible_layers(original))
    for name, m in modules.items():
        if m.bias is None:
            continue
        captured = {}
        h = m.register_forward_pre_hook(lambda _, inp: captured.__setitem__("x", inp[0]))
        try:
            new(x)
        finally:
            h.remove()
        inp = captured["x"]
        ref = ref_modules[name]
        err = _linear_part(ref, inp) - _linear_part(m, inp)  # (N, C, ...) output error without bias
        dims = [d for d in range(err.dim()) if d != 1]
        m.bias.add_(err.mean(dim=dims))


def _linear_part(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(x, m.weight)
    return m._conv_forward(x, m.weight, None)


# ---- fine-tuning -------------------------------------------------------------------------------

def _finetune(cm: CompressedModel, modules, calib, steps: int, seed: int, progress) -> list[tuple[int, float]]:
    """Quantization-aware fine-tuning: `steps` Adam steps with masks fixed, then the final re-quantization.

    The float weights are the master copy; each step runs forward and backward through their quantized version
    and applies the gradient to the floats (straight-through estimator), so training sees the grid it will be
    stored on. Gradients of pruned weights are zeroed, so pruned weights stay exactly zero; skipped layers do
    not move. At the end the float weights are re-quantized with each layer's spec, so the stored codes
    describe the final model.
    """
    model = cm.model
    x, y = calib
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.is_floating_point()], lr=FINETUNE_LR)
    quantized = [name for name, layer in cm.layers.items() if not layer.skipped and layer.quant.enabled]
    log = []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(x), (min(FINETUNE_BATCH, len(x)),), generator=gen).to(x.device)
        masters = {}
        with torch.no_grad():
            for name in quantized:
                w, layer = modules[name].weight, cm.layers[name]
                masters[name] = w.detach().clone()
                w.copy_(quant_ops.quantize_weight(masters[name], layer.quant, layer.mask).weight)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for name, master in masters.items():  # straight-through: the step moves the float weights
                modules[name].weight.copy_(master)
        for name, layer in cm.layers.items():
            if layer.mask is not None:
                modules[name].weight.grad.mul_(layer.mask)
            if layer.skipped:
                modules[name].weight.grad.zero_()
        opt.step()
        log.append((step + 1, loss.item()))
        if progress:
            progress("finetune", (step + 1) / steps)
    model.eval()
    with torch.no_grad():
        for name, layer in cm.layers.items():
            if not layer.skipped:
                cm.layers[name] = _compress_layer(name, modules[name], layer.mask, layer.quant, layer.prune, False)
    return log
