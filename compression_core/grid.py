"""Sweep grids: lists of settings -> every combination as a canonical, de-duplicated `CompressionConfig`.

Example:
    >>> from compression_core.config import CompressionConfig
    >>> len(expand_grid(CompressionConfig(), bits=[2, 4, 8, 32], sparsity=[0, 0.5, 0.9]))
    12
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from .config import CompressionConfig, ConfigError, parse_nm

# sweep setting name (the CLI flag without dashes, '-' -> '_') -> (part of the config, field)
GRID_FIELDS: dict[str, tuple[str, str]] = {
    "bits": ("quant", "bits"),
    "quantizer": ("quant", "quantizer"),
    "scheme": ("quant", "scheme"),
    "granularity": ("quant", "granularity"),
    "range": ("quant", "range"),
    "percentile": ("quant", "percentile"),
    "group_size": ("quant", "group_size"),
    "scale_dtype": ("quant", "scale_dtype"),
    "double_quant": ("quant", "double_quant"),
    "sparsity": ("prune", "sparsity"),
    "prune": ("prune", "method"),
    "scope": ("prune", "scope"),
    "norm": ("prune", "norm"),
    "nm": ("prune", "n:m"),  # "2:4" or (2, 4)
    "act_bits": ("config", "act_bits"),
    "index_bits": ("config", "index_bits"),
    "finetune_steps": ("config", "finetune_steps"),
    "bias_correction": ("config", "bias_correction"),
    "fold_bn": ("config", "fold_bn"),
    "seed": ("config", "seed"),
    "repair": ("config", "repair"),
    "alpha": ("config", "alpha"),
    "act_order": ("config", "act_order"),
}


def expand_grid(base: CompressionConfig | None = None, **lists: Any) -> list[CompressionConfig]:
    """Every combination of the given settings applied to `base`, canonical and de-duplicated by config hash.

    Args:
        base: the config the grid varies (its overrides, seed, ... are kept); None = `CompressionConfig()`.
        **lists: setting name -> list of values (a single value is a one-element list). Names are those of
            `GRID_FIELDS`: bits, quantizer, scheme, granularity, range, percentile, group_size, scale_dtype,
            double_quant, sparsity, prune (method),
            scope, norm, nm ("2:4"), act_bits, index_bits, finetune_steps, bias_correction, fold_bn, seed,
            repair (none / gptq / awq / smoothquant), alpha, act_order.

    Returns:
        Configs in itertools.product order of the arguments (first occurrence kept). bits=32 with sparsity 0 is
        the fp32 point; e.g. `quantizer=["fp16"]` with `bits=[4, 8]` gives one fp16 config.

    Raises:
        ConfigError: unknown setting name, or a combination the config rejects: the message gives the config's
            reason, after the values of the settings that vary in this grid (none for a one-config grid).
    """
    base = base or CompressionConfig()
    unknown = sorted(set(lists) - GRID_FIELDS.keys())
    if unknown:
        raise ConfigError(f"unknown sweep setting(s) {unknown}; allowed: {', '.join(GRID_FIELDS)}")
    names = list(lists)
    values = [list(v) if isinstance(v, (list, tuple, set, range)) else [v] for v in lists.values()]
    varying = {name for name, options in zip(names, values) if len(options) > 1}
    configs: dict[str, CompressionConfig] = {}
    for combo in itertools.product(*values):
        parts: dict[str, dict[str, Any]] = {"quant": {}, "prune": {}, "config": {}}
        for name, value in zip(names, combo):
            part, fld = GRID_FIELDS[name]
            if fld == "n:m":
                parts[part]["n"], parts[part]["m"] = parse_nm(value)
            else:
                parts[part][fld] = value
        try:  # QuantSpec / PruneSpec reset settings that another choice makes meaningless
            config = replace(base, quant=replace(base.quant, **parts["quant"]),
                             prune=replace(base.prune, **parts["prune"]),
                             **parts["config"])
        except ConfigError as e:
            where = {name: value for name, value in zip(names, combo) if name in varying}
            raise ConfigError(f"sweep combination {where} is invalid: {e}" if where else str(e)) from None
        configs.setdefault(config.config_hash, config)
    return list(configs.values())
