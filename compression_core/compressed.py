"""The result of compression: a new model plus, per layer, everything needed to size and pack it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import CompressionConfig, PruneSpec, QuantSpec

COMPRESSIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named Linear / Conv1d / Conv2d modules in definition order: the layers whose weights we compress."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE)]


@dataclass
class LayerCompression:
    """One compressed layer's weight.

    weight: the final float32 weight the model now uses (dequantized; exactly 0 where pruned).
    mask: bool, True = kept; None when the layer was not pruned.
    codes: integer codes, same shape as weight (uniform: q in [qmin, qmax]; kmeans / pow2: index into
        `codebook`); None when not integer-quantized (bits 32, fp16, bf16).
    scale, zero_point: uniform grid; shape (1,) per tensor or (C_out,) per channel; None otherwise.
    codebook: kmeans centroids or pow2 levels (float32, at most 2^bits entries); None otherwise.
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
    """

    model: nn.Module
    config: CompressionConfig
    layers: dict[str, LayerCompression]
    act_qparams: dict[str, tuple[float, int, int, int]] = field(default_factory=dict)
    finetune_log: list[tuple[int, float]] = field(default_factory=list)

    @property
    def n_weights(self) -> int:
        return sum(l.n for l in self.layers.values())

    @property
    def nnz(self) -> int:
        return sum(l.nnz for l in self.layers.values())

    @property
    def realized_sparsity(self) -> float:
        return 1.0 - self.nnz / max(self.n_weights, 1)
