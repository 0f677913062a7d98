"""What the weight charts draw, pre-computed: shared-bin histograms, per-channel ranges, grid levels, thresholds.

Only counts and a few numbers leave this module, never the raw weights, so the dashboard sends kilobytes to
the browser whatever the layer size.

Example:
    >>> from compression_core import CompressionConfig, PruneSpec, QuantSpec, compress, load_model
    >>> net = load_model("digits-cnn").model
    >>> cm = compress(net, CompressionConfig(quant=QuantSpec(bits=2), prune=PruneSpec(sparsity=0.5)))
    >>> before = net.get_submodule("fc1").weight
    >>> h = weight_histograms(before, cm.layers["fc1"].weight, bins=64, hide_zeros=True)
    >>> list(h.to_frame().columns), len(h.to_frame())
    (['left', 'right', 'center', 'before', 'after'], 64)
    >>> levels = grid_levels(cm.layers["fc1"], before=before)
    >>> len(levels.levels), levels.threshold > 0      # int2 sym: -s, 0, s; weights below the threshold pruned
    (3, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .compressed import LayerCompression
from .methods import prune_method_info, quantizer_info
from .quantize import qrange
from .quantize_blocks import as_rows

MAX_LEVELS = 256  # more levels than this (16-bit grids) draw as a continuum: only the clip range is given


@dataclass(frozen=True)
class WeightHistogram:
    """Counts of `before` and `after` over the same bins.

    edges: bins + 1 increasing bin edges (the last bin includes its right edge).
    before, after: counts per bin.
    hidden_zeros_before, hidden_zeros_after: zeros left out (0 unless hide_zeros was set): the exact zeros of
        before; the pruned (or, without a mask, the exact-zero) weights of after.
    """

    edges: tuple[float, ...]
    before: tuple[int, ...]
    after: tuple[int, ...]
    hidden_zeros_before: int
    hidden_zeros_after: int

    def to_frame(self) -> pd.DataFrame:
        """One row per bin: left, right, center, before, after."""
        left, right = self.edges[:-1], self.edges[1:]
        return pd.DataFrame({"left": left, "right": right, "center": [(a + b) / 2 for a, b in zip(left, right)],
                             "before": self.before, "after": self.after})


def weight_histograms(before: torch.Tensor, after: torch.Tensor, bins: int = 80,
                      hide_zeros: bool = False, pruned: torch.Tensor | None = None) -> WeightHistogram:
    """Histogram a layer's weights before and after compression on shared bin edges.

    Args:
        before: the original weight (any shape).
        after: the compressed weight (any shape; usually the same).
        bins: number of equal-width bins spanning min..max of both tensors together.
        hide_zeros: leave zeros out (the pruned spike at 0 otherwise dwarfs the rest); their counts are returned
            separately. `before` loses its exact zeros; `after` the positions `pruned` marks, or (without it) its
            exact zeros.
        pruned: bool, the shape of `after`: True where pruning removed the weight. With it, weights that
            quantization rounded to 0 stay counted in `after`.

    Returns:
        WeightHistogram; `sum(before) + hidden_zeros_before == before.numel()` (same for after).
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}")
    b = before.detach().flatten().to("cpu", torch.float32).numpy()
    a = after.detach().flatten().to("cpu", torch.float32).numpy()
    zb = za = 0
    if hide_zeros:
        gone = (a == 0) if pruned is None else pruned.detach().flatten().to("cpu").numpy().astype(bool)
        zb, za = int((b == 0).sum()), int(gone.sum())
        b, a = b[b != 0], a[~gone]
    lo = float(min(b.min(initial=np.inf), a.min(initial=np.inf)))
    hi = float(max(b.max(initial=-np.inf), a.max(initial=-np.inf)))
    if not np.isfinite(lo):  # nothing left to count
        lo = hi = 0.0
    if hi - lo < 1e-12:  # a single value: centre one unit-wide range on it
        lo, hi = lo - 0.5, lo + 0.5
    # equal-width bins over (lo, hi): numpy's uniform-bin fast path, no per-element search
    count = lambda t: np.histogram(t, bins=bins, range=(lo, hi))[0].tolist()  # noqa: E731
    edges = np.linspace(lo, hi, bins + 1)
    return WeightHistogram(edges=tuple(edges.tolist()), before=tuple(count(b)), after=tuple(count(a)),
                           hidden_zeros_before=zb, hidden_zeros_after=za)


def channel_ranges(w: torch.Tensor) -> pd.DataFrame:
    """Per output channel (axis 0) weight range: columns channel, min, max, absmax; one row per channel.

    Wide spread of absmax across channels is why per-channel scales beat one per-tensor scale.
    """
    flat = w.detach().to("cpu", torch.float32).reshape(w.shape[0], -1)  # (C_out, fan_in)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return pd.DataFrame({"channel": range(w.shape[0]), "min": lo.tolist(), "max": hi.tolist(),
                         "absmax": torch.maximum(lo.abs(), hi.abs()).tolist()})


@dataclass(frozen=True)
class GridLevels:
    """Quantization grid and pruning threshold of one layer, for drawing on its histogram.

    levels: the representable (dequantized) values, increasing; () when not integer-quantized or when there
        are more than MAX_LEVELS of them.
    clip: (low, high) of the grid; for per-channel grids the envelope over all channels; None when not
        integer-quantized.
    channel: for per-channel uniform grids, the channel whose levels are given (the widest, largest scale).
    threshold: magnitude pruning only: the largest |w| that was removed (needs the original weight).
    block: for layers with side data (group scales, FP / MX / NF4 formats), the row of the block table
        (quantize_blocks) whose representable values are given: the one holding the largest |w|; clip is then
        that block's range.
    """

    levels: tuple[float, ...]
    clip: tuple[float, float] | None
    channel: int | None
    threshold: float | None
    block: int | None = None


def grid_levels(layer: LayerCompression, before: torch.Tensor | None = None) -> GridLevels:
    """The levels / clip range of `layer`'s grid and, with `before`, its magnitude-pruning threshold.

    Per-tensor uniform: every level (q - zero_point) * scale for q in [qmin, qmax]. Per-channel uniform: the
    levels of the channel with the largest scale, and the clip envelope over all channels. k-means / pow2:
    the codebook. Side data (group scales, FP / MX / NF4): every value the block holding the largest |w| can
    represent, decoded by the quantizer's own `decode`. Skipped layers, bits 32 and fp16 / bf16 casts: no levels.

    Args:
        layer: a compressed layer from `CompressedModel.layers`.
        before: the layer's original weight; needed for the pruning threshold.
    """
    q = layer.quant
    levels: torch.Tensor | None = None
    clip, channel = None, None
    quantized = not layer.skipped and layer.codes is not None  # fp32 and float casts have no grid to draw
    if quantized and layer.side is not None:
        if 2 ** q.bits > MAX_LEVELS:  # 16-bit codes draw as a continuum
            return GridLevels(levels=(), clip=None, channel=None, threshold=prune_threshold(layer, before))
        levels, block = block_levels(layer)
        return GridLevels(levels=tuple(levels.tolist()), clip=(float(levels[0]), float(levels[-1])), channel=None,
                          threshold=prune_threshold(layer, before), block=block)
    if quantized and layer.codebook is not None:
        levels = layer.codebook.detach().to("cpu", torch.float64).flatten().sort().values
        clip = (float(levels[0]), float(levels[-1]))
    elif quantized and layer.scale is not None and layer.zero_point is not None:
        qmin, qmax = qrange(q.bits, q.scheme)
        scale = layer.scale.detach().to("cpu", torch.float64).flatten()  # (1,) or (C_out,)
        zp = layer.zero_point.detach().to("cpu", torch.float64).flatten()
        lows, highs = (qmin - zp) * scale, (qmax - zp) * scale
        clip = (float(lows.min()), float(highs.max()))
        c = int(scale.argmax())
        channel = c if scale.numel() > 1 else None
        if qmax - qmin + 1 <= MAX_LEVELS:
            levels = (torch.arange(qmin, qmax + 1, dtype=torch.float64) - zp[c]) * scale[c]
    shown = tuple(levels.tolist()) if levels is not None and levels.numel() <= MAX_LEVELS else ()
    return GridLevels(levels=shown, clip=clip, channel=channel, threshold=prune_threshold(layer, before))


def block_levels(layer: LayerCompression) -> tuple[torch.Tensor, int]:
    """(every value of the block holding the largest |w|, float64 increasing; that block's row) of a layer with
    side data, by decoding each possible code in that block with the quantizer's registered `decode`."""
    spec, shape = layer.quant, tuple(layer.shape)
    side = {k: v.detach().cpu() for k, v in layer.side.items()}
    block = int(as_rows(layer.weight.detach().cpu().abs(), spec.granularity, spec.group_size).amax(1).argmax())
    index = torch.arange(layer.n).reshape(shape)
    positions = as_rows(index, spec.granularity, spec.group_size, fill=-1)[block]
    positions = positions[positions >= 0]  # the block's real weights, padding left out
    decode = quantizer_info(spec.quantizer).decode
    values = []
    for start in range(0, 2 ** spec.bits, positions.numel()):  # as many codes per pass as the block holds
        chunk = torch.arange(start, min(start + positions.numel(), 2 ** spec.bits))
        codes = torch.zeros(layer.n, dtype=torch.int64)
        codes[positions[:chunk.numel()]] = chunk
        values.append(decode(codes.reshape(shape), side, spec).reshape(-1)[positions[:chunk.numel()]])
    return torch.unique(torch.cat(values).double()), block


def prune_threshold(layer: LayerCompression, before: torch.Tensor | None) -> float | None:
    """Largest |w| of `before` that magnitude pruning removed from `layer`; None for other methods / no pruning."""
    if before is None or layer.skipped or layer.mask is None:
        return None
    if not prune_method_info(layer.prune.method).magnitude_threshold:  # only a |w| ranking has one threshold
        return None
    removed = before.detach().to("cpu").reshape(layer.mask.shape)[~layer.mask.to("cpu")]
    return float(removed.abs().max()) if removed.numel() else None
