"""Background sweeps: a process-wide registry of jobs, each a thread running `compression_core.sweep.sweep`.

A job lives outside the Streamlit script thread, so a click (which stops the running script) does not abort it
and a browser reload does not lose it: the page finds it again by its id, which is also the store's run id and
sits in the URL (`?sweep_run=<id>` on the Sweep page). Every record is written to the store as it finishes, so
results survive even a server restart. A job is only reachable through its id, which each session keeps.

Example:
    >>> job = job_manager().start(experiment, configs, store, label="int2-8 × 0-90 %", meta={"model": "lenet5"})
    >>> job.status()            # JobStatus(state='running', done=3, total=12, eta_s=4.1, ...)
    >>> job.cancel()            # stops after the config in flight
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from compression_core.config import CompressionConfig
from compression_core.store import Store
from compression_core.sweep import ExperimentLike, sweep

log = logging.getLogger(__name__)

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
MAX_RUNNING = 2  # concurrent sweeps per server process (each keeps a CPU core busy)
MAX_KEPT = 64  # finished jobs remembered for re-attaching; their records stay in the store regardless


class JobLimitError(RuntimeError):
    """Too many sweeps are running on this server; the message says how many and what to do."""


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job's progress.

    state: running | done | cancelled | failed. done / total: configs finished (stored ones included) / asked.
    eta_s: seconds left as measured on this run (None before the first new config finishes).
    current: label of the config being evaluated (None when idle). error: one line when state is failed.
    cancel_requested: cancel was pressed and the job is finishing the config in flight.
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

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class Job:
    """One sweep running in a daemon thread; read it with `status()`, stop it with `cancel()`.

    Args:
        job_id: the store run id its records join.
        total: number of configs (after de-duplication by hash).
    """

    def __init__(self, job_id: str, total: int) -> None:
        self.id = job_id
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._done, self._total, self._eta, self._current = 0, total, None, None
        self._state, self._error = RUNNING, None
        self._started, self._finished = time.time(), None
        self.thread: threading.Thread | None = None

    def _progress(self, done: int, total: int, eta: float | None, current: str | None) -> None:
        with self._lock:
            self._done, self._total, self._eta, self._current = done, total, eta, current

    def _finish(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error, self._current, self._finished = state, error, None, time.time()
            if state != FAILED:
                self._eta = 0.0

    def status(self) -> JobStatus:
        with self._lock:
            return JobStatus(self.id, self._state, self._done, self._total, self._eta, self._current, self._error,
                             self._cancel.is_set(), self._started, self._finished)

    def cancel(self) -> None:
        """Ask the sweep to stop; the config in flight finishes and is stored, no further one starts."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; returns whether it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.status().state != RUNNING

    def _run(self, experiment: ExperimentLike, configs: Sequence[CompressionConfig], store: Store) -> None:
        try:
            sweep(experiment, configs, store=store, run_id=self.id, progress=self._progress, cancel=self._cancel)
        except Exception as e:  # noqa: BLE001 - any failure must end up on the page, not in a dead thread
            log.error("sweep %s failed:\n%s", self.id, traceback.format_exc())
            lines = str(e).strip().splitlines()
            self._finish(FAILED, f"{type(e).__name__}: {lines[0] if lines else 'no message'}")
            return
        self._finish(CANCELLED if self._cancel.is_set() else DONE)


class JobManager:
    """The registry: job id -> Job, guarded by a lock; at most `max_running` jobs run at once."""

    def __init__(self, max_running: int = MAX_RUNNING, max_kept: int = MAX_KEPT) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.max_running = max_running
        self.max_kept = max_kept

    def start(self, experiment: ExperimentLike, configs: Sequence[CompressionConfig], store: Store, *,
              label: str, meta: dict | None = None) -> Job:
        """Register a store run for `configs` and start sweeping them in a background thread.

        Args:
            experiment: the `Experiment` to evaluate on (shared and only read).
            configs: the grid; stored configs are reused, not recomputed.
            store: where every record goes (and the run is registered).
            label, meta: the run's label and metadata in the store (see `Store.new_run`).

        Returns:
            The started job; its id is the store run id.

        Raises:
            JobLimitError: `max_running` sweeps are already running.
        """
        with self._lock:
            running = sum(j.status().running for j in self._jobs.values())
            if running >= self.max_running:
                raise JobLimitError(f"{running} sweeps are already running on this server (the limit is "
                                    f"{self.max_running}); wait for one to finish or cancel yours")
            unique = len({c.config_hash for c in configs})
            job = Job(store.new_run(label, meta), unique)
            job.thread = threading.Thread(target=job._run, args=(experiment, list(configs), store),
                                          name=f"sweep-{job.id}", daemon=True)
            self._jobs[job.id] = job
            self._forget_old()
        job.thread.start()
        return job

    def get(self, job_id: str | None) -> Job | None:
        """The job with this id, or None (unknown id, forgotten, or started by an earlier server process)."""
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

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
