"""`python -m compression_core`: the engine, headless. JSON on stdout with --json; progress and logs on stderr.

User errors (unknown model, bits 0, a missing file, a corrupt checkpoint ...) exit with code 2 and one line on
stderr saying what was wrong and what is allowed; never a traceback.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ._version import __version__
from .cli_flags import UserError, add_config_flags, configs_from_args, out_path, positive_int, seed
from .cli_shards import add_commands as add_shard_commands, shard_configs
from .errors import error_line, shown
from .record_text import change_text, progress_line, record_line
from .tasks import TASKS

EXIT_USER_ERROR = 2
STREAMED_EXPORT_CHECK = 256  # samples of a streamed split that onnxruntime's agreement is measured on


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UserError(f"{self.prog}: {message} (see --help)")


# ---- subcommands -------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _experiment(args, configs=()):
    """The Experiment the flags name (`ExperimentSpec.from_args(args).build()`); `configs`' layer names are checked
    against the model."""
    from .spec import ExperimentSpec

    exp = ExperimentSpec.from_args(args).build()
    for config in configs:
        unknown = sorted({o.name for o in config.overrides} - set(exp.layer_names))
        if unknown:
            raise UserError(f"--layer {shown(unknown[0])}: model {exp.loaded.name} has no such compressible layer; "
                            f"its layers are {', '.join(exp.layer_names)}")
    return exp


def _stage_progress():
    """Progress of slow compression stages (fine-tuning) on stderr, every 10 %."""
    reported = set()

    def report(stage: str, fraction: float) -> None:
        tenth = int(fraction * 10)
        if (stage, tenth) not in reported:
            reported.add((stage, tenth))
            _log(f"{stage}: {fraction:.0%}")
    return report


def _store(args):
    """Open the result store (--store, else the default); a path that cannot be a store is a UserError."""
    import sqlite3

    from .store import Store, StoreError, default_store_path

    path = args.store if args.store is not None else default_store_path()
    try:
        if Path(path).expanduser().is_dir():
            raise UserError(f"--store {shown(str(path))} is a folder; give a file path such as "
                            f"{shown(str(Path(path) / 'runs.sqlite'))}")
        return Store(path)
    except (sqlite3.Error, StoreError, OSError) as err:
        raise UserError(f"--store {shown(str(path))} cannot be opened as a result store ({_store_failure(err)}); "
                        "give a SQLite file written by compression_core, or a new file in a writable folder") from None


def _store_failure(err: Exception) -> str:
    """What went wrong with the store, in the OS's or SQLite's words."""
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__


def _emit(args, payload, table_rows=None, lead=()) -> None:
    """--json: the payload as JSON; --csv: records as CSV (`lead` columns first); else the text `table_rows`."""
    if args.json:
        print(json.dumps(payload, indent=None, default=str))
    elif getattr(args, "csv", False):
        _write_csv(payload if isinstance(payload, list) else [payload], lead)
    else:
        for row in table_rows if table_rows is not None else [payload]:
            print(row if isinstance(row, str) else record_line(row))


def _write_csv(records: list[dict], lead: tuple[str, ...]) -> None:
    """One CSV row per record on stdout: `lead` columns, then `record.TABLE_COLUMNS` (config as JSON text)."""
    from .record import TABLE_COLUMNS, table_row

    writer = csv.DictWriter(sys.stdout, fieldnames=[*lead, *TABLE_COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**{c: r.get(c) for c in lead}, **table_row(r)} for r in records)


def cmd_evaluate(args) -> None:
    """A sweep of one config: served from --store when there, else computed (and claimed) and stored.

    A store that cannot be written is one warning line on stderr; the computed record is still printed.
    """
    from types import SimpleNamespace

    from .sweep import sweep

    configs = configs_from_args(args)  # bad settings fail before any loading
    if len(configs) != 1:
        raise UserError("evaluate takes one value per flag; use sweep for comma lists")
    store = _store(args) if args.store is not None else None
    exp = _experiment(args, configs)
    staged = SimpleNamespace(key=exp.key, run=lambda config: exp.run(config, progress=_stage_progress()))
    (record,) = sweep(staged, configs, store=store, on_warning=_log)
    _emit(args, record)


def _sweep_executor(args, n_configs: int):
    """None (serial, in this process) or a started RayExecutor for --executor ray: a missing Ray, an unreachable
    --address or a cluster without the GPUs asked for fails here, before anything is loaded here."""
    ray_flags = [f for f, v in (("--address", args.address), ("--gpus-per-worker", args.gpus_per_worker),
                                ("--cpus-per-worker", args.cpus_per_worker), ("--workers", args.workers)) if v]
    if args.executor == "serial":
        if ray_flags:
            raise UserError(f"{ray_flags[0]} needs --executor ray")
        return None
    from .executor_ray import RayExecutor
    from .spec import ExperimentSpec

    executor = RayExecutor(ExperimentSpec.from_args(args), address=args.address,
                           gpus_per_worker=args.gpus_per_worker or 0, cpus_per_worker=args.cpus_per_worker or 1,
                           workers=args.workers)
    executor.start(n_configs)  # the workers build their experiments while this process builds its own
    return executor


def cmd_sweep(args) -> None:
    import sqlite3
    from contextlib import nullcontext

    from .sweep import sweep

    configs = configs_from_args(args)
    if args.shard is not None:  # this job's share of the grid (a Slurm array: --shard $ID/$COUNT)
        configs = shard_configs(configs, args.shard, _log)
    executor = _sweep_executor(args, len(configs))
    store = _store(args)
    exp = _experiment(args, configs)
    failed = []

    def on_failure(config, line):
        failed.append(config)
        _log(f"failed: {config.label}: {line}")

    def progress(done, total, eta, label):
        _log(progress_line(done, total, eta, label))

    try:  # the first write: a read-only store is refused here, before anything is computed
        run_id = store.new_run(f"cli sweep {exp.loaded.name}/{exp.dataset.info.name}",
                               meta={"argv": sys.argv[1:], "configs": len(configs)})
    except (sqlite3.Error, OSError) as err:
        raise UserError(f"--store {shown(str(store.path))} cannot be written ({_store_failure(err)}); a sweep "
                        "keeps every record there: give a writable store file") from None
    _log(f"run {run_id} (its report: python -m compression_core report --run {run_id} --out report.html)")
    with executor or nullcontext():
        records = sweep(exp, configs, store=store, run_id=run_id, progress=progress, executor=executor,
                        on_failure=on_failure)
    _emit(args, records, table_rows=records)
    if failed:
        raise UserError(f"{len(failed)} of {len(configs)} configs failed twice on the Ray workers (listed above); "
                        "they are not stored: fix the cause and run the same sweep again to compute only them")


def cmd_sensitivity(args) -> None:
    from .sensitivity import layer_sensitivity

    settings = configs_from_args(args)
    exp = _experiment(args, settings)
    rows = layer_sensitivity(exp, settings, progress=lambda d, t, *_: _log(f"[{d}/{t}]"))
    _emit(args, rows, table_rows=[f"{r['layer']:<12} {r['setting']:<44} " + (
        f"change {change_text(r['accuracy_drop_pts'])}" if r.get("accuracy_drop_pts") is not None
        else f"{r['metric']} {r['metric_value']:.4g}") for r in rows], lead=("layer", "setting", "setting_hash"))


def cmd_export(args) -> None:
    from .export import export

    from .interop import export_standard, require_onnx

    configs = configs_from_args(args)
    if len(configs) != 1:
        raise UserError("export takes one value per flag; use sweep for comma lists")
    if args.format == "onnx":
        require_onnx()  # a missing extra fails before any loading
    exp = _experiment(args, configs)
    cm = exp.compress(configs[0], progress=_stage_progress())
    record = exp.run(configs[0], compressed=cm)
    if args.format == "packed":
        record["file_bytes"] = export(cm, args.out, exp.loaded.source)
        record["file"] = str(args.out)
        lines = [f"wrote {args.out}: {record['file_bytes']} bytes (reported size {record['size_bytes']} bytes)"]
    else:
        # a streamed split is checked on its first STREAMED_EXPORT_CHECK samples (the count is in the output)
        x = exp.x.load(min(len(exp.x), STREAMED_EXPORT_CHECK)) if exp.streamed else exp.x
        fields, lines = export_standard(cm, args.out, args.format, x)
        record.update(fields)
    _emit(args, record, table_rows=[record_line(record), *lines], lead=("file", "file_bytes"))


def cmd_report(args) -> None:
    """The stakeholder report of a stored run as one HTML file (dashboard.report: no Streamlit, nothing recomputed)."""
    from dashboard.report import build_report, choose, load_run

    from .store import default_store_path

    path = Path(args.store if args.store is not None else default_store_path()).expanduser()
    if not path.is_file():
        raise UserError(f"--store {shown(str(path))} does not exist; give the store your sweep wrote (--store) or "
                        "run a sweep first")
    run, records = load_run(_store(args), args.run)
    chosen = choose(records, args.config_hash)
    text = build_report(records, chosen, run=run)
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"--out {shown(str(args.out))} cannot be written ({_store_failure(err)}); give a file in a "
                        "writable folder") from None
    result = {"out": str(args.out), "bytes": len(text.encode("utf-8")), "run_id": run["run_id"],
              "config_hash": chosen["config_hash"], "label": chosen["label"]}
    _emit(args, result, table_rows=[f"wrote {args.out}: {result['bytes']:,} bytes, run {run['run_id']}, "
                                    f"chosen {chosen['label']} ({chosen['config_hash']})"])


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
    parser.add_argument("--version", action="version", version=f"compression-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p, config=True):
        p.add_argument("--model", required=True, help="built-in name, pkg.module:factory or torchvision:NAME")
        p.add_argument("--dataset", default=None, help="mnist, fashion-mnist, digits, mnist1d, idx:PATH, "
                                                       "imagefolder:PATH, torchvision:CLASS:ROOT, text:PATH "
                                                       "(default: the model's own)")
        p.add_argument("--weights", default=None, help=".safetensors or .pt/.pth state dict for your own model; "
                       "DEFAULT (with --allow-download): torchvision's published weights")
        p.add_argument("--num-classes", dest="num_classes", type=positive_int("--num-classes"), default=None)
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
        p.add_argument("--allow-download", action="store_true", help="let torchvision download missing data")
        p.add_argument("--transform", default="auto", help="image folders: auto | imagenet | cifar | gray28 | "
                                                            "gray28-fashion | none (default auto: the built-in "
                                                            "model's own, imagenet for other models)")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if config:
            p.add_argument("--max-length", dest="max_length", type=positive_int("--max-length"), default=128,
                           help="text datasets: tokens per sample / window (default 128)")
            p.add_argument("--stride", type=positive_int("--stride"), default=None,
                           help="text datasets, task lm: tokens a window moves on (default: --max-length)")
            p.add_argument("--task", choices=TASKS, default=None,
                           help="classify (labels: accuracy), fidelity (outputs against the fp32 model: agreement, "
                                "KL, cosine, relative L2, recall@10) or lm (perplexity); default: lm for a causal "
                                "LM, fidelity for an embedding model or unlabelled data, else classify")
            p.add_argument("--split", default="test")
            p.add_argument("--limit", type=positive_int("--limit"), default=None,
                           help="class-stratified subset of N samples")
            p.add_argument("--store", default=None, help="SQLite store path (default: user cache dir)")
            p.add_argument("--csv", action="store_true", help="records as CSV on stdout (columns: the record "
                                                              "fields of docs/ENGINE_API.md but layers)")
            add_config_flags(p)

    for name, fn, help_ in [("evaluate", cmd_evaluate, "compress with one config and evaluate"),
                            ("sweep", cmd_sweep, "evaluate the product of comma lists, resumable"),
                            ("sensitivity", cmd_sensitivity, "compress one layer at a time"),
                            ("export", cmd_export, "write the packed compressed file")]:
        p = sub.add_parser(name, help=help_)
        common(p)
        if name == "export":
            p.add_argument("--out", required=True, type=out_path)
            p.add_argument("--format", choices=("packed", "onnx", "safetensors"), default="packed",
                           help="packed (.cex, smallest), onnx (integer weights + DequantizeLinear; needs the onnx "
                                "extra) or safetensors (dequantized float32 state dict)")
        if name == "sweep":
            _executor_flags(p)
        p.set_defaults(fn=fn)
    add_shard_commands(sub)  # sweep --shard I/N, store merge / upgrade

    p = sub.add_parser("report", help="write a stored run's stakeholder report as one self-contained HTML file")
    p.add_argument("--run", required=True, help="run id (the Runs page shows it), or latest: the newest run")
    p.add_argument("--out", required=True, type=out_path, help="the HTML file to write")
    p.add_argument("--store", default=None, help="SQLite store path (default: user cache dir)")
    p.add_argument("--config-hash", dest="config_hash", default=None,
                   help="the config to recommend (default: the smallest on the front within 1 pt of fp32 accuracy "
                        "- 1 %% of the fp32 value for other metrics - else the best)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("train", help="train a built-in architecture and write its checkpoint")
    common(p, config=False)
    p.add_argument("--epochs", type=positive_int("--epochs"), default=None)
    p.add_argument("--seed", dest="train_seed", type=seed, default=0)
    p.add_argument("--out", required=True, type=out_path)
    p.set_defaults(fn=cmd_train)

    for name, fn in [("models", cmd_models), ("datasets", cmd_datasets)]:
        p = sub.add_parser(name, help=f"list {name} and whether they are available")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)
    return parser


def _executor_flags(p) -> None:
    g = p.add_argument_group("executor", "where configs run (ray: pip install 'compression-explorer[ray]')")
    g.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="serial: one after another in this process; ray: Ray actors on this machine or a cluster")
    g.add_argument("--address", default=None, help="ray: auto | ray://HOST:PORT | HOST:PORT (default: RAY_ADDRESS, "
                                                   "else a new local Ray instance)")
    g.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float, default=None,
                   help="ray: GPUs each worker reserves (default 0: CPU workers)")
    g.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=positive_int("--cpus-per-worker"),
                   default=None, help="ray: CPUs (and torch threads) each worker reserves (default 1)")
    g.add_argument("--workers", type=positive_int("--workers"), default=None,
                   help="ray: number of workers (default: the cluster's GPUs / --gpus-per-worker, else CPUs / "
                        "--cpus-per-worker)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input: exit code 2 and one line."""
    import sqlite3

    from .datasets import DatasetUnavailable
    from .evaluate import DeviceUnavailable
    from .experiment import ExperimentError
    from .export import ExportError
    from .models import ModelLoadError

    return (UserError, ModelLoadError, DatasetUnavailable, DeviceUnavailable, ExportError, ExperimentError,
            OSError, ValueError, sqlite3.Error)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
    except user_errors() as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
