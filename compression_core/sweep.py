"""Sweeps: build a grid of configs, then evaluate them one by one — skipping what the store already has.

`sweep` runs a list of configs (e.g. `grid.expand_grid`'s, canonical and de-duplicated) through an `Executor` (in-process and serial by default; `executor_ray.RayExecutor` spreads them over Ray
workers), writes every record to the store the moment it
finishes (a crash loses at most the config in flight), streams records to `on_record`, reports progress with
an ETA measured on this run, and stops between configs when `cancel` is set. Running the same sweep again
resumes it: stored configs come back marked `cached: True` and are not recomputed.

Several processes may sweep overlapping grids into one store: each config is *claimed* in the store before it
runs (`Store.claim`), so it is computed once; a process that finds a config claimed by another live process
waits for its record instead. A store that cannot be written costs one warning, never a computed record.

Example:
    >>> import pathlib, tempfile
    >>> from compression_core import CompressionConfig, Experiment, Store, expand_grid, load_dataset, load_model
    >>> configs = expand_grid(CompressionConfig(), bits=[2, 4, 8, 32], sparsity=[0, 0.5, 0.9])
    >>> len(configs)
    12
    >>> exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), device="cpu")
    >>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "runs.sqlite")
    >>> len(sweep(exp, configs, store=store)), store.count()
    (12, 12)
    >>> sum(r.get("cached", False) for r in sweep(exp, configs, store=store))  # run again: all from the store
    12
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .config import CompressionConfig
from .errors import error_line
from .store import CLAIM_TTL_S, Store, StoreError, new_owner

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

CLAIM_BATCH = 8  # configs claimed (and handed to the executor / run_many) at a time; other processes take the rest
POLL_S = 0.5  # how often a sweep looks for the records of configs another process is computing
BURST_FRACTION = 0.1  # results within this fraction of the first result's time after it arrived with it

ProgressFn = Callable[[int, int, "float | None", "str | None"], None]  # (done, total, eta_seconds, current_label)


class ExperimentLike(Protocol):
    """What `sweep` needs from `experiment.Experiment`: a store key and a record per config."""

    def key(self, config: CompressionConfig) -> dict: ...

    def run(self, config: CompressionConfig) -> dict: ...


class Executor(Protocol):
    """Runs `fn` over `items`, yielding results as they finish (any order), in this process (`fn` is a closure
    over the experiment); other processes take configs instead: `ConfigExecutor`."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


@dataclass(frozen=True)
class ConfigFailure:
    """A config a `ConfigExecutor` could not evaluate (it failed twice): its one-line error. It is never stored."""

    config: CompressionConfig
    error: str


class ConfigExecutor(Protocol):
    """Evaluates configs in other processes, which build their own experiment: it gets configs, not closures, and
    yields each record (or a `ConfigFailure`) as it finishes, in any order; `sweep` prefers it when it has it.
    `claim_batch`: how many configs `sweep` claims and hands over at once (the executor's queue)."""

    claim_batch: int

    def run_configs(self, configs: Sequence[CompressionConfig],
                    cancel: threading.Event | None = None) -> Iterator[dict | ConfigFailure]: ...


class SerialExecutor:
    """In-process, one item at a time, lazily: the next item starts only when the caller asks for it."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return (fn(item) for item in items)


# ---- grids ---------------------------------------------------------------------------------------
# ---- running -------------------------------------------------------------------------------------
class _Book:
    """The sweep's side of the store: reads, writes and claims; a failed write is one warning, then no more writes.

    Without a store every config counts as claimed, so the sweep simply computes everything.
    """

    def __init__(self, store: Store | None, run_id: str | None, warn: Callable[[str], None]) -> None:
        self.store, self.run_id, self._warn = store, run_id, warn
        self.writable = store is not None
        self.owner = new_owner()

    def _write(self, operation: Callable[[], Any], fallback: Any = None) -> Any:
        if not self.writable:
            return fallback
        try:
            return operation()
        except (sqlite3.Error, OSError, StoreError) as e:
            self.writable = False
            self._warn(f"warning: the result store {self.store.path} cannot be written "
                       f"({error_line(e, first_line=True)}); results are still returned but not stored")
            return fallback

    def get(self, experiment: ExperimentLike, config: CompressionConfig) -> dict | None:
        return self.store.get(experiment.key(config)) if self.store is not None else None

    def put(self, record: dict) -> None:
        self._write(lambda: self.store.put(record, run_id=self.run_id))

    def join_run(self, record: dict) -> None:
        if self.run_id is not None:
            self._write(lambda: self.store.add_to_run(self.run_id, record))

    def claim(self, experiment: ExperimentLike, config: CompressionConfig) -> bool:
        """Whether this sweep should compute `config` now (claimed, or no usable store to claim in)."""
        return self._write(lambda: self.store.claim(experiment.key(config), self.owner), fallback=True)

    def held_by_other(self, experiment: ExperimentLike, config: CompressionConfig) -> bool:
        owner = self.store.claim_owner(experiment.key(config)) if self.writable else None
        return owner is not None and owner != self.owner

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew this sweep's claims every third of their lifetime while the body runs; release them after."""
        if not self.writable:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(CLAIM_TTL_S / 3):
                self._write(lambda: self.store.renew_claims(self.owner))

        thread = threading.Thread(target=beat, name=f"claims-{self.owner}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._write(lambda: self.store.release_claims(self.owner))


def sweep(
    experiment: ExperimentLike,
    configs: Sequence[CompressionConfig],
    *,
    store: Store | None = None,
    run_id: str | None = None,
    executor: Executor | ConfigExecutor | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_failure: Callable[[CompressionConfig, str], None] | None = None,
) -> list[dict]:
    """Evaluate `configs` on `experiment`, reusing and filling `store`.

    Args:
        experiment: an `Experiment` (anything with `key(config)` and `run(config)`).
        configs: what to evaluate; duplicates (same config hash) are run once.
        store: records already there are returned with `cached: True` and not recomputed; new ones are put
            as soon as each finishes. Configs are claimed in it `CLAIM_BATCH` at a time; a config another live
            process has claimed is not computed here: its record is awaited and returned with `cached: True`.
        run_id: a run from `store.new_run(label)`; every record of this sweep (cached or new) joins it.
        executor: how configs are run; default `SerialExecutor()`. A `ConfigExecutor` (e.g.
            `executor_ray.RayExecutor`) gets `claim_batch` configs at a time and returns records out of order;
            only this process writes the store.
        on_record: called with each record (cached ones first, then new ones as they finish).
        progress: called as progress(done, total, eta_seconds, current_label): once after the cached
            records (eta None), then after each new record; eta is the measured wall time per config since the
            first one finished (its warm-up left out) times the configs left, None until that is measured, 0 at
            the end; current_label is the label of the next config to run (None at the end).
        cancel: when set, no further config starts; what finished is returned.
        on_warning: called once with one line if the store cannot be written (default: logged as a warning);
            the sweep then goes on without the store and still returns every record.
        on_failure: called as on_failure(config, error_line) for each config a `ConfigExecutor` gave up on
            (default: logged as a warning); such a config is neither stored nor returned, and counts as done
            for progress. A later sweep of the same grid tries it again.

    Returns:
        The finished records in the order of `configs`, each with `cached` True/False.

    Raises:
        Whatever `experiment.run` raises; every record finished before it is already in the store.
    """
    if run_id is not None and store is None:
        raise ValueError("run_id needs a store; pass store=Store(...)")
    unique = list({c.config_hash: c for c in configs}.values())  # equal hash = equal config; first position kept
    order = {c.config_hash: i for i, c in enumerate(unique)}
    book = _Book(store, run_id, on_warning or log.warning)
    done: dict[str, dict] = {}
    pending: list[CompressionConfig] = []

    def take_stored(record: dict) -> None:
        record["cached"] = True
        book.join_run(record)
        done[record["config_hash"]] = record
        if on_record:
            on_record(record)

    for config in unique:
        stored = book.get(experiment, config)
        if stored is None:
            pending.append(config)
        else:
            take_stored(stored)
    if progress:
        progress(len(done), len(unique), None, pending[0].label if pending else None)
    with book.heartbeat():
        _run_pending(experiment, pending, book, done, take_stored, executor=executor, on_record=on_record,
                     progress=progress, total=len(unique), cancel=cancel,
                     on_failure=on_failure or (lambda c, line: log.warning("config %s failed: %s", c.label, line)))
    return sorted(done.values(), key=lambda r: order.get(r["config_hash"], len(unique)))


def _run_pending(experiment: ExperimentLike, pending: list[CompressionConfig], book: _Book, done: dict[str, dict],
                 take_stored: Callable[[dict], None], *, executor: Executor | ConfigExecutor | None,
                 on_record: Callable[[dict], None] | None, progress: ProgressFn | None, total: int,
                 cancel: threading.Event | None, on_failure: Callable[[CompressionConfig, str], None]) -> None:
    """Claim, compute and store the pending configs in batches; collect the ones other processes compute."""
    pace = _Pace(already=len(done))
    batch = getattr(executor, "claim_batch", CLAIM_BATCH) if book.writable else max(1, len(pending))
    others: set[str] = set()  # config hashes claimed by another live process
    failed: set[str] = set()  # config hashes a ConfigExecutor gave up on: not stored, not claimed again

    def report() -> None:
        if progress:
            finished = len(done) + len(failed)  # out of order: the pace is throughput (finished configs per second)
            nxt = next((c for c in pending if c.config_hash not in done and c.config_hash not in failed), None)
            eta = pace.seconds_left(finished, total)
            progress(finished, total, eta, nxt.label if nxt is not None and not _cancelled(cancel) else None)

    def run_one(config: CompressionConfig) -> dict | None:
        # executors that start items ahead of the caller skip them quickly once cancel is set
        return None if _cancelled(cancel) else experiment.run(config)

    while not _cancelled(cancel):
        for config in [c for c in pending if c.config_hash in others]:
            stored = book.get(experiment, config)
            if stored is not None:
                others.discard(config.config_hash)
                take_stored(stored)
                report()
        todo = [c for c in pending if c.config_hash not in failed] if failed else pending
        mine = _claim_batch(experiment, todo, book, done, others, batch, take_stored, report)
        if not mine:
            if not others:
                return
            time.sleep(POLL_S)
            continue
        if hasattr(executor, "run_configs"):
            results = _checked(experiment, mine, executor.run_configs(mine, cancel=cancel))
        elif executor is None and hasattr(experiment, "run_many"):
            results = experiment.run_many(mine, cancel=cancel)  # groups configs per forward on a GPU
        else:
            results = (executor or SerialExecutor()).map(run_one, mine)
        for record in results:
            if record is None:
                continue
            if isinstance(record, ConfigFailure):
                failed.add(record.config.config_hash)
                on_failure(record.config, record.error)
                report()
                continue
            book.put(record)
            record["cached"] = False
            done[record["config_hash"]] = record
            if on_record:
                on_record(record)
            report()
            if _cancelled(cancel):
                return


class _Pace:
    """Seconds left, from the pace of the configs finished since the first one finished (here or by another
    process computing the same grid), so the first config's warm-up (the fp32 baseline, first calls) is left out.

    Results that arrive together with the first (one stacked GPU group) belong to it; until a later one arrives
    the pace is unknown (None). Wall time on this machine, so another sweep running beside it is counted in.
    """

    def __init__(self, already: int) -> None:
        self.start, self.already = time.perf_counter(), already  # configs stored before this sweep ran
        self.first: tuple[float, int] | None = None  # (when the first result arrived, results then)

    def seconds_left(self, done: int, total: int) -> float | None:
        now, finished = time.perf_counter(), done - self.already
        if done >= total:
            return 0.0
        if finished <= 0:
            return None
        if self.first is None or now - self.first[0] <= BURST_FRACTION * (self.first[0] - self.start):
            self.first = (self.first or (now, 0))[0], finished
            return None
        since, counted = self.first
        return (now - since) / (finished - counted) * (total - done) if finished > counted else None


def _claim_batch(experiment: ExperimentLike, pending: list[CompressionConfig], book: _Book, done: dict[str, dict],
                 others: set[str], batch: int, take_stored: Callable[[dict], None],
                 report: Callable[[], None]) -> list[CompressionConfig]:
    """Claim up to `batch` pending configs for this sweep; take those stored meanwhile; note in `others` the
    config hashes another live process holds."""
    mine: list[CompressionConfig] = []
    for config in pending:
        if len(mine) == batch:
            break
        h = config.config_hash
        if h in done or (h in others and book.held_by_other(experiment, config)):
            continue
        if book.claim(experiment, config):
            others.discard(h)
            mine.append(config)
            continue
        stored = book.get(experiment, config)  # claim refused: stored meanwhile, or computed elsewhere now
        if stored is None:
            others.add(h)
        else:
            others.discard(h)
            take_stored(stored)
            report()
    return mine


def _checked(experiment: ExperimentLike, configs: list[CompressionConfig],
             results: Iterator[dict | ConfigFailure]) -> Iterator[dict | ConfigFailure]:
    """`results` of another process, each checked to be keyed as this experiment keys it (same weights, data,
    subset, task): a worker that built something else must not fill the store under another key.

    Raises:
        ValueError: a record's key differs from this process's; one line naming the first differing field.
    """
    by_hash = {c.config_hash: c for c in configs}
    for result in results:
        if isinstance(result, dict):
            expected = experiment.key(by_hash[result["config_hash"]])
            wrong = next((k for k, v in expected.items() if result.get(k) != v), None)
            if wrong is not None:
                raise ValueError(f"a worker evaluated {wrong} {result.get(wrong)!r} where this process has "
                                 f"{expected[wrong]!r}: every worker must read the same model weights and data")
        yield result


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()
