"""Codebook quantizers: integer codes into a small float32 table of levels (k-means weight sharing, powers of two).

Both take an optional `mask` (True = kept): the levels come from the kept weights only, and pruned weights get
code 0 (the caller writes them as exactly 0). `quantize.py` registers them as the "kmeans" and "pow2" quantizers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

KMEANS_ITERS = 50


def _kept_values(w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = w.detach().reshape(-1).float()
    return flat if mask is None else flat[mask.reshape(-1)]


def _nearest(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level of a sorted codebook (linear distance; a tie goes to the lower level)."""
    midpoints = (codebook[:-1] + codebook[1:]) / 2
    return torch.bucketize(w.detach().float(), midpoints).to(torch.int32)


def kmeans_quantize(w: torch.Tensor, bits: int, mask: torch.Tensor | None = None,
                    iters: int = KMEANS_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight sharing by 1-D k-means (Lloyd) with 2^bits centroids, linearly initialised between min and max.

    Deterministic. Only kept weights take part; centroids whose cluster ends up empty are dropped, so the
    codebook has at most 2^bits entries. Lloyd runs on the sorted kept values with prefix sums: a 1-D cluster is
    an interval, found by binary search, so one iteration costs O(k log n) after a single sort. `iters` caps
    the iterations; the loop stops early once the centroids no longer move.

    Returns:
        (codes int32 like w, index into codebook; codebook float32 sorted ascending).

    Example:
        >>> codes, codebook = kmeans_quantize(torch.tensor([0.0, 0.1, 0.9, 1.0]), bits=1)
        >>> codebook, codebook[codes]
        (tensor([0.0500, 0.9500]), tensor([0.0500, 0.0500, 0.9500, 0.9500]))
    """
    kept = _kept_values(w, mask)
    if kept.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.int32, device=w.device), torch.zeros(1, device=w.device)
    # the 1-D fit is small and full of tiny steps, so it runs in numpy on the CPU (no per-op threading cost)
    values = np.sort(kept.cpu().numpy()).astype(np.float64)  # (n,) ascending
    prefix = np.concatenate([[0.0], np.cumsum(values)])  # prefix[i] = sum of the i smallest

    def cluster_counts(centroids):
        # cluster j holds the values in (mid[j-1], mid[j]]; ends[j] = number of values in clusters 0..j
        ends = np.append(np.searchsorted(values, (centroids[:-1] + centroids[1:]) / 2, side="right"), values.size)
        starts = np.concatenate([[0], ends[:-1]])
        return ends - starts, prefix[ends] - prefix[starts]

    centroids = np.linspace(values[0], values[-1], 2**bits)
    for _ in range(iters):
        counts, sums = cluster_counts(centroids)
        # an empty cluster keeps its centroid; in 1-D the centroids stay sorted
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    counts, _ = cluster_counts(centroids)
    codebook = torch.from_numpy(centroids[counts > 0]).float().to(w.device)  # drop empty clusters
    codes = _nearest(w, codebook)
    if mask is not None:
        codes = torch.where(mask, codes, torch.zeros_like(codes))
    return codes, codebook


def pow2_quantize(w: torch.Tensor, bits: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-of-two (log) levels: 0 and ±2^k for the 2^(b-1) - 1 exponents k_max, k_max - 1, ...

    With b bits, one bit is the sign and 2^(b-1) magnitude codes remain; one of them encodes 0, the others
    the exponents counting down from k_max = round(log2(max |w|)) over the kept weights. With 1 bit there is
    no room for 0: the levels are ±2^k with k = round(log2(mean |w|)) (mean |w| is the L2-optimal scale of a
    sign code). Levels too small for float32 are merged. Each weight takes the nearest level in the linear
    domain (the least squared error), not the nearest exponent.

    Returns:
        (codes int32 like w, index into codebook; codebook float32 sorted ascending, at most 2^bits - 1
        entries for bits >= 2 and 2 for bits = 1).

    Example:
        >>> codes, codebook = pow2_quantize(torch.tensor([0.9, -0.3, 0.05]), bits=3)
        >>> codebook.tolist(), codebook[codes].tolist()
        ([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], [1.0, -0.25, 0.0])
    """
    magnitude = _kept_values(w, mask).abs()
    if magnitude.numel() == 0 or float(magnitude.max()) == 0.0:
        return torch.zeros(w.shape, dtype=torch.int32, device=w.device), torch.zeros(1, device=w.device)
    if bits == 1:
        k = round(math.log2(float(magnitude.mean())))
        levels = torch.tensor([2.0**k], dtype=torch.float64)
    else:
        k_max = round(math.log2(float(magnitude.max())))
        exponents = torch.arange(k_max - (2 ** (bits - 1) - 2), k_max + 1, dtype=torch.float64)
        levels = torch.cat([torch.zeros(1, dtype=torch.float64), torch.exp2(exponents)])
    # sorted; levels that underflow float32 merge into 0; + 0.0 turns a surviving -0.0 into +0.0
    codebook = (torch.unique(torch.cat([-levels, levels]).float()) + 0.0).to(w.device)
    codes = _nearest(w, codebook)
    if mask is not None:
        codes = torch.where(mask, codes, torch.zeros_like(codes))
    return codes, codebook
