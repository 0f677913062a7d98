"""Bit allocation: per-layer weight widths under a whole-model size budget, greedy on measured sensitivity.

Each compressible layer gets one of the candidate widths; 32 means the layer is left in fp32 and unpruned
(`LayerOverride(skip=True)`), every other width b is the config's own quantizer at b bits
(`LayerOverride(quant=replace(config.quant, bits=b))`). Two tables drive the choice:

    cost[layer][b]   bits of the layer in the engine's size model (`size.size_report`: values, sparse index,
                     scales, codebooks) when the whole model is compressed at b (32: every layer skipped)
    drop[layer][b]   how much worse the task's metric got when that layer alone was compressed at b
                     (`sensitivity.layer_sensitivity` rows, read by `drops_from_sensitivity`); 0 at 32

The predicted harm of an allocation is the sum of its layers' drops (each measured alone: interactions between
layers are not modelled). Its size is not predicted: the allocated config is compressed and measured, and when the
measured size (the layers' sizes can depend on each other, e.g. global-scope pruning with skipped layers) exceeds the
budget the choice is made again with the excess taken off.

Choice (`_choose`): every layer starts at its most precise width; while the sum of costs is over the budget, the
layer move (to any cheaper width of that layer) with the smallest drop increase per bit saved is taken (ties: the
larger saving, then the earlier layer). Then, while budget is left over, the move to a costlier width that lowers
the drop sum most (or, failing that, the cheapest one that does not raise it) and still fits is taken. Finally the
best uniform width that fits (every layer at the same b) replaces the result when its drop sum is smaller, so an
allocation is never worse than uniform bits at the same budget. The greedy is not optimal in general (the choice is
a multiple-choice knapsack).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> drops = {"0": {2: 5.0, 4: 1.0, 8: 0.1}, "2": {2: 0.5, 4: 0.2, 8: 0.0}}
    >>> a = allocate_bits(net, CompressionConfig(), drops, budget_bytes=4_000)
    >>> dict(a.bits), a.size_bytes <= 4_000
    ({'0': 4, '2': 8}, True)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from torch import nn

from .compress import compress
from .compressed import CompressedModel, compressible_layers
from .config import ALLOWED_BITS, CompressionConfig, ConfigError, LayerOverride
from .methods import quantizer_info
from .sensitivity import metric_harm
from .size import size_report

DEFAULT_WIDTHS = (2, 3, 4, 8, 32)
FP32 = 32  # the width of a skipped layer
MAX_ROUNDS = 8  # choices re-made with a smaller target when the measured size exceeds the budget

Choice = dict[str, int]  # layer -> width


class AllocationError(ValueError):
    """The allocation cannot be made (budget too small, bad widths or drops); the one-line message says why."""


class Compressor(Protocol):
    """What `allocate_bits` needs besides a plain module: an `Experiment` (its layers and its `compress`)."""

    layer_names: list[str]

    def compress(self, config: CompressionConfig) -> CompressedModel: ...


@dataclass(frozen=True)
class Allocation:
    """The allocated widths and what they cost.

    overrides: one `LayerOverride` per layer (skip for 32, else the config's quantizer at the layer's bits), as
        the CLI's `--layer NAME:bits=B` / `--layer NAME:skip=1` would give.
    bits: (layer, width) in model order.
    config: the config with `overrides` (its own overrides replaced).
    size_bytes: the allocated config's size measured by the engine's size model (every overhead counted).
    drop_sum: the sum of the layers' measured drops at their widths (the task metric's unit, pts for accuracy).
    budget_bytes: the budget the allocation was made for; size_bytes <= budget_bytes.
    """

    overrides: tuple[LayerOverride, ...]
    bits: tuple[tuple[str, int], ...]
    config: CompressionConfig
    size_bytes: int
    drop_sum: float
    budget_bytes: int


@dataclass(frozen=True)
class _Table:
    """Per layer (model order): {width: (cost bits, drop)}; `other` bits of everything that is not a layer."""

    layers: tuple[str, ...]
    options: dict[str, dict[int, tuple[int, float]]]
    other: int

    def total(self, choice: Choice) -> int:
        return self.other + sum(self.options[n][w][0] for n, w in choice.items())

    def drop(self, choice: Choice) -> float:
        return sum(self.options[n][w][1] for n, w in choice.items())


def allocate_bits(target: nn.Module | Compressor, config: CompressionConfig, drops: Mapping[str, Mapping[int, float]],
                  budget_bytes: int, widths: Sequence[int] = DEFAULT_WIDTHS) -> Allocation:
    """Choose each layer's weight width so the whole model fits `budget_bytes`, losing as little as measured.

    Args:
        target: a module (compressed with `compress(target, config)`, so configs needing calibration data need an
            `Experiment`) or an `Experiment` (anything with `layer_names` and `compress(config)`).
        config: the global settings (quantizer, scheme, granularity, pruning, ...); its overrides are replaced.
        drops: {layer: {width: drop}} measured one layer at a time (`drops_from_sensitivity`); a width a layer has
            no drop for is not offered to that layer; 32 needs none (0).
        budget_bytes: the largest allowed size of the whole model in bytes (`size_report(...).total_bytes`).
        widths: the candidate widths; 32 = fp32 (skipped).

    Returns:
        The `Allocation`; deterministic for the same inputs.

    Raises:
        AllocationError: a width the quantizer does not take, a drop for an unknown layer or not a number, or a
            budget below the smallest allocation; one line.
    """
    names, squeeze = _compressor(target)
    base = replace(config, overrides=())
    widths = _check_widths(base, widths)
    _check_drops(drops, names)
    if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 1:
        raise AllocationError(f"the size budget must be a whole number of bytes >= 1; got {budget_bytes!r}")
    table = _table(base, names, drops, widths, squeeze)
    target_bits = 8 * budget_bytes
    for _ in range(MAX_ROUNDS):
        choice = _choose(table, target_bits, budget_bytes)
        allocated = replace(base, overrides=overrides(base, choice))
        measured = size_report(squeeze(allocated)).total_bits
        if math.ceil(measured / 8) <= budget_bytes:
            return Allocation(overrides=allocated.overrides, bits=tuple(choice.items()), config=allocated,
                              size_bytes=math.ceil(measured / 8), drop_sum=table.drop(choice),
                              budget_bytes=budget_bytes)
        target_bits -= measured - table.total(choice)  # the layers cost more together than alone: aim lower
    raise AllocationError(f"no allocation within {budget_bytes:,} B was found: the layers' sizes depend on each "
                          "other (e.g. global pruning with skipped layers); allow more bytes or fewer widths")


def overrides(config: CompressionConfig, choice: Mapping[str, int]) -> tuple[LayerOverride, ...]:
    """The overrides of a choice: skip at 32, else the config's quantizer at the layer's bits."""
    return tuple(LayerOverride(name=n, skip=True) if w == FP32 else
                 LayerOverride(name=n, quant=replace(config.quant, bits=w)) for n, w in choice.items())


def drops_from_sensitivity(records: Sequence[dict]) -> dict[str, dict[int, float]]:
    """{layer: {bits: drop}} from `layer_sensitivity` records of weight-quantization-only settings.

    A setting counts when it quantizes the weights (bits < 32) and nothing else (no pruning, activations fp32, no
    bias correction, repair or retraining); its drop is `metric_harm` (accuracy drop in points for classify). When
    several settings share a width (e.g. two granularities), the first record's drop is kept.
    """
    out: dict[str, dict[int, float]] = {}
    for r in records:
        probe = CompressionConfig.from_dict(r["config"])
        weights_only = (probe.quant.enabled and not probe.prune.enabled and probe.act_bits == FP32
                        and not probe.bias_correction and probe.repair == "none" and not probe.retrains)
        if weights_only:
            out.setdefault(r["layer"], {}).setdefault(probe.quant.bits, float(metric_harm(r)))
    return out


def _compressor(target: nn.Module | Compressor) -> tuple[list[str], Callable[[CompressionConfig], CompressedModel]]:
    if isinstance(target, nn.Module):
        return [n for n, _ in compressible_layers(target)], lambda c: compress(target, c)
    return list(target.layer_names), target.compress


def _check_widths(config: CompressionConfig, widths: Sequence[int]) -> tuple[int, ...]:
    """The widths, most precise first; each must be one the config's quantizer takes."""
    info = quantizer_info(config.quant.quantizer)
    low = [w for w in widths if w != FP32]
    if low and config.quant.enabled and not info.uses_bits:
        raise AllocationError(f"bit allocation needs a quantizer with a choice of widths; {config.quant.quantizer} "
                              f"always uses {info.bits[0]} bits")
    for w in widths:
        if w not in ALLOWED_BITS:
            raise AllocationError(f"widths must be from {', '.join(map(str, ALLOWED_BITS))}; got {w!r}")
        try:
            replace(config.quant, bits=w)
        except ConfigError as err:
            raise AllocationError(f"width {w}: {err}") from None
    if not widths:
        raise AllocationError("give at least one candidate width, e.g. 2, 4, 8 and 32 (fp32)")
    return tuple(sorted(set(widths), reverse=True))


def _check_drops(drops: Mapping[str, Mapping[int, float]], names: list[str]) -> None:
    unknown = sorted(set(drops) - set(names))
    if unknown:
        raise AllocationError(f"drops name {unknown[0]!r}, not a compressible layer; layers are {names}")
    for layer, row in drops.items():
        for w, d in row.items():
            if not isinstance(d, (int, float)) or not math.isfinite(d):
                raise AllocationError(f"the drop of layer {layer!r} at {w} bits must be a number; got {d!r}")


def _table(config: CompressionConfig, names: list[str], drops, widths: tuple[int, ...], squeeze) -> _Table:
    """Measure every layer's size at every width that some layer may take (one compression per width)."""
    offered = {n: [w for w in widths if w == FP32 or w in drops.get(n, {})] for n in names}
    used = [w for w in widths if any(w in ws for ws in offered.values())]
    if not used:
        raise AllocationError(f"no layer has a measured drop at any of the widths {', '.join(map(str, widths))}; "
                              "run the sensitivity at these widths, or add 32 (fp32)")
    sizes, other = {}, None
    for w in used:
        uniform = replace(config, overrides=tuple(LayerOverride(name=n, skip=True) for n in names)) if w == FP32 \
            else replace(config, quant=replace(config.quant, bits=w))
        report = size_report(squeeze(uniform))
        sizes[w] = {layer.name: layer.total_bits for layer in report.layers}
        other = report.other_bits if other is None else other  # the other tensors of the most precise width
    options = {n: {w: (sizes[w][n], 0.0 if w == FP32 else float(drops[n][w])) for w in offered[n]} for n in names}
    empty = [n for n in names if not options[n]]
    if empty:
        raise AllocationError(f"layer {empty[0]!r} has no measured drop at any of the widths "
                              f"{', '.join(map(str, widths))}; add 32 (fp32) or measure it")
    return _Table(layers=tuple(names), options=options, other=other)


def _choose(table: _Table, target_bits: int, budget_bytes: int) -> Choice:
    """Greedy down to `target_bits`, then up while it fits, then the best fitting uniform width if better."""
    smallest = {n: min(opts, key=lambda w: (opts[w][0], w)) for n, opts in table.options.items()}
    if table.total(smallest) > target_bits:
        raise AllocationError(f"the budget of {budget_bytes:,} B cannot be met: the smallest allocation (every layer "
                              f"at its fewest bits) needs {math.ceil(table.total(smallest) / 8):,} B")
    choice = {n: max(opts) for n, opts in table.options.items()}
    order = {n: i for i, n in enumerate(table.layers)}
    while table.total(choice) > target_bits:
        moves = [((table.options[n][w][1] - table.options[n][cur][1]) / (table.options[n][cur][0] - cost),
                  cost - table.options[n][cur][0], order[n], -w, n, w)
                 for n, cur in choice.items() for w, (cost, _) in table.options[n].items()
                 if cost < table.options[n][cur][0]]
        *_, n, w = min(moves)
        choice[n] = w
    _improve(table, choice, target_bits, order)
    uniform = [{n: w for n in table.layers} for w in sorted({w for o in table.options.values() for w in o})
               if all(w in o for o in table.options.values())]
    fitting = [u for u in uniform if table.total(u) <= target_bits]
    best = min(fitting, key=lambda u: (table.drop(u), table.total(u)), default=None)
    if best is not None and table.drop(best) < table.drop(choice):
        return best
    return choice


def _improve(table: _Table, choice: Choice, target_bits: int, order: dict[str, int]) -> None:
    """Spend what is left of the budget: take the fitting move to a costlier width that lowers the drop sum most
    (then, among moves that do not raise it, the cheapest), until none fits."""
    while True:
        left = target_bits - table.total(choice)
        moves = [(table.options[n][w][1] - table.options[n][cur][1], cost - table.options[n][cur][0], order[n], -w,
                  n, w)
                 for n, cur in choice.items() for w, (cost, drop) in table.options[n].items()
                 if drop <= table.options[n][cur][1] and 0 < cost - table.options[n][cur][0] <= left]
        if not moves:
            return
        *_, n, w = min(moves)
        choice[n] = w
