"""Background sweeps: a process-wide registry of jobs, each a thread running `compression_core.sweep.sweep`.

A job lives outside the Streamlit script thread, so a click (which stops the running script) does not abort it
and a browser reload does not lose it: the page finds it again by its id, which is also the store's run id and
sits in the URL (`?sweep_run=<id>` on the Sweep page). Every record is written to the store as it finishes, so
results survive even a server restart. Anyone with the id may watch a job; only the holder of its secret
`token` (kept in the starting session's state, never in the URL) may cancel it.

A run whose job is gone (the server stopped mid-sweep) keeps its grid in the store's run meta, so
`JobManager.interrupted` finds it ("interrupted at k / n") and `JobManager.resume` continues the same run id.
Each session (`owner`) may run `MAX_RUNNING_PER_OWNER` sweeps at once and start `MAX_CONFIGS_PER_HOUR` new
configs per hour.

Example:
    >>> job = job_manager().start(experiment, configs, store, label="int2-8 × 0-90 %", owner=session_id)
    >>> job.status()            # JobStatus(state='running', done=3, total=12, eta_s=4.1, ...)
    >>> job.cancel(job.token)   # stops after the config in flight; a wrong token changes nothing
"""
from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import streamlit as st

from compression_core.config import CompressionConfig
from compression_core.store import Store
from compression_core.sweep import ConfigExecutor, ExperimentLike, sweep

log = logging.getLogger(__name__)

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
MAX_RUNNING = 2  # concurrent sweeps per server process (each keeps a CPU core busy)
MAX_KEPT = 64  # finished jobs remembered for re-attaching; their records stay in the store regardless
MAX_RUNNING_PER_OWNER = 1  # concurrent sweeps per browser session
MAX_CONFIGS_PER_HOUR = 1200  # configs not yet in the store that one session may start per hour (3 full grids)
QUOTA_WINDOW_S = 3600.0


class JobLimitError(RuntimeError):
    """A server or session limit would be exceeded; the message says the limit and what to do."""


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job's progress.

    state: running | done | cancelled | failed. done / total: configs finished (stored ones included) / asked.
    eta_s: seconds left as measured on this run, counting down since the last result (None until the pace of the
        configs after the first is measured).
    current: label of the config being evaluated (None when idle). error: one line when state is failed.
    cancel_requested: cancel was pressed and the job is finishing the config in flight.
    warning: one line when the store could not be written (the results are then shown but not stored).
    """

    job_id: str
    state: str
    done: int
    total: int
    eta_s: float | None
    current: str | None
    error: str | None
    cancel_requested: bool
    started_at: float
    finished_at: float | None
    warning: str | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class BackgroundJob:
    """Work in a daemon thread (`thread`) that only the holder of `token` may cancel; subclasses give `status()`
    (a snapshot with `.running`) and set `_cancel`'s meaning. Hand the token only to the starting session."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(16)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def cancel(self, token: str | None) -> bool:
        """Ask the work to stop if `token` is this job's secret.

        Returns:
            Whether the token matched (and cancel was requested); a wrong or missing token changes nothing.
        """
        if not token or not hmac.compare_digest(str(token), self.token):
            return False
        self._cancel.set()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; returns whether it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.status().running


class Job(BackgroundJob):
    """One sweep running in a daemon thread; read it with `status()`, stop it with `cancel()` (the config in
    flight finishes and is stored).

    Args:
        job_id: the store run id its records join.
        total: number of configs (after de-duplication by hash).
        owner: the session that started it (for quotas).

    `token` is the job's secret: whoever holds it may cancel. Hand it only to the starting session.
    """

    def __init__(self, job_id: str, total: int, owner: str = "") -> None:
        super().__init__()
        self.id = job_id
        self.owner = owner
        self._done, self._total, self._eta, self._current = 0, total, None, None
        self._eta_at = time.monotonic()  # when _eta was measured
        self._state, self._error, self._warning = RUNNING, None, None
        self._started, self._finished = time.time(), None

    def _progress(self, done: int, total: int, eta: float | None, current: str | None) -> None:
        with self._lock:
            self._done, self._total, self._eta, self._current = done, total, eta, current
            self._eta_at = time.monotonic()

    def _warn(self, line: str) -> None:
        log.warning("sweep %s: %s", self.id, line)
        with self._lock:
            self._warning = line

    def _finish(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error, self._current, self._finished = state, error, None, time.time()
            if state != FAILED:
                self._eta = 0.0

    def status(self) -> JobStatus:
        with self._lock:
            # the estimate counts down between results (a page polls more often than configs finish)
            eta = None if self._eta is None else max(0.0, self._eta - (time.monotonic() - self._eta_at))
            return JobStatus(self.id, self._state, self._done, self._total, eta, self._current, self._error,
                             self._cancel.is_set(), self._started, self._finished, self._warning)

    def _failed(self, config: CompressionConfig, line: str) -> None:
        self._warn(f"{config.label} failed twice on the Ray workers and is not stored: {line}")

    def _run(self, experiment: ExperimentLike, configs: Sequence[CompressionConfig], store: Store,
             executor: ConfigExecutor | None = None) -> None:
        try:
            with executor or nullcontext():  # a Ray executor's workers end with the job
                sweep(experiment, configs, store=store, run_id=self.id, progress=self._progress, cancel=self._cancel,
                      on_warning=self._warn, executor=executor, on_failure=self._failed)
        except Exception as e:  # noqa: BLE001 - any failure must end up on the page, not in a dead thread
            log.error("sweep %s failed:\n%s", self.id, traceback.format_exc())
            lines = str(e).strip().splitlines()
            self._finish(FAILED, f"{type(e).__name__}: {lines[0] if lines else 'no message'}")
            return
        self._finish(CANCELLED if self._cancel.is_set() else DONE)


def _grid(run: dict | None) -> list[dict] | None:
    """The config dicts a dashboard run was launched with (its meta `configs`), or None for other runs."""
    configs = run["meta"].get("configs") if run else None
    return configs if isinstance(configs, list) else None  # a CLI run keeps only the count there


class JobManager:
    """The registry: job id -> Job, guarded by a lock; at most `max_running` jobs run at once, and per owner
    `max_per_owner` at once and `max_configs_per_hour` new configs per hour."""

    def __init__(self, max_running: int = MAX_RUNNING, max_kept: int = MAX_KEPT,
                 max_per_owner: int = MAX_RUNNING_PER_OWNER,
                 max_configs_per_hour: int = MAX_CONFIGS_PER_HOUR) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._started: dict[str, list[tuple[float, int]]] = {}  # owner -> (time, new configs) in the window
        self.max_running = max_running
        self.max_kept = max_kept
        self.max_per_owner = max_per_owner
        self.max_configs_per_hour = max_configs_per_hour

    def start(self, experiment: ExperimentLike, configs: Sequence[CompressionConfig], store: Store, *,
              label: str, meta: dict | None = None, owner: str = "", executor: ConfigExecutor | None = None) -> Job:
        """Register a store run for `configs` and start sweeping them in a background thread.

        Args:
            experiment: the `Experiment` to evaluate on (shared and only read).
            configs: the grid; stored configs are reused, not recomputed.
            store: where every record goes (and the run is registered).
            label, meta: the run's label and metadata in the store (see `Store.new_run`); the grid itself is
                added to the meta as `configs` (config dicts), so the run can be resumed.
            owner: the session starting it; its quotas apply.
            executor: where the configs run (a `RayExecutor`, closed when the job ends); None = this process.

        Returns:
            The started job; its id is the store run id, its `token` the secret that cancels it.

        Raises:
            JobLimitError: a server or session limit would be exceeded (the message says which).
        """
        unique = list({c.config_hash: c for c in configs}.values())
        new = sum(store.get(experiment.key(c)) is None for c in unique)
        with self._lock:
            self._check_limits(owner, new)
            run_id = store.new_run(label, {**(meta or {}), "configs": [c.to_dict() for c in unique]})
            return self._launch(Job(run_id, len(unique), owner), experiment, unique, store, new, executor)

    def resume(self, experiment: ExperimentLike, store: Store, run_id: str, *, owner: str = "") -> Job:
        """Continue an interrupted run under the same run id: only its configs missing from the store run.

        Raises:
            JobLimitError: a limit would be exceeded, or the run is running already.
            ValueError: the run is unknown or holds no grid to resume.
        """
        grid = _grid(store.run(run_id))
        if grid is None:
            raise ValueError(f"run {run_id!r} has no stored grid to resume; launch the sweep again")
        configs = [CompressionConfig.from_dict(d) for d in grid]
        new = sum(store.get(experiment.key(c)) is None for c in configs)
        with self._lock:
            current = self._jobs.get(run_id)
            if current is not None and current.status().running:
                raise JobLimitError("this sweep is already running; wait for it or cancel it")
            self._check_limits(owner, new)
            return self._launch(Job(run_id, len(configs), owner), experiment, configs, store, new)

    def interrupted(self, store: Store, run_id: str) -> tuple[int, int] | None:
        """(records stored, configs in the grid) of a run that stopped short with no job of this server running
        it (the server died mid-sweep, or its sweep was cancelled or failed); None when complete or running."""
        job = self.get(run_id)
        if job is not None and job.status().running:
            return None
        run = store.run(run_id)
        n = len(_grid(run) or [])
        return (run["n_records"], n) if run and run["n_records"] < n else None

    def cancel(self, job_id: str | None, token: str | None) -> bool:
        """Cancel job `job_id` if `token` is its secret. Returns whether a running job was asked to stop."""
        job = self.get(job_id)
        return job is not None and job.status().running and job.cancel(token)

    def get(self, job_id: str | None) -> Job | None:
        """The job with this id, or None (unknown id, forgotten, or started by an earlier server process)."""
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

    def _check_limits(self, owner: str, new_configs: int) -> None:
        """Raise JobLimitError when the server, or `owner`, may not start `new_configs` more (lock held)."""
        running = [j for j in self._jobs.values() if j.status().running]
        if len(running) >= self.max_running:
            raise JobLimitError(f"{len(running)} sweeps are already running on this server (the limit is "
                                f"{self.max_running}); wait for one to finish or cancel yours")
        mine = sum(j.owner == owner for j in running)
        if mine >= self.max_per_owner:
            raise JobLimitError(f"you already have {mine} sweep running (the limit is {self.max_per_owner} per "
                                f"session); wait for it to finish or cancel it")
        now = time.time()
        window = [(t, n) for t, n in self._started.get(owner, []) if t > now - QUOTA_WINDOW_S]
        self._started[owner] = window
        used = sum(n for _, n in window)
        if used + new_configs > self.max_configs_per_hour:
            raise JobLimitError(f"this sweep needs {new_configs} new configs and this session has started {used} "
                                f"in the last hour (the limit is {self.max_configs_per_hour} per hour); use a "
                                f"smaller grid or wait")

    def _launch(self, job: Job, experiment: ExperimentLike, configs: list[CompressionConfig], store: Store,
                new_configs: int, executor: ConfigExecutor | None = None) -> Job:
        """Register `job`, count its configs against its owner's quota and start its thread (lock held)."""
        self._started.setdefault(job.owner, []).append((time.time(), new_configs))
        job.thread = threading.Thread(target=job._run, args=(experiment, configs, store, executor),
                                      name=f"sweep-{job.id}", daemon=True)
        self._jobs[job.id] = job
        self._forget_old()
        job.thread.start()
        return job

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond `max_kept` (caller holds the lock)."""
        finished = sorted((j for j in self._jobs.values() if not j.status().running),
                          key=lambda j: j.status().started_at)
        for job in finished[:max(0, len(self._jobs) - self.max_kept)]:
            del self._jobs[job.id]


@st.cache_resource(show_spinner=False)
def job_manager() -> JobManager:
    """The one JobManager of this server process (shared by all sessions; jobs are found by id only)."""
    return JobManager()
