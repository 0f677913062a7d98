"""Evaluate the configs one slider step away from the one on screen while the user looks at it.

A slider step on Explore lands on a config that is, most of the time, a neighbour of the current one (one bit-width
up or down, sparsity ±0.01). `neighbours` lists those, the step that continues the user's last move first;
`Prefetcher` evaluates them in one background thread through the same cached `services.evaluate` (and
`layer_services.layer_histogram` of the layer shown first) the page calls, so the next step is a cache hit. The results
are the engine's own records for the full live subset: nothing is shown from here, the page shows what
`services.evaluate` returns when the user gets there.

Bounded and cancellable: each browser session (an `owner` id) has at most `per_owner` jobs waiting; a new
request from a session replaces its waiting jobs, `cancel(owner)` drops them (the page calls it as a rerun starts, so
the background never starts new work while the user waits), and the queue holds at most `max_pending` jobs over all
sessions (the oldest go). A job already running finishes; Streamlit's cache computes a key once, so the page,
asking for that very config, waits for it instead of computing it twice. One worker thread per server process
(`services.prefetcher`), shared by every session like the caches it fills; at interpreter exit `close` lets a
running job finish first (a thread killed inside torch aborts the process).
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from compression_core.config import ALLOWED_BITS, CompressionConfig, ConfigError
from compression_core.methods import prune_methods, quantizers

SPARSITY_STEP = 0.01  # the Explore slider's step (ArrowLeft / ArrowRight)
MAX_EVAL_S = 1.0  # neighbours are evaluated ahead only where one evaluation pass takes at most this
# Background work starts this long after a request: the browser first draws the step just answered (on 2 cores a
# forward pass running meanwhile made the drawing slower than the prefetch saved).
DELAY_S = 0.4
MAX_SPARSITY = 0.99
log = logging.getLogger("dashboard.prefetch")


@dataclass(frozen=True)
class Job:
    """One config to evaluate for a session: `run(selection, config_json)` of the prefetcher."""

    owner: str
    selection: object
    config_json: str
    not_before: float = 0.0  # time.monotonic() before which it does not start


def _bit_steps(config: CompressionConfig) -> list[tuple[str, int, dict]]:
    """(slider, direction, QuantSpec change) one weight bit-width down (-1) and up (+1), where bits apply."""
    if not quantizers()[config.quant.quantizer].uses_bits or config.quant.bits not in ALLOWED_BITS:
        return []
    i = ALLOWED_BITS.index(config.quant.bits)
    return [("bits", d, {"bits": ALLOWED_BITS[i + d]}) for d in (-1, 1) if 0 <= i + d < len(ALLOWED_BITS)]


def _sparsity_steps(config: CompressionConfig) -> list[tuple[str, int, dict]]:
    """(slider, direction, PruneSpec change) one sparsity step down (-1) and up (+1), where sparsity applies."""
    if not prune_methods()[config.prune.method].uses_sparsity:
        return []
    values = [(d, round(config.prune.sparsity + d * SPARSITY_STEP, 2)) for d in (-1, 1)]  # the slider's values
    return [("sparsity", d, {"sparsity": s}) for d, s in values if 0.0 <= s <= MAX_SPARSITY]


def _stepped(config: CompressionConfig, slider: str, change: dict) -> CompressionConfig:
    """`config` with one slider moved, in canonical form. Raises ConfigError for a combination the engine rejects."""
    if slider == "bits":
        config = dataclasses.replace(config, quant=dataclasses.replace(config.quant, **change))
    else:
        config = dataclasses.replace(config, prune=dataclasses.replace(config.prune, **change))
    return CompressionConfig.from_json(config.to_json())


def last_move(previous: CompressionConfig | None, current: CompressionConfig) -> tuple[str, int] | None:
    """Which slider moved from `previous` to `current` and which way: ("bits" | "sparsity", -1 | +1), else None."""
    if previous is None:
        return None
    if previous.quant.bits != current.quant.bits:
        return "bits", 1 if current.quant.bits > previous.quant.bits else -1
    if previous.prune.sparsity != current.prune.sparsity:
        return "sparsity", 1 if current.prune.sparsity > previous.prune.sparsity else -1
    return None


def neighbours(config: CompressionConfig, move: tuple[str, int] | None = None) -> list[CompressionConfig]:
    """The valid configs one slider step away from `config`: the step continuing `move` first, then sparsity
    (the finer slider) down / up, then bits down / up. Combinations the engine rejects (e.g. 1-bit symmetric)
    are left out.

    Args:
        config: the config on screen.
        move: the user's last move (`last_move`), or None.

    Returns:
        Distinct configs, never `config` itself, most likely next first.
    """
    steps = _sparsity_steps(config) + _bit_steps(config)
    steps.sort(key=lambda s: (s[0], s[1]) != move)  # stable: the continuation first, the rest in order
    out: dict[str, CompressionConfig] = {}
    for slider, _, change in steps:
        try:
            candidate = _stepped(config, slider, change)
        except ConfigError:
            continue
        if candidate.config_hash != config.config_hash:
            out.setdefault(candidate.config_hash, candidate)
    return list(out.values())


def plan(previous_json: str | None, config: CompressionConfig, eval_seconds: float) -> list[str]:
    """The configs (JSON) to evaluate ahead of the user: `neighbours` of the config on screen in the direction of
    the last move from `previous_json`; none where one evaluation pass took longer than MAX_EVAL_S (a large model:
    the background work would slow the foreground more than it saves)."""
    if eval_seconds > MAX_EVAL_S:
        return []
    move = last_move(CompressionConfig.from_json(previous_json) if previous_json else None, config)
    return [c.to_json() for c in neighbours(config, move)]


class Prefetcher:
    """One background thread running `run(selection, config_json)` for queued jobs, newest requests kept.

    Args:
        run: what a job does; the dashboard passes `services._evaluate_ahead` (the cached `evaluate`, then the
            histogram shown first). Its exceptions are logged (a neighbour the engine rejects is not the user's
            problem) and the worker carries on.
        per_owner: at most this many waiting jobs per session.
        max_pending: at most this many waiting jobs in all; the oldest are dropped first.
        delay_s: a job starts no sooner than this many seconds after its request.
    """

    def __init__(self, run: Callable[[object, str], object], *, per_owner: int = 3, max_pending: int = 16,
                 delay_s: float = DELAY_S):
        self._run = run
        self._delay_s = delay_s
        self._per_owner = per_owner
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.done = 0  # jobs finished (successfully or not), for tests and the log

    def submit(self, owner: str, selection, configs_json: list[str]) -> int:
        """Replace `owner`'s waiting jobs with `configs_json` (first = first run); return how many were queued."""
        start = time.monotonic() + self._delay_s
        jobs = [Job(owner, selection, c, start) for c in dict.fromkeys(configs_json)][:self._per_owner]
        with self._cond:
            self._pending = [j for j in self._pending if j.owner != owner] + jobs
            del self._pending[:max(0, len(self._pending) - self._max_pending)]
            if self._closed:
                self._pending.clear()
                return 0
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="explore-prefetch", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # never leave a thread inside torch while the interpreter shuts down
            self._cond.notify_all()
        return len(jobs)

    def cancel(self, owner: str) -> int:
        """Drop `owner`'s waiting jobs (a running one finishes); return how many were dropped."""
        with self._cond:
            before = len(self._pending)
            self._pending = [j for j in self._pending if j.owner != owner]
            return before - len(self._pending)

    def pending(self, owner: str | None = None) -> list[str]:
        """The waiting configs (JSON) of `owner`, or of everyone, in run order."""
        with self._cond:
            return [j.config_json for j in self._pending if owner is None or j.owner == owner]

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing waits or runs (True), or `timeout` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._running is None, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Drop the waiting jobs, let a running one finish (up to `timeout` s) and stop the worker for good."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _next(self) -> Job | None:
        """The first waiting job once its start time has come (None once closed); call with the lock held."""
        while not self._closed:
            if not self._pending:
                self._cond.wait()
                continue
            wait = self._pending[0].not_before - time.monotonic()
            if wait <= 0:
                return self._pending.pop(0)
            self._cond.wait(wait)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                self._running = self._next()
                if self._running is None:
                    return
            try:
                self._run(self._running.selection, self._running.config_json)
            except Exception:  # noqa: BLE001 - a neighbour that fails is skipped; the page shows its own errors
                log.debug("prefetch of %s failed", self._running.config_json, exc_info=True)
            with self._cond:
                self._running = None
                self.done += 1
                self._cond.notify_all()
