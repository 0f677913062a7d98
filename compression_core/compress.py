"""compress(): the one verb that turns a model and a CompressionConfig into a new, compressed model.

Out-of-place: the model passed in is never touched. Order: remove channels (structured pruning,
`prune_structured.py`, before folding so BatchNorm scales can rank channels; the model then is a smaller dense
network) -> fold each BatchNorm into the conv before it (`fold.py`, when config.fold_bn) -> prune masks -> AWQ /
SmoothQuant input scales (`repair_scaling.py`) -> quantize the survivors (zeros stay exactly zero; GPTQ,
`repair_gptq.py`, rounds with error compensation) -> activation calibration -> bias correction -> retraining with
fixed masks (finetune.py; re-quantized after).
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from typing import Callable

import torch
from torch import nn

from . import finetune
from . import prune as prune_ops
from . import quantize as quant_ops
from . import repair_gptq, repair_scaling
from .compressed import CompressedModel, LayerCompression, compressible_layers
from .config import CompressionConfig, PruneSpec, QuantSpec
from .fold import cached_conv_bn_pairs, fold_batchnorms, fold_note
from .methods import prune_method_info, prune_methods, quantizer_info
from .prune import prune_count
from .prune_structured import compose_structure, prune_channels
from .size import size_report

Progress = Callable[[str, float], None]  # (stage, fraction done)
CALIB_SAMPLES = 512


def compress(
    model: nn.Module,
    config: CompressionConfig,
    calib: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Progress | None = None,
    *,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    example: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
) -> CompressedModel:
    """Return a compressed copy of `model` as described by `config`.

    Args:
        model: any module with Linear / Conv1d / Conv2d / Conv3d layers (compressed.COMPRESSIBLE_TYPES); not
            modified.
        config: what to do (global specs plus per-layer overrides).
        calib: (x, y) training samples on the model's device; needed for pruning methods that need calibration
            (taylor), activation quantization, bias correction, repair (gptq / awq / smoothquant), and retraining
            when `train` is not given.
        progress: optional callback (stage, fraction) for the slow stages (retraining: the stage text has an ETA).
        train: (x, y) the whole training split, for retraining (config.finetune_epochs / finetune_steps); batches
            move to the model's device. Without it, retraining uses `calib`.
        example: an input batch for tracing the graph of structured pruning (default: calib's first sample).
        cancel: a threading.Event; setting it stops retraining (`finetune.RetrainCancelled`).

    Returns:
        CompressedModel whose `.model` is a new module in eval mode. A retrained result is cached in this process
        (finetune.cache_key); the same model, config and data return a copy of it (cm.finetune.cached is True).

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
    needs_calib = config.act_bits < 32 or config.bias_correction or (config.retrains and train is None) or \
        config.repair != "none" or any(p.needs_calibration and not skip for _, p, skip in specs.values())
    if needs_calib and calib is None:
        calibrated = "/".join(name for name, info in prune_methods().items() if info.needs_calibration)
        raise ValueError(f"this config needs calibration data ({calibrated} pruning, act_bits, bias correction, "
                         "fine-tuning or repair): pass calib=(x, y)")
    structured = {name: p for name, (_, p, skip) in specs.items()
                  if not skip and p.enabled and prune_method_info(p.method).structured}
    if structured and example is None and calib is None:
        raise ValueError("structured pruning traces the model on an input: pass example= (an input batch) or calib=")
    example = example if example is not None else (calib[0][:1] if calib is not None else None)
    key = finetune.cache_key(model, config, train) if config.retrains and train is not None else None
    hit = finetune.cached(key) if key is not None else None
    if hit is not None:
        cm = copy.deepcopy(hit)
        cm.finetune = dataclasses.replace(cm.finetune, cached=True)
        return cm
    cm, modules, reference, scales = _compress_once(model, config, specs, structured, calib, example)
    if config.act_bits < 32:
        cm.act_qparams = _calibrate_activations(cm.model, modules, config.act_bits, calib)
        attach_activation_quant(cm.model, cm.act_qparams)
    if config.bias_correction:
        _correct_biases(reference, cm.model, modules, calib)
    if config.retrains:
        _retrain(cm, model, specs, structured, calib, train, example, progress, cancel)
    for name, scale in scales.items():  # after retraining, which rebuilds the layers
        cm.layers[name].input_scale = scale
    if config.retrains and key is not None:
        finetune.remember(key, copy.deepcopy(cm))
    return cm


def _compress_once(model, config, specs, structured, calib, example):
    """Copy, remove channels, fold BatchNorms, draw masks, scale inputs (AWQ / SmoothQuant), quantize:
    (cm, layers by name, bias reference, input scales by layer name)."""
    pairs, note = cached_conv_bn_pairs(model) if config.fold_bn else ([], "")  # names are the same in the copy
    new = copy.deepcopy(model).eval()
    dense_shapes = {name: tuple(m.weight.shape) for name, m in compressible_layers(new)}
    structure = None
    if structured and not config.gradual:  # gradual: channels go during retraining
        structure = prune_channels(new, example, structured, calib)
    fold_batchnorms(new, pairs)
    modules = dict(compressible_layers(new))
    unstructured = {name: spec for name, spec in specs.items() if name not in structured}
    masks = {} if config.gradual else _masks(new, modules, unstructured, config, calib)
    started = time.perf_counter()
    scales = repair_scaling.scale_inputs(new, modules, specs, masks, config, calib[0][:CALIB_SAMPLES]) \
        if config.repair in repair_scaling.SCALING_REPAIRS else {}
    reference = copy.deepcopy(new) if config.bias_correction else model  # bias correction compares folded to folded
    layers, gptq_seconds = _quantize_layers(new, modules, masks, specs, config, calib)
    cm = CompressedModel(model=new, config=config, layers=layers, folded=tuple(pairs),
                         fold_note=fold_note(pairs, note, config.fold_bn), structure=structure)
    if config.repair != "none":
        seconds = gptq_seconds if config.repair == "gptq" else time.perf_counter() - started
        cm.repair_stats = {"calib_samples": min(len(calib[0]), CALIB_SAMPLES), "seconds": seconds}
    if structured:
        _mark_dense_shapes(cm, dense_shapes)
        cm.dense_bits = _dense_bits(model, pairs)
    return cm, modules, reference, scales


def _mark_dense_shapes(cm: CompressedModel, dense_shapes: dict) -> None:
    """Record the pre-removal shape of every layer that lost channels (its LayerCompression is the smaller one)."""
    for name, lc in cm.layers.items():
        if dense_shapes[name] != tuple(lc.shape):
            lc.dense_shape = dense_shapes[name]


def _dense_bits(model: nn.Module, pairs) -> int:
    """Size of the uncompressed (folded) model at 32 bits: the dense reference of a model that lost channels."""
    dense = copy.deepcopy(model).eval()
    fold_batchnorms(dense, pairs)
    layers = {name: LayerCompression(name, tuple(m.weight.shape), m.weight.detach(), QuantSpec(), PruneSpec())
              for name, m in compressible_layers(dense)}
    return size_report(CompressedModel(model=dense, config=CompressionConfig(), layers=layers)).dense_bits


def _retrain(cm, model, specs, structured, calib, train, example, progress, cancel) -> None:
    """Retrain cm in place (finetune.retrain), gradual pruning included, then re-quantize every layer."""
    config = cm.config
    data, data_name = (train, "train split") if train is not None else (calib, "calibration batch")
    teacher = copy.deepcopy(model).eval() if config.distill else None
    dense_shapes = {name: lc.dense_shape or tuple(lc.shape) for name, lc in cm.layers.items()}

    def prune_to(fraction: float) -> None:
        scaled = {name: (q, dataclasses.replace(p, sparsity=p.sparsity * fraction), skip)
                  for name, (q, p, skip) in specs.items()}
        if structured:
            _prune_channels_to(cm, example, scaled, structured, calib, dense_shapes)
        _gradual_masks(cm, scaled, structured, calib)

    cm.finetune = finetune.retrain(cm.model, cm.layers, data, config, data_name=data_name, teacher=teacher,
                                   prune_to=prune_to, final_sparsity=1.0, progress=progress, cancel=cancel)
    cm.finetune_log = list(cm.finetune.log)
    modules = dict(compressible_layers(cm.model))
    with torch.no_grad():
        for name, lc in cm.layers.items():
            if not lc.skipped:
                cm.layers[name] = _compress_layer(name, modules[name], lc.mask, lc.quant, lc.prune, False)
                cm.layers[name].dense_shape = lc.dense_shape


def _gradual_masks(cm, scaled, structured, calib) -> None:
    """One gradual stage of mask pruning: masks at the stage's sparsity on the current float weights."""
    modules = dict(compressible_layers(cm.model))
    unstructured = {name: spec for name, spec in scaled.items() if name not in structured}
    masks = _masks(cm.model, modules, unstructured, cm.config, calib)
    with torch.no_grad():
        for name, mask in masks.items():
            if mask is not None:
                modules[name].weight.mul_(mask)
                cm.layers[name] = dataclasses.replace(cm.layers[name], mask=mask, weight=modules[name].weight.detach())


def _prune_channels_to(cm, example, scaled, structured, calib, dense_shapes) -> None:
    """One gradual stage of channel removal: each structured layer down to its stage's share of its original
    output channels; the kept indices compose with the earlier stages'."""
    modules = dict(compressible_layers(cm.model))
    step_specs = {}
    for name in structured:
        spec, total, now = scaled[name][1], dense_shapes[name][0], modules[name].weight.shape[0]
        extra = prune_count(spec.sparsity, total) - (total - now)  # more channels to remove now
        if extra > 0:
            step_specs[name] = dataclasses.replace(spec, sparsity=extra / now)
    if not step_specs:
        return
    step = prune_channels(cm.model, example, step_specs, calib)
    cm.structure = step if cm.structure is None else compose_structure(cm.structure, step)
    for name, m in compressible_layers(cm.model):
        lc = cm.layers[name]
        lc.weight, lc.shape = m.weight.detach(), tuple(m.weight.shape)
        lc.dense_shape = dense_shapes[name] if lc.shape != dense_shapes[name] else None
        lc.mask = None if lc.mask is None or lc.mask.shape != m.weight.shape else lc.mask


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


def _quantize_layers(model, modules, masks, specs, config, calib) -> tuple[dict[str, LayerCompression], float]:
    """Every layer rounded to nearest, or with GPTQ (config.repair gptq) for the quantized, unskipped layers;
    returns the layers and the seconds GPTQ took."""
    if config.repair != "gptq":
        return {name: _compress_layer(name, modules[name], masks.get(name), *specs[name]) for name in modules}, 0.0
    plan = {}
    for name, (quant, _, skip) in specs.items():
        if not skip and quant.enabled:
            repair_gptq.check_layer(name, modules[name])
            if quantizer_info(quant.quantizer).kind != "grid":
                raise ValueError(f"repair gptq needs quantizer uniform; layer {name!r} is overridden to "
                                 f"{quant.quantizer}")
            plan[name] = (quant, masks.get(name))

    def write(name, q):
        return _store(modules[name], _layer(name, modules[name].weight.detach(), q, *specs[name][:2],
                                            masks.get(name)))

    # the other layers (skipped, or pruned only) first, so GPTQ sees their final weights
    others = {name: _compress_layer(name, modules[name], masks.get(name), *specs[name])
              for name in modules if name not in plan}
    done, seconds = repair_gptq.run_gptq(model, modules, plan, calib[0][:CALIB_SAMPLES], config.act_order, write)
    return {name: others.get(name) or done[name] for name in modules}, seconds


def _layer(name, weight, q, quant, prune, mask) -> LayerCompression:
    return LayerCompression(name, tuple(weight.shape), q.weight, quant, prune, mask=mask, codes=q.codes,
                            scale=q.scale, zero_point=q.zero_point, codebook=q.codebook, side=q.side)


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
    return _layer(name, weight, quant_ops.quantize_weight(weight, quant, mask), quant, prune, mask)


@torch.no_grad()
def _compress_layer(name: str, module: nn.Module, mask, quant: QuantSpec, prune: PruneSpec,
                    skip: bool) -> LayerCompression:
    """`compress_weight` with the layer's mask (None: nothing pruned by mask), written into `module` (the layer
    keeps the module's weight)."""
    w = module.weight.detach()
    if skip:
        return LayerCompression(name, tuple(w.shape), w, QuantSpec(), PruneSpec(), skipped=True)
    layer = compress_weight(w, quant, mask=mask, name=name)  # masks were drawn (or channels removed) already
    layer.prune = prune
    return _store(module, layer)


@torch.no_grad()
def _store(module: nn.Module, layer: LayerCompression) -> LayerCompression:
    """Write the layer's new weight into `module`; the layer then holds the module's weight."""
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
        # (N, C, ...) output error without bias
        err = repair_scaling.linear_part(ref, inp) - repair_scaling.linear_part(m, inp)
        dims = [d for d in range(err.dim()) if d != 1]
        m.bias.add_(err.mean(dim=dims))
