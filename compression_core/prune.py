"""Pruning masks: pure functions from weights (or importance scores) to bool masks, True = kept.

Counts are exact: sparsity s removes `prune_count(s, n)` = round(s * n) of n weights (Python's round, half to
even), layer by layer or once over all layers of a global group. Ranking is by score, lowest removed first; equal
scores are broken by position (earlier flat index first; in a global ranking, earlier layer first), so a mask
depends only on its inputs. Nothing here modifies a weight or a model.
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, PruneSpec
from .methods import PruneMethodInfo, prune_method_info, register_prune_method

TAYLOR_BATCHES = 4  # mini-batches of calibration data summed into Taylor scores
TAYLOR_BATCH_SIZE = 128


def prune_count(sparsity: float, n: int) -> int:
    """Number of weights that sparsity `sparsity` removes from `n`: round(sparsity * n).

    Example:
        >>> prune_count(0.5, 7), prune_count(0.9, 300)
        (4, 270)
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ConfigError(f"sparsity must be in [0, 1]; got {sparsity!r}")
    return int(round(sparsity * n))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask of the k lowest entries of a 1-D tensor; ties go to the lower index.

    Same result as removing the first k of a stable ascending sort, in O(n) via kthvalue.
    """
    removed = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k <= 0:
        return removed
    threshold = torch.kthvalue(scores, k).values
    below = scores < threshold
    tied = scores == threshold
    # of the entries equal to the threshold, the first (k - #below) by index are removed
    removed = below | (tied & (torch.cumsum(tied, 0) <= k - int(below.sum())))
    return removed


def score_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the round(sparsity * n) lowest scores (ties: lower flat index removed first).

    Args:
        scores: importance per weight, any shape (higher = more important).
        sparsity: fraction removed, in [0, 1].

    Returns:
        bool mask like scores, True = kept.

    Example:
        >>> score_mask(torch.tensor([3.0, 1.0, 2.0, 1.0]), 0.5)
        tensor([ True, False,  True, False])
    """
    flat = scores.detach().reshape(-1).float()
    return ~_lowest(flat, prune_count(sparsity, flat.numel())).reshape(scores.shape)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the round(sparsity * n) weights of smallest |w| (ties: lower flat index first).

    Example:
        >>> magnitude_mask(torch.tensor([[0.5, -0.1], [0.2, -0.9]]), 0.5)
        tensor([[ True, False],
                [False,  True]])
    """
    return score_mask(w.detach().abs(), sparsity)


def random_mask(w: torch.Tensor, sparsity: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove exactly round(sparsity * n) weights chosen uniformly at random by `generator` (CPU; seed 0 if None).

    Example:
        >>> m = random_mask(torch.ones(10), 0.3, torch.Generator().manual_seed(1))
        >>> int((~m).sum())
        3
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = w.numel()
    removed = torch.randperm(n, generator=generator)[: prune_count(sparsity, n)]
    mask = torch.ones(n, dtype=torch.bool)
    mask[removed] = False
    return mask.reshape(w.shape).to(w.device)


def structured_mask(w: torch.Tensor, sparsity: float, norm: int = 1) -> torch.Tensor:
    """Remove round(sparsity * C_out) whole output channels (slices along axis 0) of smallest L1 / L2 norm.

    Linear: neurons (rows); Conv: filters. Ties: lower channel index removed first.

    Example:
        >>> structured_mask(torch.tensor([[1.0, 1.0], [0.1, 0.2], [3.0, 0.0]]), 1 / 3, norm=1)
        tensor([[ True,  True],
                [False, False],
                [ True,  True]])
    """
    if norm not in (1, 2):
        raise ConfigError(f"structured norm must be 1 or 2; got {norm!r}")
    channels = w.shape[0]
    norms = torch.linalg.vector_norm(w.detach().reshape(channels, -1).float(), ord=norm, dim=1)  # (C_out,)
    kept = ~_lowest(norms, prune_count(sparsity, channels))
    return kept.reshape(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()


def _group_keep(magnitude: torch.Tensor, keep: int) -> torch.Tensor:
    """(..., g) magnitudes -> bool (..., g) keeping the `keep` largest of each group (ties: lower index removed)."""
    order = torch.sort(magnitude, dim=-1, stable=True).indices  # ascending
    kept = torch.ones_like(magnitude, dtype=torch.bool)
    return kept.scatter_(-1, order[..., : magnitude.shape[-1] - keep], False)


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M sparsity: in every output channel, each run of m consecutive weights along the flattened input
    dimension (for Conv: in_channels * kernel positions, in memory order) keeps its n largest |w|.

    When the input dimension is not a multiple of m, the last, shorter group of r weights keeps
    ceil(n * r / m) of them. Ties: the lower index is removed first.

    Example:
        >>> nm_mask(torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.3, 0.4]]), 2, 4)
        tensor([[False,  True,  True, False, False,  True]])
    """
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise ConfigError(f"N:M needs integers 1 <= N < M; got {n}:{m}")
    rows = w.detach().reshape(w.shape[0], -1).abs()  # (C_out, L)
    length = rows.shape[1]
    full = length - length % m
    parts = [_group_keep(rows[:, :full].reshape(rows.shape[0], -1, m), n).reshape(rows.shape[0], full)]
    rest = length - full
    if rest:
        parts.append(_group_keep(rows[:, full:], -(-n * rest // m)))  # ceil(n * rest / m)
    return torch.cat(parts, dim=1).reshape(w.shape)


def global_score_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One ranking over all layers: remove the round(sparsity * N) lowest scores of the N in `scores`.

    Ties: earlier layer (dict order) first, then lower flat index.

    Example:
        >>> masks = global_score_masks({"a": torch.tensor([0.1, 0.9]), "b": torch.tensor([0.5, 0.2, 0.8])}, 0.4)
        >>> masks["a"], masks["b"]
        (tensor([False,  True]), tensor([ True, False,  True]))
    """
    names = list(scores)
    flat = torch.cat([scores[name].detach().reshape(-1).float() for name in names])
    kept = ~_lowest(flat, prune_count(sparsity, flat.numel()))
    sizes = [scores[name].numel() for name in names]
    return {name: part.reshape(scores[name].shape) for name, part in zip(names, torch.split(kept, sizes))}


def taylor_scores(model: nn.Module, layer_names: list[str], x: torch.Tensor, y: torch.Tensor,
                  batches: int, batch_size: int) -> dict[str, torch.Tensor]:
    """First-order Taylor importance |w * dL/dw| of each named layer's weight, summed over mini-batches.

    L is the cross-entropy of one mini-batch; the absolute value is taken per batch before summing, so
    batches do not cancel. Batches are consecutive slices of (x, y); fewer run when x runs out. The model
    stays in its current train / eval mode. Gradients come from `torch.autograd.grad`, so no `.grad` is
    written; `requires_grad` flags are restored and no weight changes.

    Args:
        model: a module whose named layers have a `.weight`.
        layer_names: module names, e.g. ["conv1", "fc1"].
        x, y: inputs and int64 class labels (moved to the model's device batch by batch).
        batches, batch_size: how many mini-batches of what size.

    Returns:
        name -> float32 tensor like that layer's weight (>= 0).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> s = taylor_scores(net, ["0"], torch.randn(8, 4), torch.randint(0, 3, (8,)), batches=2, batch_size=4)
        >>> s["0"].shape, bool((s["0"] >= 0).all())
        (torch.Size([3, 4]), True)
    """
    modules = dict(model.named_modules())
    missing = [name for name in layer_names if name not in modules or not hasattr(modules[name], "weight")]
    if missing:
        raise ConfigError(f"taylor_scores: no layer with a weight named {missing}; use names from compressible_layers")
    weights = [modules[name].weight for name in layer_names]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    device = weights[0].device
    try:
        with torch.inference_mode(False), torch.enable_grad():
            scores = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in zip(layer_names, weights)}
            for p, _ in flags:
                p.requires_grad_(False)  # only the scored weights need gradients
            for p in weights:
                p.requires_grad_(True)
            for b in range(max(batches, 1)):
                xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
                if len(xb) == 0:
                    break
                # clone: an inference-mode tensor cannot be saved for backward
                loss = F.cross_entropy(model(xb.to(device).clone()), yb.to(device))
                grads = torch.autograd.grad(loss, weights)
                for name, p, g in zip(layer_names, weights, grads):
                    scores[name] += (p.detach() * g).abs()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return scores


def _layer_generator(seed: int, name: str) -> torch.Generator:
    """A generator per (seed, layer name): a layer's random mask does not depend on the other layers."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def _calibration_scores(info: PruneMethodInfo, name: str, w: torch.Tensor,
                        calibration: dict | None) -> torch.Tensor | None:
    """The layer's calibration scores for a method that needs them (checked), else None."""
    if not info.needs_calibration:
        return None
    if calibration is None or name not in calibration:
        raise ConfigError(f"{info.name} pruning of layer {name!r} needs its calibration scores; pass "
                          f"calibration=<its scores by layer> (compress computes them from calib)")
    if calibration[name].shape != w.shape:
        shape = tuple(calibration[name].shape)
        raise ConfigError(f"{info.name} scores for {name!r} have shape {shape}; expected {tuple(w.shape)}")
    return calibration[name]


def compute_masks(weights: dict[str, torch.Tensor], specs: dict[str, PruneSpec], *,
                  calibration: dict[str, torch.Tensor] | None = None,
                  seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Masks for many layers as their specs say, each drawn by its registered method.

    Layers whose spec has scope "global" (only methods that rank globally: magnitude, random, taylor) and the
    same method and sparsity form one group ranked together (round(s * N) removed over the group). All other
    layers are pruned on their own; N:M and structured are always per layer.

    Args:
        weights: layer name -> weight, in model order (the order breaks ties in global rankings).
        specs: layer name -> PruneSpec; a layer without a spec, or whose spec is not enabled, gets None.
        calibration: layer name -> calibration scores (from the method's `calibrate`, e.g. `taylor_scores`),
            needed by the layers whose method needs calibration.
        seed: seeds random draws (with the layer name, so each layer's draw is its own).

    Returns:
        layer name -> bool mask (True = kept) or None, for every name in `weights`.

    Example:
        >>> w = {"fc1": torch.randn(30, 20), "fc2": torch.randn(10, 30)}
        >>> spec = PruneSpec(sparsity=0.5, scope="global")
        >>> masks = compute_masks(w, {"fc1": spec, "fc2": spec})
        >>> sum(int((~m).sum()) for m in masks.values())
        450
    """
    masks: dict[str, torch.Tensor | None] = {name: None for name in weights}
    groups: dict[tuple[str, float], list[str]] = {}
    for name, w in weights.items():
        spec = specs.get(name)
        if spec is None or not spec.enabled:
            continue
        if spec.scope == "global":  # PruneSpec keeps "global" only for methods that rank globally
            groups.setdefault((spec.method, spec.sparsity), []).append(name)
            continue
        info = prune_method_info(spec.method)
        masks[name] = info.mask(w, spec, _calibration_scores(info, name, w, calibration),
                                _layer_generator(seed, name))
    for (method, s), names in groups.items():
        info = prune_method_info(method)
        scores = {n: info.rank(weights[n], _calibration_scores(info, n, weights[n], calibration),
                               _layer_generator(seed, n)) for n in names}
        masks.update(global_score_masks(scores, s))
    return masks


# ---- the registered methods: mask(w, spec, scores, generator), rank(w, scores, generator) ---------------

def _random_scores(w: torch.Tensor, scores, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(w.shape, generator=generator).to(w.device)


def _taylor_calibrate(model: nn.Module, layer_names: list[str], x: torch.Tensor,
                      y: torch.Tensor) -> dict[str, torch.Tensor]:
    return taylor_scores(model, layer_names, x, y, batches=TAYLOR_BATCHES, batch_size=min(TAYLOR_BATCH_SIZE, len(x)))


register_prune_method(PruneMethodInfo(
    name="magnitude", label="magnitude", magnitude_threshold=True,
    mask=lambda w, spec, scores, generator: magnitude_mask(w, spec.sparsity),
    rank=lambda w, scores, generator: w.detach().abs(),
    description="Remove the weights of smallest |w|."))
register_prune_method(PruneMethodInfo(
    name="random", label="random",
    mask=lambda w, spec, scores, generator: random_mask(w, spec.sparsity, generator), rank=_random_scores,
    description="Remove weights chosen uniformly at random: the baseline any method must beat."))
register_prune_method(PruneMethodInfo(
    name="structured", label="structured (channels)", structured=True,
    mask=lambda w, spec, scores, generator: structured_mask(w, spec.sparsity, spec.norm),
    description="Remove whole output channels of smallest L1 / L2 norm: a smaller dense layer."))
register_prune_method(PruneMethodInfo(
    name="nm", label="N:M", uses_sparsity=False,
    mask=lambda w, spec, scores, generator: nm_mask(w, spec.n, spec.m),
    description="Keep the N largest |w| of every M consecutive weights (2:4 runs fast on sparse tensor cores)."))
register_prune_method(PruneMethodInfo(
    name="taylor", label="Taylor", calibrate=_taylor_calibrate,
    mask=lambda w, spec, scores, generator: score_mask(scores, spec.sparsity),
    rank=lambda w, scores, generator: scores,
    description="Remove the weights of least first-order Taylor importance |w * dL/dw| on calibration data."))
