"""The result of compression: a new model plus, per layer, everything needed to size and pack it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import CompressionConfig, PruneSpec, QuantSpec

# Module types whose `weight` is compressed -> the weight's layout. Axis 0 is always the output channel: it is the
# per-channel quantization axis, the structured-pruning unit and the CSR row. Grouped and depthwise convs keep
# (C_out, C_in / groups, ...). Embedding is not here: its rows are tokens, not output channels.
COMPRESSIBLE_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "(out, in)",
    nn.Conv1d: "(out, in / groups, k)",
    nn.Conv2d: "(out, in / groups, kh, kw)",
    nn.Conv3d: "(out, in / groups, kd, kh, kw)",
}
COMPRESSIBLE = tuple(COMPRESSIBLE_TYPES)
COMPRESSIBLE_NAMES = ", ".join(f"nn.{t.__name__}" for t in COMPRESSIBLE_TYPES)


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named Linear / Conv1d / Conv2d / Conv3d modules in definition order: the layers whose weights we compress.

    A weight Parameter shared by several modules (tied weights) is listed once, under its first module: it is
    compressed once, and every module that shares it computes with the compressed values.
    """
    seen: set[int] = set()
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, COMPRESSIBLE) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            layers.append((name, m))
    return layers


def tied_keys(model: nn.Module, owners: set[str]) -> set[str]:
    """State-dict keys whose Parameter another key already holds (tied weights): stored and counted once.

    Args:
        model: the module whose parameters are compared by identity.
        owners: keys that hold their Parameter when tied (the compressed layers' `NAME.weight`); among other
            keys, the first in `named_parameters` order holds it.

    Returns:
        The keys that are aliases: the model rebuilds their values from the holder when the tie is made again.
    """
    holders: dict[int, list[str]] = {}
    for key, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(key)
    aliases = set()
    for keys in holders.values():
        holder = next((k for k in keys if k in owners), keys[0])
        aliases.update(k for k in keys if k != holder)
    return aliases


@dataclass
class LayerCompression:
    """One compressed layer's weight.

    weight: the final float32 weight the model now uses (dequantized; exactly 0 where pruned).
    mask: bool, True = kept; None when the layer was not pruned.
    codes: integer codes, same shape as weight (uniform: q in [qmin, qmax]; kmeans / pow2: index into
        `codebook`); None when not integer-quantized (bits 32, fp16, bf16).
    scale, zero_point: uniform grid; shape (1,) per tensor or (C_out,) per channel; None otherwise.
    codebook: kmeans centroids or pow2 levels (float32, at most 2^bits entries); None otherwise.
    side: named side tensors in their storage form (group scales, FP / MX / NF4 formats: `QuantResult.side`);
        None otherwise.
    """

    name: str
    shape: tuple[int, ...]
    weight: torch.Tensor
    quant: QuantSpec
    prune: PruneSpec
    skipped: bool = False
    mask: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    side: dict[str, torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return self.weight.numel()

    @property
    def nnz(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.n

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.n


@dataclass
class CompressedModel:
    """`model` is a new module (never the one passed to compress()); `layers` maps module name -> state.

    act_qparams maps a layer name to (scale, zero_point, qmin, qmax) for the fake-quantized input of that layer
    when activation quantization is on. finetune_log holds (step, loss) pairs when fine-tuning ran.
    folded: (conv name, BatchNorm name) pairs whose BN was folded into the conv (the BN is an Identity in
    `model`); fold_note says in one line what folding did, or why it did not run.
    """

    model: nn.Module
    config: CompressionConfig
    layers: dict[str, LayerCompression]
    act_qparams: dict[str, tuple[float, int, int, int]] = field(default_factory=dict)
    finetune_log: list[tuple[int, float]] = field(default_factory=list)
    folded: tuple[tuple[str, str], ...] = ()
    fold_note: str = ""

    @property
    def n_weights(self) -> int:
        return sum(l.n for l in self.layers.values())

    @property
    def nnz(self) -> int:
        return sum(l.nnz for l in self.layers.values())

    @property
    def realized_sparsity(self) -> float:
        return 1.0 - self.nnz / max(self.n_weights, 1)
