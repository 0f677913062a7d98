"""BatchNorm folding: a BatchNorm that directly follows a conv becomes part of the conv's weight and bias.

In eval mode BN computes y = (x - mean) / sqrt(var + eps) * gamma + beta per channel, so after a conv
(W, b) it is the conv (W * s, (b - mean) * s + beta) with s = gamma / sqrt(var + eps) per output channel.
`compress` folds before pruning and quantization, so the grid is fitted to the weights the model really uses
and the BN's four tensors are no longer stored; the BN module becomes an `nn.Identity`.

Which BN follows which conv is read from the model's graph (`torch.fx.symbolic_trace`): a BN is folded only when
its one input is a conv's output, nothing else reads that output, each module is called once, the conv's weight
is not shared with another module (tied), the channel counts agree and the BN keeps running statistics. A model
fx cannot trace (data-dependent control flow in `forward`) is left unfolded and the note says why; folding never
fails a compression.

Tracing patches `nn.Module.__call__` for the whole process while it runs, so it is done under one lock (two
tracers interleaving could leave the patch in place) and at most once per model object (`cached_conv_bn_pairs`):
a dashboard traces each loaded model once, not once per config. A forward running in another thread during that
one trace can still fail (it then reports one error line; nothing wrong is stored).
"""
from __future__ import annotations

import copy
import threading
import weakref
from collections import Counter

import torch
from torch import fx, nn

from .errors import shown

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


_TRACE_LOCK = threading.Lock()
_PAIRS: "weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[str, str]], str]]" = weakref.WeakKeyDictionary()


def cached_conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """`conv_bn_pairs` of a copy of `model` (tracing may add attributes to what it traces), once per model object:
    we never modify a model, so the answer holds."""
    with _TRACE_LOCK:
        if model not in _PAIRS:
            _PAIRS[model] = conv_bn_pairs(copy.deepcopy(model))
        pairs, note = _PAIRS[model]
    return list(pairs), note


def conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """(conv name, BN name) pairs that can be folded, and a one-line note (why none, when there are none).

    Args:
        model: any module; traced symbolically, never run.

    Returns:
        The pairs in graph order and a note: "" when pairs were found, otherwise the reason there are none.
    """
    modules = dict(model.named_modules())
    if not any(isinstance(m, BATCHNORMS) for m in modules.values()):
        return [], "the model has no BatchNorm"
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # any failure of tracing means "do not fold", never a failed compression
        reason = shown(str(e).strip().splitlines()[0] if str(e).strip() else "", 120)
        return [], f"not folded: torch.fx cannot trace the model ({type(e).__name__}: {reason})"
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))  # > 1: tied
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, BATCHNORMS) or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        conv = modules.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        if (isinstance(conv, CONVS) and len(prev.users) == 1 and calls[prev.target] == calls[node.target] == 1
                and uses[id(conv.weight)] == 1 and bn.running_mean is not None
                and conv.out_channels == bn.num_features):
            pairs.append((prev.target, node.target))
    return pairs, "" if pairs else "no BatchNorm directly follows a conv"


@torch.no_grad()
def fold_batchnorms(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BN into its conv, in place on a model we own, and replace the BN by `nn.Identity`.

    The arithmetic runs in float64 and is stored at the conv weight's dtype. A conv without a bias gets one.
    """
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        w = conv.weight
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.bias is not None else 0.0)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        w.copy_((w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
        conv.bias = nn.Parameter((bias * scale + shift).to(w.dtype), requires_grad=w.requires_grad)
        replace_with_identity(model, bn_name)


def replace_with_identity(model: nn.Module, name: str) -> None:
    """Put an `nn.Identity` where the submodule `name` was (a folded BN)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, nn.Identity())


def fold_note(pairs: list[tuple[str, str]], note: str, enabled: bool) -> str:
    """The one line the record carries about folding."""
    if not enabled:
        return "off (fold_bn is False)"
    return f"folded {len(pairs)} BatchNorm layer(s) into the preceding conv" if pairs else note
