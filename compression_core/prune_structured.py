"""Structured pruning that removes channels: filters and neurons leave the network, it becomes a smaller dense one.

A channel is not one layer's business: a conv's output channel c is also input channel c of every layer that reads
it, entry c of the BatchNorm after it, group c of a depthwise conv, and — across a residual addition or a
concatenation — channel c of every other branch added to it. Torch-Pruning's dependency graph (DepGraph, Fang et
al. 2023; the optional extra `pip install 'compression-explorer[pruning]'`) traces the model once through autograd
and returns these coupled sets as *groups*; removing channels of a group removes them everywhere at once, so the
network stays consistent.

What we decide here, the same way for every model:
- which groups are pruned: those whose output-side layers all have an enabled structured spec (skip / another
  method on any of them keeps the group whole). A group whose channels no Linear / Conv reads is the model's
  output (the classifier): it is never pruned and its layers are reported as `protected`.
- how many: exactly round(s * C) of the group's C channels, s = the sparsity of the group's first layer; a
  sparsity that would remove every channel is refused.
- which: the lowest importance (ties: lower channel index first, as everywhere in `prune.py`). Importance per
  channel, over the whole group (mean over its layers, no normalisation): `norm` = sum of |w|^p of everything
  the channel carries (p = the spec's norm: 1 or 2), `bn` = |gamma| of the group's BatchNorms (network slimming;
  groups without a BatchNorm fall back to the L1 norm and a note says so), `taylor` = |w * dL/dw| summed over
  the group (first-order Taylor, on calibration data).

Everything works in place on a model the caller owns (compress' copy). The result records, per module, which
original output channels were kept and the new constructor sizes (`resized`), which `resize_module` applies to a
freshly built architecture when an export is loaded.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, PruneSpec
from .errors import error_line
from .prune import prune_count, score_mask

INSTALL = "pip install 'compression-explorer[pruning]'"
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ROOTS = (nn.Linear, *CONVS)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
TAYLOR_BATCHES = 4
TAYLOR_BATCH_SIZE = 128


class StructuredPruneError(ConfigError):
    """Structured pruning cannot run on this model or setting; the one-line message says why and what works."""


@dataclass(frozen=True)
class StructuredResult:
    """What structured pruning removed.

    kept: module name -> the original output-channel indices it kept, for every module whose output channels
        shrank (convs, linears, BatchNorms, ...).
    original: module name -> its output channels before pruning.
    protected: layers whose output is the model's output (never pruned), in model order.
    resized: module name -> its new constructor sizes (e.g. {"in_channels": 8, "out_channels": 10, "groups": 1}),
        for every module whose parameters changed shape; `resize_module` applies them to a fresh architecture.
    notes: one line per thing a user should know (an importance that fell back, ...).
    """

    kept: dict[str, tuple[int, ...]]
    original: dict[str, int]
    protected: tuple[str, ...]
    resized: dict[str, dict]
    notes: tuple[str, ...] = ()


def torch_pruning():
    """The `torch_pruning` module, or one line saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise StructuredPruneError("structured pruning (channel removal) needs Torch-Pruning: "
                                   f"{INSTALL}; unstructured pruning (--prune magnitude) works without it") from None
    return torch_pruning


def module_dims(m: nn.Module) -> dict | None:
    """The constructor sizes of a module type structured pruning may change; None for any other type."""
    if isinstance(m, CONVS):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features}
    if isinstance(m, NORMS[:3]):
        return {"num_features": m.num_features}
    if isinstance(m, nn.LayerNorm):
        return {"normalized_shape": list(m.normalized_shape)}
    return None


@torch.no_grad()
def resize_module(m: nn.Module, dims: dict) -> None:
    """Give a freshly built module the sizes `dims` (from `StructuredResult.resized`); its values are then loaded.

    Raises:
        StructuredPruneError: `dims` does not fit the module's type.
    """
    have = module_dims(m)
    if have is None or set(dims) != set(have) or not all(
            isinstance(v, int) and v >= 1 for v in _flat(dims.values())):
        raise StructuredPruneError(f"cannot resize a {type(m).__name__} to {dims}: expected positive sizes for "
                                   f"{sorted(have) if have else 'Conv / Linear / BatchNorm / LayerNorm'}")
    for key, value in dims.items():
        setattr(m, key, tuple(value) if key == "normalized_shape" else value)
    if isinstance(m, CONVS):
        if m.in_channels % m.groups or m.out_channels % m.groups:
            raise StructuredPruneError(f"cannot resize a conv to {dims}: channels must be multiples of groups")
        shape = (m.in_channels, m.out_channels // m.groups) if m.transposed else (
            m.out_channels, m.in_channels // m.groups)
        m.weight = nn.Parameter(m.weight.new_zeros(*shape, *m.kernel_size))
        out = m.out_channels
    elif isinstance(m, nn.Linear):
        m.weight = nn.Parameter(m.weight.new_zeros(m.out_features, m.in_features))
        out = m.out_features
    else:
        out = m.num_features if isinstance(m, NORMS[:3]) else m.normalized_shape
    for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        if key != "weight" or not isinstance(m, ROOTS):
            if t.dim() >= 1:  # bias, norm weight, running statistics: one entry per (output) channel
                new = t.new_zeros(out if isinstance(out, tuple) else (out,))
                setattr(m, key, nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new)


def _flat(values) -> list:
    return [x for v in values for x in (v if isinstance(v, list) else [v])]


def prune_channels(model: nn.Module, example: torch.Tensor, specs: dict[str, PruneSpec],
                   calib: tuple[torch.Tensor, torch.Tensor] | None = None) -> StructuredResult:
    """Remove channels from `model` (in place, a model the caller owns) as the structured `specs` say.

    Args:
        model: any module with Linear / Conv layers, in eval mode.
        example: an input batch (one sample is enough) used to trace the graph and to check the result.
        specs: layer name -> enabled structured PruneSpec (the layers to prune; see the module docstring).
        calib: (x, y) calibration data; needed for importance "taylor".

    Returns:
        StructuredResult.

    Raises:
        StructuredPruneError: Torch-Pruning missing, a graph that cannot be traced or pruned consistently (the
            module and the reason), a sparsity that would remove every channel of a layer, taylor without calib.
    """
    tp = torch_pruning()
    names = {m: name for name, m in model.named_modules()}
    before = {name: module_dims(m) for name, m in model.named_modules()}
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    with torch.no_grad():
        out_shape = tuple(model(example).shape)
    graph = _trace(tp, model, example)
    plan, protected, notes = [], [], []
    with _taylor_gradients(model, specs, calib):
        for group in graph.get_all_groups(root_module_types=ROOTS):
            outs = [names[d.target.module] for d, _ in group if graph.is_out_channel_pruning_fn(d.handler)
                    and isinstance(d.target.module, ROOTS)]
            if not any(graph.is_in_channel_pruning_fn(d.handler) and isinstance(d.target.module, ROOTS)
                       for d, _ in group):
                protected.extend(outs)  # nothing reads these channels: they are the model's output
                continue
            if not outs or any(name not in specs for name in outs):
                continue
            spec = specs[outs[0]]
            channels = graph.get_out_channels(group[0].dep.target.module)
            removed = prune_count(spec.sparsity, channels)
            if removed >= channels:
                raise StructuredPruneError(
                    f"sparsity {spec.sparsity:g} would remove all {channels} output channel(s) of layer {outs[0]!r} "
                    f"(round({spec.sparsity:g} x {channels}) = {removed}); use a sparsity below "
                    f"{(channels - 0.5) / channels:.3g} for it, or skip it with --layer {outs[0]}:skip=1")
            if removed:
                scores = _importance(tp, group, spec, notes, outs[0])
                idxs = torch.nonzero(~score_mask(scores, spec.sparsity)).reshape(-1).tolist()
                plan.append((group[0].dep.target.module, group[0].dep.handler, idxs))
    kept, original = {}, {}
    for module, handler, idxs in plan:
        group = graph.get_pruning_group(module, handler, idxs)
        for dep, removed in group:
            if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names:
                name = names[dep.target.module]
                original[name] = graph.get_out_channels(dep.target.module)
                kept[name] = tuple(sorted(set(range(original[name])) - set(removed)))
        group.prune()
    _check_result(model, example, out_shape)
    resized = _resized(model, before, shapes)
    return StructuredResult(kept=kept, original=original, protected=tuple(dict.fromkeys(protected)),
                            resized=resized, notes=tuple(dict.fromkeys(notes)))


def _trace(tp, model: nn.Module, example: torch.Tensor):
    """DepGraph of the model, or one line naming the module where tracing failed."""
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example.clone(), verbose=False)
    except Exception as e:  # any failure of a user model's trace is one line, never a traceback
        raise StructuredPruneError(
            f"structured pruning cannot trace {type(model).__name__}{_where(model, example)}: {type(e).__name__}: "
            f"{error_line(e, 200, first_line=True)}; unstructured pruning (--prune magnitude) still works") from None


def _check_result(model: nn.Module, example: torch.Tensor, out_shape: tuple) -> None:
    """The pruned model still runs and gives outputs of the same shape, or one line naming the module."""
    try:
        with torch.no_grad():
            got = tuple(model(example).shape)
    except Exception as e:  # a connection the graph missed (a hard-coded reshape, a functional weight, ...)
        raise StructuredPruneError(
            f"structured pruning broke {type(model).__name__}'s forward{_where(model, example)} "
            f"({type(e).__name__}: {error_line(e, 160, first_line=True)}): its forward uses channel counts the "
            "dependency graph cannot see (e.g. a hard-coded reshape); unstructured pruning (--prune magnitude) "
            "still works") from None
    if got != out_shape:
        raise StructuredPruneError(f"structured pruning changed {type(model).__name__}'s output shape from "
                                   f"{out_shape} to {got}; unstructured pruning (--prune magnitude) still works")


def _where(model: nn.Module, example: torch.Tensor) -> str:
    """" (last module entered: NAME, Type)": where a forward fails, found by re-running it with hooks."""
    started: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_pre_hook(lambda mod, _, name=name: started.append((name, mod)))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # the failure being located
        pass
    finally:
        for h in handles:
            h.remove()
    return f" (last module entered: {started[-1][0]!r}, {type(started[-1][1]).__name__})" if started else ""


def _resized(model: nn.Module, before: dict, shapes: dict) -> dict[str, dict]:
    """Modules whose sizes changed; refuse a change to a module type an export could not rebuild."""
    resized = {}
    for name, m in model.named_modules():
        dims = module_dims(m)
        if dims is not None and dims != before.get(name):
            resized[name] = dims
        elif dims is None:
            changed = [k for k, t in m.named_parameters(recurse=False) if tuple(t.shape) != shapes.get(
                f"{name}.{k}" if name else k)]
            if changed:
                raise StructuredPruneError(
                    f"structured pruning changed {name!r} ({type(m).__name__}), a module type it cannot rebuild on "
                    "load (Conv / Linear / BatchNorm / LayerNorm only); unstructured pruning still works")
    return resized


def _importance(tp, group, spec: PruneSpec, notes: list[str], name: str) -> torch.Tensor:
    """Per-channel importance of a full group (higher = keep)."""
    if spec.importance == "bn":
        scores = tp.importance.BNScaleImportance(normalizer=None)(group)
        if scores is not None:
            return scores
        notes.append(f"bn importance: the group of {name!r} has no BatchNorm, ranked by L1 norm instead")
    if spec.importance == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)(group)
    norm = 1 if spec.importance == "bn" else spec.norm
    return tp.importance.GroupMagnitudeImportance(p=norm, group_reduction="mean", normalizer=None)(group)


@contextlib.contextmanager
def _taylor_gradients(model: nn.Module, specs: dict[str, PruneSpec], calib):
    """For taylor importance: the gradients of the CE loss on calibration mini-batches in `.grad` while inside;
    cleared on exit (the model is ours; its weights do not change)."""
    on = any(s.importance == "taylor" for s in specs.values())
    if on and calib is None:
        raise StructuredPruneError("taylor importance needs calibration data (x, y): pass calib=; or use importance "
                                   "norm or bn")
    try:
        if on:
            x, y = calib
            with torch.enable_grad(), torch.inference_mode(False):
                model.zero_grad(set_to_none=True)
                for start in range(0, min(len(x), TAYLOR_BATCHES * TAYLOR_BATCH_SIZE), TAYLOR_BATCH_SIZE):
                    xb, yb = x[start:start + TAYLOR_BATCH_SIZE].clone(), y[start:start + TAYLOR_BATCH_SIZE].clone()
                    F.cross_entropy(model(xb), yb).backward()
        yield
    finally:
        model.zero_grad(set_to_none=True)


def compose_structure(first: StructuredResult, then: StructuredResult) -> StructuredResult:
    """The result of pruning `first`, then `then` on the smaller model (gradual pruning): kept indices refer to the
    original channels, sizes are the latest."""
    kept = dict(first.kept)
    original = dict(first.original)
    for name, idxs in then.kept.items():
        before = first.kept.get(name, tuple(range(then.original[name])))
        kept[name] = tuple(before[i] for i in idxs)
        original.setdefault(name, then.original[name])
    return StructuredResult(kept=kept, original=original,
                            protected=tuple(dict.fromkeys(first.protected + then.protected)),
                            resized={**first.resized, **then.resized},
                            notes=tuple(dict.fromkeys(first.notes + then.notes)))
