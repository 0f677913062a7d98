"""Bit allocation under a size budget: the budget holds in the engine's size model, never worse than uniform bits,
deterministic, one-line refusals; on a torchvision ResNet-18 and on a plain module."""
from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
import torch
import torchvision
from torch import nn

from compression_core.allocate import (Allocation, AllocationError, _choose, _Table, allocate_bits,
                                       drops_from_sensitivity)
from compression_core.cli_flags import parse_layer_override
from compression_core.compress import compress
from compression_core.compressed import compressible_layers
from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec
from compression_core.sensitivity import only_layer
from compression_core.size import size_report


class SmallNet(nn.Module):
    """A CNN written the usual way (conv-BN-ReLU, pooling, two Linear layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 4)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def synthetic_drops(names: list[str], widths=(2, 3, 4, 8), seed: int = 0) -> dict[str, dict[int, float]]:
    """Drops that fall with the width, each layer with its own (random) sensitivity."""
    rng = random.Random(seed)
    return {n: {b: rng.uniform(0.1, 10.0) * 2.0 ** -b * (1 + rng.random()) for b in widths} for n in names}


def measured_bytes(model: nn.Module, config: CompressionConfig) -> int:
    return size_report(compress(model, config)).total_bytes


def at_bits(config: CompressionConfig, bits: int) -> CompressionConfig:
    """The config with every layer at `bits` (no overrides)."""
    return CompressionConfig(quant=dataclasses.replace(config.quant, bits=bits), prune=config.prune)


def uniform_best(model, config, drops, budget, widths=(2, 3, 4, 8)) -> float:
    """The smallest drop sum of a uniform width (every layer at b) that fits the budget, measured."""
    fits = [sum(d[b] for d in drops.values()) for b in widths if measured_bytes(model, at_bits(config, b)) <= budget]
    return min(fits, default=math.inf)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_resnet18_meets_the_budget_in_the_size_model_and_beats_uniform(resnet):
    names = [n for n, _ in compressible_layers(resnet)]
    drops = synthetic_drops(names)
    config = CompressionConfig(quant=QuantSpec(bits=8, granularity="channel"))
    four = measured_bytes(resnet, at_bits(config, 4))
    budget = four + 200_000  # between uniform 4 and 8 bits: only a mix uses it
    a = allocate_bits(resnet, config, drops, budget, widths=(2, 4, 8, 32))
    assert isinstance(a, Allocation) and len(a.overrides) == len(names)
    assert a.size_bytes == measured_bytes(resnet, a.config) <= budget  # the engine's own size of the result
    assert a.size_bytes > four  # the spare bytes went into precision
    assert a.drop_sum < sum(d[4] for d in drops.values())  # better than uniform 4 bits, the best uniform that fits
    assert a.drop_sum == pytest.approx(sum(drops[n][b] if b != 32 else 0.0 for n, b in a.bits))
    assert {b for _, b in a.bits} <= {2, 4, 8, 32}
    # the overrides are what the CLI's --layer gives for the same widths
    cli = tuple(parse_layer_override(f"{n}:skip=1" if b == 32 else f"{n}:bits={b}", config) for n, b in a.bits)
    assert a.config.overrides == CompressionConfig(quant=config.quant, overrides=cli).overrides


def test_plain_module_is_deterministic_and_never_worse_than_uniform():
    torch.manual_seed(1)
    net = SmallNet().eval()
    names = [n for n, _ in compressible_layers(net)]
    drops = synthetic_drops(names, seed=3)
    config = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym"))
    low, high = measured_bytes(net, at_bits(config, 2)), measured_bytes(net, CompressionConfig())
    for budget in range(low, high, (high - low) // 7):
        a = allocate_bits(net, config, drops, budget)
        assert a.size_bytes == measured_bytes(net, a.config) <= budget
        assert a.drop_sum <= uniform_best(net, config, drops, budget, widths=(2, 3, 4, 8)) + 1e-12
        assert allocate_bits(net, config, drops, budget) == a  # same inputs, same allocation


def test_small_case_against_brute_force_over_measured_sizes():
    """Every combination of 4 layers x 3 widths, sized by compressing it: the allocation fits, no fitting
    combination has a smaller drop sum by more than the greedy's gap, and it is never worse than uniform."""
    torch.manual_seed(2)
    net = SmallNet().eval()
    names = [n for n, _ in compressible_layers(net)]
    drops = synthetic_drops(names, widths=(2, 8), seed=5)
    config = CompressionConfig(quant=QuantSpec(bits=8))
    combos = {}
    for widths in itertools.product((2, 8, 32), repeat=len(names)):
        choice = dict(zip(names, widths))
        over = tuple(LayerOverride(n, skip=True) if b == 32 else LayerOverride(n, quant=QuantSpec(bits=b))
                     for n, b in choice.items())
        combos[widths] = (measured_bytes(net, CompressionConfig(quant=config.quant, overrides=over)),
                          sum(0.0 if b == 32 else drops[n][b] for n, b in choice.items()))
    sizes = sorted(s for s, _ in combos.values())
    for budget in sizes[::9]:
        a = allocate_bits(net, config, drops, budget, widths=(2, 8, 32))
        assert a.size_bytes == combos[tuple(b for _, b in a.bits)][0] <= budget
        best = min(d for s, d in combos.values() if s <= budget)
        uniform = min(d for w, (s, d) in combos.items() if s <= budget and len(set(w)) == 1)
        assert best - 1e-12 <= a.drop_sum <= uniform + 1e-12


def test_greedy_on_random_tables_is_never_worse_than_uniform_and_leaves_no_fitting_upgrade():
    rng = random.Random(7)
    for _ in range(300):
        layers = tuple(f"l{i}" for i in range(rng.randint(1, 5)))
        options = {}
        for n in layers:
            size = rng.randint(10, 1000)
            options[n] = {b: (size * b + rng.randint(0, 64), 0.0 if b == 32 else rng.uniform(0, 5) / b)
                          for b in (2, 4, 8, 32)}
        table = _Table(layers=layers, options=options, other=rng.randint(0, 100))
        lowest = table.total({n: 2 for n in layers})
        target = rng.randint(lowest, table.total({n: 32 for n in layers}))
        choice = _choose(table, target, math.ceil(target / 8))
        assert table.total(choice) <= target
        uniform = [table.drop({n: b for n in layers}) for b in (2, 4, 8, 32)
                   if table.total({n: b for n in layers}) <= target]
        assert table.drop(choice) <= min(uniform) + 1e-12
        for n, cur in choice.items():  # no single move to a less harmful width still fits
            for b, (cost, drop) in options[n].items():
                assert not (drop < options[n][cur][1] and table.total({**choice, n: b}) <= target)


def test_global_pruning_with_skipped_layers_still_meets_the_measured_budget():
    """Skipping a layer under global-scope pruning moves the threshold of the others: sizes are not additive,
    and the allocation re-aims until the measured size holds."""
    torch.manual_seed(4)
    net = SmallNet().eval()
    names = [n for n, _ in compressible_layers(net)]
    config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.8, scope="global"))
    drops = synthetic_drops(names, seed=9)
    low, high = measured_bytes(net, at_bits(config, 2)), measured_bytes(net, CompressionConfig())
    for budget in range(low, high, (high - low) // 5):
        a = allocate_bits(net, config, drops, budget)
        assert a.size_bytes == measured_bytes(net, a.config) <= budget


def test_refusals_are_one_line():
    net = SmallNet().eval()
    drops = synthetic_drops([n for n, _ in compressible_layers(net)])
    smallest = measured_bytes(net, CompressionConfig(quant=QuantSpec(bits=2)))
    with pytest.raises(AllocationError, match=f"cannot be met.*needs {smallest:,} B") as err:
        allocate_bits(net, CompressionConfig(), drops, smallest - 1)
    assert "\n" not in str(err.value)
    with pytest.raises(AllocationError, match="choice of widths; fp16 always uses 16"):
        allocate_bits(net, CompressionConfig(quant=QuantSpec(quantizer="fp16")), drops, 10_000)
    with pytest.raises(AllocationError, match="width 1: bits=1 needs scheme asym"):
        allocate_bits(net, CompressionConfig(), drops, 10_000, widths=(1, 32))
    with pytest.raises(AllocationError, match="'nope', not a compressible layer"):
        allocate_bits(net, CompressionConfig(), {"nope": {2: 1.0}}, 10_000)
    with pytest.raises(AllocationError, match="must be a number; got nan"):
        allocate_bits(net, CompressionConfig(), {"fc1": {2: float("nan")}}, 10_000)
    with pytest.raises(AllocationError, match="whole number of bytes"):
        allocate_bits(net, CompressionConfig(), drops, 0)


def test_drops_from_sensitivity_keeps_weight_only_settings():
    names = ["conv1", "fc"]
    settings = [CompressionConfig(quant=QuantSpec(bits=2)), CompressionConfig(quant=QuantSpec(bits=8)),
                CompressionConfig(prune=PruneSpec(sparsity=0.5)),
                CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5)),
                CompressionConfig(quant=QuantSpec(bits=4), act_bits=8)]
    records = [{"layer": n, "config": only_layer(s, n, names).to_dict(), "metric": "accuracy",
                "accuracy_drop_pts": 10.0 * i + j} for i, s in enumerate(settings) for j, n in enumerate(names)]
    assert drops_from_sensitivity(records) == {"conv1": {2: 0.0, 8: 10.0}, "fc": {2: 1.0, 8: 11.0}}
