"""The CLI command that recomputes a stored record: `python -m compression_core evaluate` with the record's model,
evaluation set and config written back as flags.

The flags are checked by parsing them with the CLI's own parser: a command is returned only when the config it
builds has the record's config hash, so a report never shows a command that computes something else.

Example:
    >>> from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
    >>> config_flags(CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5)))
    ['--bits', '4', '--sparsity', '0.5']
"""
from __future__ import annotations

import shlex

from .cli_flags import IMPORTANCE_FLAGS, NM_KEY, UserError
from .config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec
from .methods import quantizer_info

COMMAND = ("python", "-m", "compression_core", "evaluate")
TRANSFORM_TAG = " [transform "  # image folders: the record's dataset is "imagefolder:PATH [transform NAME]"
QUANT_FLAGS = ("bits", "quantizer", "scheme", "granularity", "range", "scale_dtype")
PRUNE_KEYS = (("sparsity", "sparsity"), ("prune", "method"), ("scope", "scope"))  # --layer key, PruneSpec field
CONFIG_FLAGS = ("finetune_epochs", "finetune_optimizer", "finetune_lr", "finetune_schedule", "finetune_batch",
                 "distill", "gradual", "finetune_steps", "act_bits", "index_bits", "seed", "repair")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _changed(value, default, name: str) -> list[str]:
    """[--name, value] when `value` differs from `default`, else []."""
    return [] if value == default else [_flag(name), str(value)]


def _quant_flags(q: QuantSpec) -> list[str]:
    flags = [f for name in QUANT_FLAGS for f in _changed(getattr(q, name), getattr(QuantSpec(), name), name)]
    info = quantizer_info(q.quantizer)
    if q.group_size is not None and not info.fixed_group_size and q.group_size != info.default_group_size:
        flags += ["--group-size", str(q.group_size)]
    if q.range == "percentile":
        flags += _changed(q.percentile, QuantSpec().percentile, "percentile")
    return flags + ([] if q.double_quant else ["--no-double-quant"])


def _prune_flags(p: PruneSpec) -> list[str]:
    flags = _changed(p.sparsity, 0.0, "sparsity") + _changed(p.method, PruneSpec().method, "prune")
    flags += _changed(p.scope, PruneSpec().scope, "scope")
    if p.uses_pattern:
        flags += ["--nm", f"{p.n}:{p.m}"]
    importance = {v: k for k, v in IMPORTANCE_FLAGS.items()}[(p.importance, p.norm)]  # (importance, norm) -> flag
    return flags + _changed(importance, "l1", "importance")


def _layer_flag(o: LayerOverride, base: CompressionConfig) -> list[str]:
    """`--layer NAME:key=value,...` in the syntax `cli_flags.parse_layer_override` reads (relative to `base`)."""
    items = ["skip=1"] if o.skip else []
    if o.quant is not None:
        items += [f"{k}={getattr(o.quant, k)}" for k in (*QUANT_FLAGS, "group_size")
                  if getattr(o.quant, k) != getattr(base.quant, k) and getattr(o.quant, k) is not None]
    if o.prune is not None:
        p, b = o.prune, base.prune
        items += [f"{key}={getattr(p, field)}" for key, field in PRUNE_KEYS if getattr(p, field) != getattr(b, field)]
        items += [f"{NM_KEY}={p.n}:{p.m}"] if p.uses_pattern and (p.n, p.m) != (b.n, b.m) else []
    return ["--layer", f"{o.name}:{','.join(items) or 'skip=0'}"]


def config_flags(config: CompressionConfig) -> list[str]:
    """CLI flags that build `config` (those at their defaults left out); `command` checks them."""
    defaults = CompressionConfig()
    flags = _quant_flags(config.quant) + _prune_flags(config.prune)
    flags += [f for name in CONFIG_FLAGS for f in _changed(getattr(config, name), getattr(defaults, name), name)]
    if config.repair == "smoothquant":
        flags += _changed(config.alpha, defaults.alpha, "alpha")
    flags += ["--act-order"] if config.act_order else []
    flags += ["--bias-correction"] if config.bias_correction else []
    flags += [] if config.fold_bn else ["--no-fold-bn"]
    for o in config.overrides:
        flags += _layer_flag(o, config)
    return flags


def record_argv(record: dict) -> list[str]:
    """The `evaluate` arguments (after `python -m compression_core`) that recompute `record`: model, dataset,
    split, subset size, task and the config flags."""
    dataset, tag, transform = record["dataset"].partition(TRANSFORM_TAG)
    argv = ["evaluate", "--model", record["model"], "--dataset", dataset]
    argv += ["--transform", transform.rstrip("]")] if tag else []
    argv += [] if record["split"] == "test" else ["--split", record["split"]]
    argv += [] if record["limit"] is None else ["--limit", str(record["limit"])]
    return argv + ["--task", record["task"], *config_flags(CompressionConfig.from_dict(record["config"]))]


def reproduce_command(record: dict) -> str | None:
    """The shell command (quoted for a POSIX shell) that recomputes `record`, or None when its config cannot be
    written as CLI flags (a per-layer setting with no `--layer` key, such as a layer's own percentile)."""
    from .cli import build_parser  # the CLI's own parser checks the flags
    from .cli_flags import configs_from_args

    argv = record_argv(record)
    try:
        configs = configs_from_args(build_parser().parse_args(argv))
    except (UserError, ConfigError):
        return None
    if [c.config_hash for c in configs] != [record["config_hash"]]:
        return None
    return shlex.join([*COMMAND[:3], *argv])
