"""The CLI's flags: argparse value types that refuse bad text with one line, and config flags -> CompressionConfigs.

Every refusal raises `UserError` (or argparse's `ArgumentTypeError`, which the parser turns into one), whose message
names the flag, shows the bad value with `repr` (so a newline cannot cut the line) and says what is allowed.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from .config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, OPTIMIZERS, PRUNE_METHODS, QUANTIZERS, RANGES, REPAIRS,
                     SCALE_DTYPES, SCHEDULES,
                     SCHEMES, SCOPES, CompressionConfig, ConfigError, LayerOverride, parse_nm)
from .errors import shown
from .methods import prune_method_info, quantizer_info
from .grid import GRID_FIELDS, expand_grid

MAX_SEED = 2 ** 63 - 1  # torch.manual_seed takes at most a signed 64-bit integer
LAYER_KEYS = ("bits", "quantizer", "scheme", "granularity", "range", "group_size", "scale_dtype", "sparsity", "prune",
              "scope", "nm", "skip")
NM_KEY = "nm"  # the --layer key of an N:M pattern, named like the --nm flag
SKIP_VALUES = {"1": True, "true": True, "yes": True, "": True, "0": False, "false": False, "no": False}


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


# ---- value types ------------------------------------------------------------------------------------------

def csv(cast, allowed=None, name=""):
    """A comma list of `cast` values, each from `allowed` when given (sweeps take the product of these lists)."""
    kind = {int: "integers", float: "numbers", str: "names"}[cast]

    def parse(text: str):
        try:
            values = [cast(v.strip()) for v in str(text).split(",") if v.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of {kind}; got {shown(text)}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{name} is empty; give at least one value")
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{name} must be from {', '.join(map(str, allowed))}; got {bad[0]!r}")
        return values
    return parse


def nm_list(text: str) -> list[tuple[int, int]]:
    """`2:4,1:4` -> [(2, 4), (1, 4)]: the --nm patterns of a sweep."""
    try:
        return [parse_nm(v, "--nm") for v in str(text).split(",")]
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(name: str):
    """An integer >= 1 (--limit, --epochs, --num-classes)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer; got {shown(text)}")
        return value
    return parse


def seed(text: str) -> int:
    """A seed in [0, 2^63): what torch.manual_seed takes."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seed must be an integer in [0, 2^63); got {shown(text)}")
    return value


def out_path(text: str) -> Path:
    """A file to write: not empty, not a folder, in a folder that exists."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("--out is empty; give a file path such as model.cex")
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"--out {shown(text)} is a folder; give a file path inside it")
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"--out {shown(text)}: folder {shown(str(path.parent))} does not exist; "
                                             "create it first")
    except OSError as err:
        raise argparse.ArgumentTypeError(f"--out {shown(text)} is not a usable path ({err.strerror})") from None
    return path


# ---- config flags ---------------------------------------------------------------------------------------

# sweep settings the CLI takes once (switches, one seed)
SINGLE_FLAGS = ("bias_correction", "fold_bn", "seed", "double_quant", "act_order")
# sweep settings with a comma-list flag, in product order; `norm` has no flag (the default L1 ranks channels)
GRID_FLAGS = tuple(name for name in GRID_FIELDS if name not in (*SINGLE_FLAGS, "norm"))


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression (each flag takes a comma list in sweep)")
    g.add_argument("--bits", type=csv(int, ALLOWED_BITS, "--bits"), default=[32], help="1-8, 16 or 32 (=off)")
    g.add_argument("--quantizer", type=csv(str, QUANTIZERS, "--quantizer"), default=["uniform"])
    g.add_argument("--scheme", type=csv(str, SCHEMES, "--scheme"), default=["sym"])
    g.add_argument("--granularity", type=csv(str, GRANULARITIES, "--granularity"), default=None,
                   help="tensor, channel (default) or group (blocks of --group-size along the input dimension)")
    g.add_argument("--group-size", dest="group_size", type=csv(int, None, "--group-size"), default=None,
                   help="block length for --granularity group and NF4 (default 128; NF4 64; MX always 32)")
    g.add_argument("--scale-dtype", dest="scale_dtype", type=csv(str, SCALE_DTYPES, "--scale-dtype"),
                   default=["fp32"], help="storage type of each scale: fp32, fp16 or e8m0 (uniform, fp8/6/4)")
    g.add_argument("--double-quant", dest="double_quant", action=argparse.BooleanOptionalAction, default=True,
                   help="NF4: double-quantize the block scales to int8 in blocks of 256 (default: on)")
    g.add_argument("--range", type=csv(str, RANGES, "--range"), default=["minmax"])
    g.add_argument("--percentile", type=csv(float, None, "--percentile"), default=None,
                   help="clip percentile of |w| for --range percentile, in (50, 100] (default 99.9)")
    g.add_argument("--act-bits", dest="act_bits", type=csv(int, ACT_BITS, "--act-bits"), default=[32])
    g.add_argument("--sparsity", type=csv(float, None, "--sparsity"), default=None,
                   help="0 <= s < 1 (not with --prune nm alone: N:M fixes the sparsity)")
    g.add_argument("--prune", type=csv(str, PRUNE_METHODS, "--prune"), default=["magnitude"])
    g.add_argument("--nm", type=nm_list, default=None, help="N:M for --prune nm, e.g. 2:4 (default 2:4)")
    g.add_argument("--scope", type=csv(str, SCOPES, "--scope"), default=["layer"])
    g.add_argument("--index-bits", dest="index_bits", type=csv(int, None, "--index-bits"), default=[4])
    g.add_argument("--finetune-steps", dest="finetune_steps", type=csv(int, None, "--finetune-steps"), default=[0])
    g.add_argument("--bias-correction", action="store_true")
    _add_retraining_flags(p)
    g.add_argument("--fold-bn", dest="fold_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm into the conv it follows before compressing (default: on)")
    g.add_argument("--seed", type=seed, default=0)
    g.add_argument("--repair", type=csv(str, REPAIRS, "--repair"), default=["none"],
                   help="calibrated repair of the rounding: gptq (uniform grids), awq (weight-only low-bit), "
                        "smoothquant (W8A8: with --act-bits 8)")
    g.add_argument("--alpha", type=csv(float, None, "--alpha"), default=None,
                   help="SmoothQuant migration strength in [0, 1] (default 0.5)")
    g.add_argument("--act-order", dest="act_order", action="store_true",
                   help="GPTQ: round columns in decreasing order of the input Hessian's diagonal")
    g.add_argument("--layer", action="append", default=[], metavar="NAME:key=value[,key=value]",
                   help=f"per-layer override, repeatable; keys: {' '.join(LAYER_KEYS)}")


def _check_unused_flags(args) -> None:
    """Refuse a flag that no config of the product would use (it would be silently ignored)."""
    patterned = [not prune_method_info(m).uses_sparsity for m in args.prune]  # N:M: the pattern fixes sparsity
    if args.sparsity is not None and all(patterned):  # also 0: N:M would still prune to 1 - N/M
        raise UserError(f"--sparsity {','.join(map(str, args.sparsity))} has no effect with --prune nm (N:M sets "
                        "its own sparsity, 1 - N/M); drop --sparsity, or choose N:M with --nm")
    if args.percentile is not None and "percentile" not in args.range:
        raise UserError("--percentile only applies to --range percentile; add --range percentile or drop "
                        "--percentile")
    if args.nm is not None and not any(patterned):
        raise UserError("--nm only applies to --prune nm; add --prune nm or drop --nm")
    bad = [a for a in args.alpha or () if not 0.0 <= a <= 1.0]
    if bad:
        raise UserError(f"--alpha must be in [0, 1] (SmoothQuant migration strength); got {bad[0]!r}")
    if args.alpha is not None and "smoothquant" not in args.repair:
        raise UserError("--alpha only applies to --repair smoothquant; add it or drop --alpha")
    if args.act_order and "gptq" not in args.repair:
        raise UserError("--act-order only applies to --repair gptq; add it or drop --act-order")


def _check_format_flags(args) -> None:
    """Refuse a granularity no chosen quantizer supports, a bad group size and format flags nothing would use."""
    infos = {q: quantizer_info(q) for q in args.quantizer}
    for name, info in infos.items():
        if args.granularity and info.granularities and not set(args.granularity) & set(info.granularities):
            blocks = f" ({info.default_group_size}-element blocks)" if info.fixed_group_size else ""
            raise UserError(f"--granularity {','.join(args.granularity)} does not apply to --quantizer {name}; it "
                            f"supports {', '.join(info.granularities)}{blocks}")
    bad = [g for g in args.group_size or () if g < 1]
    if bad:
        raise UserError(f"--group-size must be positive integers (e.g. 32, 64, 128, 256); got {bad[0]}")
    grouped = [q for q, i in infos.items() if "group" in i.granularities and not i.fixed_group_size
               and ("group" in (args.granularity or ()) or i.granularities == ("group",))]
    if args.group_size is not None and not grouped:
        raise UserError("--group-size only applies to --granularity group (uniform, fp8/6/4) and to --quantizer nf4;"
                        " MX formats always use 32-element blocks")
    if args.scale_dtype != ["fp32"] and not any(i.scale_dtypes for i in infos.values()):
        offered = [q for q in QUANTIZERS if quantizer_info(q).scale_dtypes]
        raise UserError(f"--scale-dtype only applies to --quantizer {', '.join(offered)}")
    if not args.double_quant and not any(i.double_quant for i in infos.values()):
        raise UserError("--no-double-quant only applies to --quantizer nf4")


def configs_from_args(args) -> list[CompressionConfig]:
    """The product of all comma lists, deduplicated by config hash (meaningless combinations collapse)."""
    _check_unused_flags(args)
    _check_format_flags(args)
    lists = {flag: getattr(args, flag) for flag in GRID_FLAGS}
    lists["granularity"] = args.granularity or ["channel"]
    lists["group_size"] = args.group_size or [None]
    lists["double_quant"] = [args.double_quant]
    lists["sparsity"] = args.sparsity if args.sparsity is not None else [0.0]
    lists["nm"] = args.nm if args.nm is not None else [(2, 4)]
    lists["percentile"] = args.percentile if args.percentile is not None else [99.9]
    lists["alpha"] = args.alpha if args.alpha is not None else [0.5]
    lists["act_order"] = [args.act_order]  # a switch, set with the repair (a base config would reset it)
    configs = expand_grid(CompressionConfig(bias_correction=args.bias_correction, fold_bn=args.fold_bn,
                                            seed=args.seed), **lists)
    configs = _with_retraining(args, configs)
    names = [text.partition(":")[0] for text in args.layer]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--layer {shown(twice[0])} is given more than once; give each layer one --layer")
    for text in args.layer:
        configs = [c.with_override(parse_layer_override(text, c)) for c in configs]
    return configs


IMPORTANCE_FLAGS = {"l1": ("norm", 1), "l2": ("norm", 2), "bn": ("bn", 1), "taylor": ("taylor", 1)}


def _add_retraining_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured pruning and retraining (one value each)")
    g.add_argument("--importance", choices=tuple(IMPORTANCE_FLAGS), default="l1",
                   help="how --prune structured ranks channels: l1 / l2 filter norm, bn (BatchNorm scale), taylor")
    g.add_argument("--finetune-epochs", dest="finetune_epochs", type=_count("--finetune-epochs"), default=0,
                   help="retrain for N passes over the training split (masks and removed channels fixed)")
    g.add_argument("--finetune-optimizer", dest="finetune_optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--finetune-lr", dest="finetune_lr", type=float, default=1e-4, help="peak learning rate")
    g.add_argument("--finetune-schedule", dest="finetune_schedule", choices=SCHEDULES, default="constant")
    g.add_argument("--finetune-batch", dest="finetune_batch", type=_count("--finetune-batch"), default=128)
    g.add_argument("--distill", type=float, default=None, metavar="T",
                   help="distil from the uncompressed model at temperature T > 0 while retraining")
    g.add_argument("--gradual", type=_count("--gradual"), default=0, metavar="STAGES",
                   help="raise sparsity in STAGES steps on Zhu & Gupta's cubic schedule while retraining")


def _count(flag: str):
    def parse(text: str) -> int:
        value = _cast(int, text, f"{flag} must be a whole number >= 0")
        if value < 0:
            raise UserError(f"{flag} must be a whole number >= 0; got {shown(text)}")
        return value
    return parse


def _with_retraining(args, configs: list[CompressionConfig]) -> list[CompressionConfig]:
    """Apply --importance and the retraining flags (distill / gradual only to configs that retrain)."""
    if args.distill is not None and not (math.isfinite(args.distill) and args.distill > 0):
        raise UserError(f"--distill is a temperature T > 0 (e.g. 4); got {shown(args.distill)}")
    retraining = args.finetune_epochs > 0 or any(args.finetune_steps)
    if (args.distill or args.gradual) and not retraining:
        raise UserError("--distill and --gradual act while retraining: add --finetune-epochs N or --finetune-steps N")
    importance, norm = IMPORTANCE_FLAGS[args.importance]
    out = []
    for c in configs:
        if prune_method_info(c.prune.method).structured:
            c = replace(c, prune=replace(c.prune, importance=importance, norm=norm))
        c = replace(c, finetune_epochs=args.finetune_epochs, finetune_optimizer=args.finetune_optimizer,
                    finetune_lr=args.finetune_lr, finetune_schedule=args.finetune_schedule,
                    finetune_batch=args.finetune_batch)
        if c.retrains:
            c = replace(c, distill=args.distill or 0.0, gradual=args.gradual)
        out.append(c)
    return list({c.config_hash: c for c in out}.values())


def _cast(cast, value: str, must: str):
    try:
        return cast(value)
    except ValueError:
        raise UserError(f"{must}; got {shown(value)}") from None


def parse_layer_override(text: str, base: CompressionConfig) -> LayerOverride:
    """`conv1:bits=8,sparsity=0` -> LayerOverride; `fc2:skip=1` leaves the layer in fp32."""
    name, _, rest = text.partition(":")
    if not name.strip() or not rest.strip():
        raise UserError(f"--layer must look like NAME:key=value[,key=value]; got {shown(text)}")
    q, p, skip = {}, {}, False
    try:
        for item in rest.split(","):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key == "bits":
                q["bits"] = _cast(int, value, "bits must be an integer: 1-8, 16 or 32")
            elif key in ("quantizer", "scheme", "granularity", "range", "scale_dtype"):
                q[key] = value
            elif key == "group_size":
                q[key] = _cast(int, value, "group_size must be a positive integer, e.g. 64")
            elif key == "sparsity":
                p["sparsity"] = _cast(float, value, "sparsity must be a number in [0, 1)")
            elif key == "prune":
                p["method"] = value
            elif key == "scope":
                p["scope"] = value
            elif key == NM_KEY:
                p["n"], p["m"] = parse_nm(value, NM_KEY)
            elif key == "skip" and value.lower() in SKIP_VALUES:
                skip = SKIP_VALUES[value.lower()]
            elif key == "skip":
                raise UserError(f"skip must be 1/0, true/false or yes/no; got {shown(value)}")
            else:
                raise UserError(f"unknown key {shown(key)}; allowed: {' '.join(LAYER_KEYS)}")
        return LayerOverride(name=name, quant=replace(base.quant, **q) if q else None,
                             prune=replace(base.prune, **p) if p else None, skip=skip)
    except (UserError, ConfigError, argparse.ArgumentTypeError) as err:
        raise UserError(f"--layer {shown(text)}: {err}") from None
