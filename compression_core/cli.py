"""`python -m compression_core`: the engine, headless. JSON on stdout with --json; progress and logs on stderr.

User errors (unknown model, bits 0, a missing file, a corrupt checkpoint ...) exit with code 2 and one line on
stderr saying what was wrong and what is allowed; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .config import (ACT_BITS, ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES, SCHEMES, SCOPES,
                     CompressionConfig, ConfigError, LayerOverride)

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UserError(f"{self.prog}: {message} (see --help)")


# ---- config flags: every one accepts a comma list (sweeps take the product) ---------------------------------

def _csv(cast, allowed=None, name=""):
    def parse(text: str):
        try:
            values = [cast(v.strip()) for v in str(text).split(",") if v.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of {cast.__name__}; got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{name} must be from {', '.join(map(str, allowed))}; got {bad[0]!r}")
        return values
    return parse


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nm must look like 2:4; got {text!r}")
    return n, m


def _nm_list(text: str):
    return [_nm(v) for v in text.split(",")]


GRID_FLAGS = ("bits", "quantizer", "scheme", "granularity", "range", "percentile", "sparsity", "prune", "scope",
              "nm", "act_bits", "index_bits", "finetune_steps")  # names shared with sweep.expand_grid


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression (each flag takes a comma list in sweep)")
    g.add_argument("--bits", type=_csv(int, ALLOWED_BITS, "--bits"), default=[32], help="1-8, 16 or 32 (=off)")
    g.add_argument("--quantizer", type=_csv(str, QUANTIZERS, "--quantizer"), default=["uniform"])
    g.add_argument("--scheme", type=_csv(str, SCHEMES, "--scheme"), default=["sym"])
    g.add_argument("--granularity", type=_csv(str, GRANULARITIES, "--granularity"), default=["channel"])
    g.add_argument("--range", type=_csv(str, RANGES, "--range"), default=["minmax"])
    g.add_argument("--percentile", type=_csv(float, None, "--percentile"), default=[99.9])
    g.add_argument("--act-bits", dest="act_bits", type=_csv(int, ACT_BITS, "--act-bits"), default=[32])
    g.add_argument("--sparsity", type=_csv(float, None, "--sparsity"), default=[0.0], help="0 <= s < 1")
    g.add_argument("--prune", type=_csv(str, PRUNE_METHODS, "--prune"), default=["magnitude"])
    g.add_argument("--nm", type=_nm_list, default=[(2, 4)], help="N:M for --prune nm, e.g. 2:4")
    g.add_argument("--scope", type=_csv(str, SCOPES, "--scope"), default=["layer"])
    g.add_argument("--index-bits", dest="index_bits", type=_csv(int, None, "--index-bits"), default=[4])
    g.add_argument("--finetune-steps", dest="finetune_steps", type=_csv(int, None, "--finetune-steps"), default=[0])
    g.add_argument("--bias-correction", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layer", action="append", default=[], metavar="NAME:key=value[,key=value]",
                   help="per-layer override, repeatable; keys: bits quantizer scheme granularity range sparsity "
                        "prune scope nm skip")


def configs_from_args(args) -> list[CompressionConfig]:
    """The product of all comma lists, deduplicated by config hash (meaningless combinations collapse)."""
    from .sweep import expand_grid

    base = CompressionConfig(bias_correction=args.bias_correction, seed=args.seed)
    configs = expand_grid(base, **{flag: getattr(args, flag) for flag in GRID_FLAGS})
    for text in args.layer:
        configs = [c.with_override(parse_layer_override(text, c)) for c in configs]
    return configs


def parse_layer_override(text: str, base: CompressionConfig) -> LayerOverride:
    """`conv1:bits=8,sparsity=0` -> LayerOverride; `fc2:skip=1` leaves the layer in fp32."""
    name, _, rest = text.partition(":")
    if not name or not rest:
        raise UserError(f"--layer must look like NAME:key=value[,key=value]; got {text!r}")
    q, p, skip = {}, {}, False
    for item in rest.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key in ("bits",):
            q["bits"] = int(value)
        elif key in ("quantizer", "scheme", "granularity", "range"):
            q[key] = value
        elif key == "sparsity":
            p["sparsity"] = float(value)
        elif key == "prune":
            p["method"] = value
        elif key == "scope":
            p["scope"] = value
        elif key == "nm":
            p["n"], p["m"] = _nm(value)
        elif key == "skip":
            skip = value.lower() in ("1", "true", "yes", "")
        else:
            raise UserError(f"--layer {text!r}: unknown key {key!r}; allowed: bits quantizer scheme granularity "
                            "range sparsity prune scope nm skip")
    return LayerOverride(name=name, quant=replace(base.quant, **q) if q else None,
                         prune=replace(base.prune, **p) if p else None, skip=skip)


# ---- subcommands -------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _experiment(args):
    from .datasets import load_dataset
    from .experiment import Experiment
    from .models import load_model

    dataset_name = args.dataset
    loaded = load_model(args.model, dataset=dataset_name, weights=args.weights, num_classes=args.num_classes)
    dataset = load_dataset(dataset_name or loaded.dataset, allow_download=args.allow_download)
    return Experiment(loaded, dataset, split=args.split, limit=args.limit, device=args.device)


def _stage_progress():
    """Progress of slow compression stages (fine-tuning) on stderr, every 10 %."""
    shown = set()

    def report(stage: str, fraction: float) -> None:
        tenth = int(fraction * 10)
        if (stage, tenth) not in shown:
            shown.add((stage, tenth))
            _log(f"{stage}: {fraction:.0%}")
    return report


def _store(args):
    from .store import Store
    return Store(args.store)


def _emit(args, payload, table_rows=None) -> None:
    if args.json:
        print(json.dumps(payload, indent=None, default=str))
    else:
        for row in table_rows if table_rows is not None else [payload]:
            print(row if isinstance(row, str) else _row(row))


def _row(r: dict) -> str:
    ci = f"[{r['accuracy_ci_low']:.2%}, {r['accuracy_ci_high']:.2%}]"
    return (f"{r['label']:<44} acc {r['accuracy']:.2%} {ci} n={r['n_samples']}  drop {r['accuracy_drop_pts']:+.2f} pt"
            f"  size {r['size_bytes'] / 1024:9.1f} KiB  x{r['compression_ratio']:.1f}  {r['bits_per_weight']:.2f} b/w"
            f"  sparsity {r['realized_sparsity']:.1%}")


def cmd_evaluate(args) -> None:
    config = configs_from_args(args)  # bad settings fail before any loading
    exp = _experiment(args)
    if len(config) != 1:
        raise UserError("evaluate takes one value per flag; use sweep for lists")
    store = _store(args) if args.store else None
    record = store.get(exp.key(config[0])) if store else None
    if record is None:
        record = exp.run(config[0], progress=_stage_progress())
        if store:
            store.put(record)
    _emit(args, record)


def cmd_sweep(args) -> None:
    from .sweep import sweep

    configs = configs_from_args(args)
    exp = _experiment(args)

    def progress(done, total, eta, label):
        _log(f"[{done}/{total}] eta {eta:.0f}s  {label}" if eta is not None else f"[{done}/{total}] {label}")

    store = _store(args)
    run_id = store.new_run(f"cli sweep {exp.loaded.name}/{exp.dataset.info.name}",
                           meta={"argv": sys.argv[1:], "configs": len(configs)})
    records = sweep(exp, configs, store=store, run_id=run_id, progress=progress)
    _emit(args, records, table_rows=records)


def cmd_sensitivity(args) -> None:
    from .sensitivity import layer_sensitivity

    settings = configs_from_args(args)
    exp = _experiment(args)
    rows = layer_sensitivity(exp, settings, progress=lambda d, t, *_: _log(f"[{d}/{t}]"))
    _emit(args, rows, table_rows=[f"{r['layer']:<12} {r['setting']:<44} drop {r['accuracy_drop_pts']:+.2f} pt"
                                  for r in rows])


def cmd_export(args) -> None:
    from .export import export

    from .interop import export_standard, require_onnx

    configs = configs_from_args(args)
    if len(configs) != 1:
        raise UserError("export takes one value per flag")
    if args.format == "onnx":
        require_onnx()  # a missing extra fails before any loading
    exp = _experiment(args)
    cm = exp.compress(configs[0], progress=_stage_progress())
    record = exp.run(configs[0], compressed=cm)
    if args.format == "packed":
        record["file_bytes"] = export(cm, args.out, exp.loaded.source)
        record["file"] = str(args.out)
        lines = [f"wrote {args.out}: {record['file_bytes']} bytes (reported size {record['size_bytes']} bytes)"]
    else:
        fields, lines = export_standard(cm, args.out, args.format, exp.x)
        record.update(fields)
    _emit(args, record, table_rows=[_row(record), *lines])


def cmd_train(args) -> None:
    from .train import train_and_save

    result = train_and_save(args.model, args.dataset, epochs=args.epochs, seed=args.train_seed,
                            device=args.device, out=args.out, progress=_log)
    _emit(args, result, table_rows=[json.dumps(result, default=str)])


def cmd_models(args) -> None:
    from .models import list_models
    rows = list_models()
    _emit(args, rows, table_rows=[json.dumps(r, default=str) for r in rows])


def cmd_datasets(args) -> None:
    from .datasets import list_datasets
    rows = list_datasets()
    _emit(args, rows, table_rows=[f"{r['name']:<14} {'ok' if r['available'] else 'unavailable: ' + str(r['reason'])}"
                                  for r in rows])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m compression_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p, config=True):
        p.add_argument("--model", required=True, help="built-in name, pkg.module:factory or torchvision:NAME")
        p.add_argument("--dataset", default=None, help="mnist, fashion-mnist, digits, mnist1d, idx:PATH, "
                                                       "imagefolder:PATH (default: the model's own)")
        p.add_argument("--weights", default=None, help=".safetensors or .pt/.pth state dict for your own model")
        p.add_argument("--num-classes", dest="num_classes", type=int, default=None)
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
        p.add_argument("--allow-download", action="store_true", help="let torchvision download missing data")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if config:
            p.add_argument("--split", default="test")
            p.add_argument("--limit", type=int, default=None, help="class-stratified subset of N samples")
            p.add_argument("--store", default=None, help="SQLite store path (default: user cache dir)")
            add_config_flags(p)

    for name, fn, help_ in [("evaluate", cmd_evaluate, "compress with one config and evaluate"),
                            ("sweep", cmd_sweep, "evaluate the product of comma lists, resumable"),
                            ("sensitivity", cmd_sensitivity, "compress one layer at a time"),
                            ("export", cmd_export, "write the packed compressed file")]:
        p = sub.add_parser(name, help=help_)
        common(p)
        if name == "export":
            p.add_argument("--out", required=True, type=Path)
            p.add_argument("--format", choices=("packed", "onnx", "safetensors"), default="packed",
                           help="packed (.cex, smallest), onnx (integer weights + DequantizeLinear; needs the onnx "
                                "extra) or safetensors (dequantized float32 state dict)")
        p.set_defaults(fn=fn)

    p = sub.add_parser("train", help="train a built-in architecture and write its checkpoint")
    common(p, config=False)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", dest="train_seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(fn=cmd_train)

    for name, fn in [("models", cmd_models), ("datasets", cmd_datasets)]:
        p = sub.add_parser(name, help=f"list {name} and whether they are available")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)
    return parser


def main(argv=None) -> int:
    from .datasets import DatasetUnavailable
    from .evaluate import DeviceUnavailable
    from .export import ExportError
    from .models import ModelLoadError

    user_errors = (UserError, ConfigError, ModelLoadError, DatasetUnavailable, DeviceUnavailable, ExportError,
                   FileNotFoundError, ValueError)
    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
    except user_errors as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
