"""Honest size of a compressed model: bits for values, sparse index, quantization metadata and every other tensor.

Each compressible layer is costed in up to four storage formats and the smallest wins (ties go to the simpler
format, in the order below). `export.py` writes exactly the layout chosen here, so the file agrees with the report.

    dense     n entries x w                                         (no index; pruned weights store the code of 0)
    bitmask   n bits + nnz x w
    csr       (rows+1) x ceil(log2(nnz+1)) + nnz x ceil(log2(cols)) + nnz x w     rows = shape[0], cols = n / rows
    relative  (nnz + fillers) x (w + index_bits)                    (Deep Compression relative index)

w is the value width: the quantizer's bits for integer codes (uniform / kmeans / pow2), 16 for fp16 / bf16, 32
when the layer is not quantized or skipped. Sparse formats are only considered for layers with a mask. How a
quantizer stores its values and side data comes from its registry entry (`methods.QuantizerInfo.value_storage`
/ `scale_storage`, read through `value_kind` / `scale_kind`).

Zero codes. Grids always contain 0 (sym: code 0, asym: the zero point), so a pruned weight is just a code.
A codebook (kmeans / pow2) may lack an exact 0; a format that stores pruned positions (dense, or relative with
fillers) then needs one extra code, K, for 0: w = max(bits, ceil(log2(K + 1))), i.e. one more bit only when the
codebook is full. The 0 level is implied by the code and not stored.

Relative index. Each stored entry keeps the gap g = number of zeros skipped since the previous stored entry
(position difference - 1; Deep Compression's convention, where 3 bits reach a difference of 8) in `index_bits`
bits k. A gap larger than 2^k - 1 is bridged by filler entries (a stored 0 with gap 2^k - 1, covering 2^k
positions each), so a gap g needs floor(g / 2^k) fillers. Zeros after the last nonzero are not stored.

Metadata: grids (scale_storage "scale") store one float32 scale per channel (or one per tensor) and, for asym,
one int32 zero point per scale; sym zero points are implied 0 and not stored. Codebooks store K float32 levels.
Side data (group scales, a scale stored as fp16 / e8m0, FP / MX / NF4 formats: the quantizer's `side_layout`)
counts every side tensor at its storage width (quantize_blocks.SIDE_KINDS): e.g. one 8-bit E8M0 scale per 32
MX weights, or NF4's int8 block scales + one float32 factor per 256 of them + one float32 mean. Codes of a
padded last block are not stored or counted: n is the layer's real weight count.
A layer whose input is fake-quantized (act_qparams) stores a float32 scale and an int32 zero point (64 bits);
qmin / qmax follow from the config's act_bits. A layer whose input channels AWQ / SmoothQuant scaled
(`input_scale`, repair_scaling.py: not folded into the previous operation) stores one float32 per input channel.

Other tensors: every state-dict entry that is not a compressible layer's weight (biases, norm weights, running
statistics) is counted at its own dtype's width. BatchNorm's `num_batches_tracked` is skipped: inference does
not read it. A Parameter shared by several modules (tied weights) is counted once (`compressed.tied_keys`).
A BatchNorm folded into its conv (fold.py) is gone from the model: its four tensors are not counted, the conv's
new bias is. The dense reference counts the same tensors, floats at 32 bits (other dtypes at their own width).

Structured pruning (prune_structured.py) leaves a smaller dense model: its layers are costed at their new shapes,
with no index (their `mask` is None), and the dense reference is the original model's (`cm.dense_bits`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .compressed import CompressedModel, LayerCompression, tied_keys
from .methods import quantizer_info
from .quantize_blocks import SIDE_KINDS

FORMATS = ("dense", "bitmask", "csr", "relative")
FLOAT_BITS = 32  # width of an uncompressed float, of a scale and of a codebook level
ZERO_POINT_BITS = 32
ACT_QPARAM_BITS = 64  # float32 scale + int32 zero point per quantized layer input
SKIPPED_BUFFERS = ("num_batches_tracked",)


@dataclass(frozen=True)
class LayerSize:
    """Storage of one layer's weight in its winning format.

    bits: the layer's quantization width (32 = not quantized, 16 = fp16 / bf16 or int16 codes).
    value_bits: width of one stored value in the winning format (bits, or bits + 1 when a full codebook
        needs an extra code for 0). entries: number of stored values (n dense, nnz bitmask / csr,
        nnz + fillers relative). index_bits: total bits of the sparse index. meta_bits = scale_bits +
        codebook_bits + other_bits: the weight's scales, zero points and side tensors; its codebook levels; the
        activation qparams and AWQ / SmoothQuant input scales of the layer.
        total_bits = entries * value_bits + index_bits + meta_bits.
    candidates: (format, total bits) for every format that was considered, in FORMATS order.
    """

    name: str
    shape: tuple[int, ...]
    n: int
    nnz: int
    bits: int
    index_format: str
    value_bits: int
    index_bits: int
    meta_bits: int
    total_bits: int
    entries: int
    fillers: int
    candidates: tuple[tuple[str, int], ...]
    scale_bits: int
    codebook_bits: int
    other_bits: int

    def breakdown(self) -> dict[str, int]:
        """total_bits by what they store, as a record's layer row carries them: value_bits (all stored values,
        entries x width), index_bits, scale_bits, codebook_bits, other_bits; they sum to total_bits."""
        return {"value_bits": self.entries * self.value_bits, "index_bits": self.index_bits,
                "scale_bits": self.scale_bits, "codebook_bits": self.codebook_bits, "other_bits": self.other_bits}


@dataclass(frozen=True)
class SizeReport:
    """Whole-model size. bits_per_weight = (sum of layer total bits) / (sum of layer n)."""

    layers: tuple[LayerSize, ...]
    other_bits: int
    total_bits: int
    total_bytes: int
    dense_bits: int
    dense_bytes: int
    compression_ratio: float
    bits_per_weight: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [{**asdict(l), "shape": list(l.shape), "candidates": dict(l.candidates)} for l in self.layers]
        return d


def size_report(cm: CompressedModel, model_state: dict[str, torch.Tensor] | None = None) -> SizeReport:
    """Cost every layer in its smallest storage format and add everything else the model needs.

    Args:
        cm: the compressed model (its layers' masks, codes and quantization parameters).
        model_state: the state dict to count non-weight tensors from; defaults to `cm.model.state_dict()`.

    Returns:
        SizeReport with one LayerSize per entry of `cm.layers` (in order) and the totals.
    """
    state = cm.model.state_dict() if model_state is None else model_state
    layers = tuple(layer_size(lc, cm.config.index_bits, lc.name in cm.act_qparams) for lc in cm.layers.values())
    other_bits = dense_other = 0
    for key, t in other_tensors(cm, state).items():
        own = t.numel() * t.element_size() * 8
        other_bits += own
        dense_other += t.numel() * FLOAT_BITS if t.is_floating_point() else own
    layer_bits = sum(l.total_bits for l in layers)
    n_weights = sum(l.n for l in layers)
    total = layer_bits + other_bits
    dense = sum(l.n for l in layers) * FLOAT_BITS + dense_other if cm.dense_bits is None else cm.dense_bits
    return SizeReport(
        layers=layers, other_bits=other_bits, total_bits=total, total_bytes=math.ceil(total / 8),
        dense_bits=dense, dense_bytes=math.ceil(dense / 8), compression_ratio=dense / max(total, 1),
        bits_per_weight=layer_bits / max(n_weights, 1),
    )


def other_tensors(cm: CompressedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state-dict entries stored as they are: not a compressed weight, not a tied alias, not skipped."""
    weight_keys = {f"{name}.weight" for name in cm.layers}
    skip = weight_keys | tied_keys(cm.model, weight_keys)
    return {key: t for key, t in state.items() if key not in skip and key.rsplit(".", 1)[-1] not in SKIPPED_BUFFERS}


def layer_size(lc: LayerCompression, index_bits: int, act_quantized: bool = False) -> LayerSize:
    """Cost one layer in every applicable format and keep the smallest (see the module docstring)."""
    bits = value_width(lc)
    zero_bits = zero_code_width(lc)
    scales, codebook = scale_bits(lc), codebook_bits(lc)
    other = (ACT_QPARAM_BITS if act_quantized else 0) + (0 if lc.input_scale is None else
                                                         lc.input_scale.numel() * FLOAT_BITS)
    meta = scales + codebook + other
    n = lc.n
    # format -> (entries, value width, index bits, fillers)
    options = {"dense": (n, zero_bits if lc.mask is not None and lc.nnz < n else bits, 0, 0)}
    if lc.mask is not None:
        nnz = lc.nnz
        rows = lc.shape[0]
        cols = n // rows
        options["bitmask"] = (nnz, bits, n, 0)
        options["csr"] = (nnz, bits, (rows + 1) * nnz.bit_length() + nnz * (cols - 1).bit_length(), 0)
        fill = int(relative_fillers(flat_positions(lc.mask), index_bits).sum())
        entries = nnz + fill
        options["relative"] = (entries, zero_bits if fill else bits, entries * index_bits, fill)
    totals = {fmt: e * w + idx + meta for fmt, (e, w, idx, _) in options.items()}
    best = min(totals, key=lambda f: (totals[f], FORMATS.index(f)))
    entries, width, idx, fill = options[best]
    return LayerSize(
        name=lc.name, shape=tuple(lc.shape), n=n, nnz=lc.nnz, bits=bits, index_format=best, value_bits=width,
        index_bits=idx, meta_bits=meta, total_bits=totals[best], entries=entries, fillers=fill,
        candidates=tuple(totals.items()), scale_bits=scales, codebook_bits=codebook, other_bits=other,
    )


def value_kind(lc: LayerCompression) -> str:
    """How a layer's values are stored: 'float32', or its quantizer's value_storage: 'float16', 'bfloat16' or
    'code' (integer codes)."""
    if lc.skipped or not lc.quant.enabled:
        return "float32"
    return quantizer_info(lc.quant.quantizer).value_storage


def scale_kind(lc: LayerCompression) -> str:
    """The layer's side data: 'side' when its quantizer lists side tensors for its spec (`side_layout`), else its
    quantizer's scale_storage ('scale', 'codebook'), or 'none' when not quantized."""
    if value_kind(lc) != "code":
        return "none"
    info = quantizer_info(lc.quant.quantizer)
    if info.side_layout is not None and info.side_layout(lc.quant, tuple(lc.shape)) is not None:
        return "side"
    return info.scale_storage


def value_width(lc: LayerCompression) -> int:
    """Bits of one stored value when no extra zero code is needed."""
    kind = value_kind(lc)
    return {"float32": 32, "float16": 16, "bfloat16": 16}.get(kind, lc.quant.bits)


def needs_zero_code(lc: LayerCompression) -> bool:
    """True for codebooks (kmeans / pow2) without an exact 0 level (a stored 0 then needs code K)."""
    return scale_kind(lc) == "codebook" and not bool((lc.codebook == 0).any())


def zero_code_width(lc: LayerCompression) -> int:
    """Bits of one stored value in a format that also stores zeros (dense with pruning, relative fillers)."""
    bits = value_width(lc)
    return max(bits, len(lc.codebook).bit_length()) if needs_zero_code(lc) else bits


def scale_bits(lc: LayerCompression) -> int:
    """Bits of the layer's grid parameters: scales (+ asym zero points), or its side tensors (group scales, FP /
    MX / NF4 block scales); 0 for codebooks, casts and unquantized layers."""
    kind = scale_kind(lc)
    if kind == "side":
        layout = quantizer_info(lc.quant.quantizer).side_layout(lc.quant, tuple(lc.shape))
        return sum(count * SIDE_KINDS[storage][0] for count, storage in layout.values())
    if kind == "scale":
        per = FLOAT_BITS + (ZERO_POINT_BITS if lc.quant.scheme == "asym" else 0)
        return lc.scale.numel() * per
    return 0


def codebook_bits(lc: LayerCompression) -> int:
    """Bits of the layer's codebook levels (kmeans / pow2: K float32 levels); 0 for other layers."""
    return lc.codebook.numel() * FLOAT_BITS if scale_kind(lc) == "codebook" else 0


def flat_positions(mask: torch.Tensor) -> np.ndarray:
    """Sorted flat (row-major) indices of the kept weights, int64 (nnz,)."""
    return np.flatnonzero(mask.detach().cpu().reshape(-1).numpy())


def relative_fillers(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Filler entries needed before each stored position, int64 (nnz,): floor(gap / 2^index_bits)."""
    prev = np.concatenate(([-1], positions[:-1]))
    gaps = positions - prev - 1
    return gaps >> index_bits
