"""Shards of a sweep grid: a deterministic 1/N of the configs, so N independent jobs (a Slurm array) cover it once.

Which shard a config falls in depends only on the *set* of distinct configs in the grid and on N: the configs are
de-duplicated by config hash, ranked by config hash, and dealt out round-robin (rank r, counted from 0, goes to
shard r mod N + 1). So every machine and every run agrees without talking to the others, the order of flags or of
the values in a comma list changes nothing, shards differ in size by at most one config, and shards 1..N are
disjoint and together the whole grid. Adding a value to the grid deals the configs anew: give every job of an array
the same grid. Within a shard the configs keep the order of the grid.

Example:
    >>> from compression_core.config import CompressionConfig
    >>> from compression_core.grid import expand_grid
    >>> grid = expand_grid(CompressionConfig(), bits=[2, 4, 8], sparsity=[0, 0.5])
    >>> index, count = parse_shard("2/4")
    >>> [len(shard(grid, i, count)) for i in range(1, count + 1)]
    [2, 2, 1, 1]
    >>> sorted(c.config_hash for i in (1, 2, 3, 4) for c in shard(grid, i, 4)) == sorted(c.config_hash for c in grid)
    True
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .config import CompressionConfig
from .errors import shown

SHARD_SPEC = re.compile(r"([0-9]+)/([0-9]+)")  # ASCII digits only: re's \d would also take '１' or '٣'


class ShardError(ValueError):
    """A shard spec or index outside 1 ≤ I ≤ N; the one-line message says what is allowed."""


def _refusal(got: str, why: str) -> ShardError:
    return ShardError(f"--shard {got}: {why}; give I/N with whole numbers 1 ≤ I ≤ N, e.g. 2/8 (the second of 8 "
                      "shards) or $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with sbatch --array=1-N")


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N), the 1-based shard I of N.

    Args:
        text: the spec as the user wrote it, e.g. "3/8".

    Returns:
        (index, count) with 1 ≤ index ≤ count.

    Raises:
        ShardError: not two whole numbers joined by '/', or not 1 ≤ I ≤ N (3/2, 0/0, 1/0, -1/2, a/b).
    """
    match = SHARD_SPEC.fullmatch(str(text).strip())
    if match is None:
        raise _refusal(shown(text), "not two whole numbers I/N")
    index, count = int(match[1]), int(match[2])
    _check(index, count, shown(text))
    return index, count


def _check(index: int, count: int, got: str) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (index, count)):
        raise _refusal(got, "I and N must be whole numbers")
    if count < 1:
        raise _refusal(got, "N must be at least 1")
    if not 1 <= index <= count:
        raise _refusal(got, f"I must be between 1 and N = {count}")


def shard(configs: Sequence[CompressionConfig], index: int, count: int) -> list[CompressionConfig]:
    """The configs of shard `index` of `count` (1-based): every `count`-th distinct config in config-hash order.

    Args:
        configs: the whole grid, e.g. from `expand_grid`; duplicates (same config hash) count once.
        index: which shard, 1 ≤ index ≤ count (Slurm's $SLURM_ARRAY_TASK_ID with --array=1-N).
        count: how many shards the grid is split into (N ≥ 1).

    Returns:
        The shard's configs in the order of `configs` (first occurrence kept); empty when the grid has fewer
        distinct configs than `index`.

    Raises:
        ShardError: index or count not whole numbers with 1 ≤ index ≤ count.
    """
    _check(index, count, shown(f"{index!r}/{count!r}"))
    unique = list({c.config_hash: c for c in configs}.values())  # equal hash = equal config; first position kept
    ranked = sorted(c.config_hash for c in unique)
    mine = set(ranked[index - 1::count])
    return [c for c in unique if c.config_hash in mine]
