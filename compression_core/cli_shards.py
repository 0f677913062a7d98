"""The CLI for sweeping without Ray: `sweep --shard I/N` (one job's share of the grid) and the `store` commands.

A Slurm job array runs `sweep --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --store shard-$ID.db` in each
job, then `store merge shard-*.db --into all.db` unions the stores. `store upgrade PATH` migrates an older store in
place so it can be merged.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict

from .config import CompressionConfig
from .shard import parse_shard, shard


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `--shard` to the `sweep` parser of `sub` and the `store merge` / `store upgrade` subcommands."""
    sub.choices["sweep"].add_argument(
        "--shard", default=None, metavar="I/N",
        help="evaluate only shard I of N (1 ≤ I ≤ N): every N-th config of the grid in config-hash order, the same "
             "on every machine; e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    p = sub.add_parser("store", help="work on result store files: merge several into one, upgrade one")
    group = p.add_subparsers(dest="store_command", metavar="{merge,upgrade}", required=True,
                              parser_class=type(p))
    merge = group.add_parser("merge", help="union result stores (e.g. one per Slurm job) into one; one row per "
                                           "config, model fingerprint, data and task; the newer record wins")
    merge.add_argument("sources", nargs="+", metavar="STORE", help="store files to read (never written)")
    merge.add_argument("--into", required=True, help="the store to merge into: a new file or an existing store")
    merge.add_argument("--json", action="store_true", help="the summary as JSON on stdout")
    merge.set_defaults(fn=cmd_store_merge)
    upgrade = group.add_parser("upgrade", help="migrate older store files in place to this build's schema")
    upgrade.add_argument("paths", nargs="+", metavar="STORE")
    upgrade.set_defaults(fn=cmd_store_upgrade)


def shard_configs(configs: list[CompressionConfig], spec: str, log: Callable[[str], None]) -> list[CompressionConfig]:
    """This job's share of `configs` for `--shard I/N`; one line on `log` says how many of the grid it runs.

    Raises:
        ShardError: a spec outside 1 ≤ I ≤ N (one line: exit code 2).
    """
    index, count = parse_shard(spec)
    mine = shard(configs, index, count)
    total = len({c.config_hash for c in configs})
    log(f"shard {index}/{count}: {len(mine)} of the grid's {total} configs")
    return mine


def cmd_store_merge(args) -> None:
    from .store_merge import merge_stores

    summary = merge_stores(args.sources, args.into)
    print(json.dumps(asdict(summary)) if args.json else summary.line())


def cmd_store_upgrade(args) -> None:
    from .store_merge import upgrade_store

    for path in args.paths:
        before, after = upgrade_store(path)
        print(f"{path}: store schema {before} -> {after}" if before != after else f"{path}: schema {after}, current")
