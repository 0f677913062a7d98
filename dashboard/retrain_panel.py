"""Explore's Retrain section: retrain the current config over the train split in the background, with progress,
an ETA and Cancel; the retrained record then becomes its own point on Explore's chart ("… · retrained N ep").

Retraining runs in a daemon thread (`RetrainJob`), never in the Streamlit script thread; the page polls it with a
fragment (`run_every`) while it runs. Jobs live in one process-wide registry (`retrain_jobs()`), keyed by
(selection, config hash): pressing Retrain for a config that is running or done joins that job instead of
training twice (the engine also caches retrained models in-process). As with sweeps (`dashboard/jobs.py`), only the
session that started a job holds its secret token and may cancel it; the token and job id sit in that session's
state (`explore_retrain_job`), never in the URL. The settings are bound to the URL (`explore_ft_epochs=1&...`).

Example:
    >>> job = retrain_jobs().start(experiment, config, key=(selection.key, config.config_hash), owner=session_id)
    >>> job.status()            # RetrainStatus(state='running', fraction=0.4, stage='retraining 5/12 steps …', …)
    >>> job.cancel(job.token)   # the engine stops before its next step (finetune.RetrainCancelled)
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
import traceback
from dataclasses import dataclass

import streamlit as st

from compression_core import finetune
from compression_core.config import OPTIMIZERS, SCHEDULES, CompressionConfig
from dashboard import components, job_panel, services
from dashboard.charts.common import option_label
from dashboard.jobs import CANCELLED, DONE, FAILED, RUNNING, BackgroundJob, JobLimitError
from dashboard.selection import Selection

log = logging.getLogger(__name__)

# session state only: {"job": id, "token": secret or None, "plotted": bool} of this session's latest retraining
STATE_KEY = "explore_retrain_job"
MAX_EPOCHS = 50
MAX_GRADUAL = 20
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TEMPERATURES = (0.0, 1.0, 2.0, 3.0, 4.0, 8.0)  # distillation temperature; 0 = off
POLL_S = 1.0
MAX_RUNNING = 2  # retrainings at once per server process (each keeps the CPU cores busy)
MAX_RUNNING_PER_OWNER = 1
MAX_KEPT = 32  # finished jobs remembered (their records are small dicts)


@dataclass(frozen=True)
class RetrainStatus:
    """A snapshot of a retraining: state running | done | cancelled | failed; fraction of the steps done; the
    engine's stage text (with the ETA); the record when done; one error line when failed; whether cancel was
    asked; wall seconds from start to the end (None while running)."""

    state: str
    fraction: float
    stage: str
    record: dict | None
    error: str | None
    cancel_requested: bool
    seconds: float | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING


class RetrainJob(BackgroundJob):
    """One config retrained and evaluated in a daemon thread; read it with `status()`, stop it with `cancel()`.

    Args:
        key: (selection key, config hash), the registry's de-duplication key.
        label: the config's label, shown while it runs.
        owner: the session that started it (for the per-session limit).
    """

    def __init__(self, key: tuple[str, str], label: str, owner: str) -> None:
        super().__init__()
        self.id = secrets.token_hex(8)
        self.key, self.label, self.owner = key, label, owner
        self._state, self._fraction, self._stage = RUNNING, 0.0, "compressing…"
        self._record: dict | None = None
        self._error: str | None = None
        self._started, self._seconds = time.perf_counter(), None

    def _progress(self, stage: str, fraction: float) -> None:
        with self._lock:
            self._stage, self._fraction = stage, fraction

    def _finish(self, state: str, record: dict | None = None, error: str | None = None) -> None:
        with self._lock:
            self._state, self._record, self._error = state, record, error
            self._seconds = time.perf_counter() - self._started

    def status(self) -> RetrainStatus:
        with self._lock:
            return RetrainStatus(self._state, self._fraction, self._stage, self._record, self._error,
                                 self._cancel.is_set(), self._seconds)

    def _run(self, experiment, config: CompressionConfig) -> None:
        try:
            compressed = experiment.compress(config, progress=self._progress, cancel=self._cancel)
            self._progress("evaluating on the live subset…", 1.0)
            record = experiment.run(config, compressed=compressed)
        except finetune.RetrainCancelled:
            self._finish(CANCELLED)
        except Exception as e:  # noqa: BLE001 - any failure must end up on the page, not in a dead thread
            log.error("retraining %s failed:\n%s", self.label, traceback.format_exc())
            self._finish(FAILED, error=services.error_line(e))
        else:
            self._finish(DONE, record=dict(record))


class RetrainJobs:
    """The registry: job id -> RetrainJob, de-duplicated by key; at most `max_running` run at once, one per owner."""

    def __init__(self, max_running: int = MAX_RUNNING, max_per_owner: int = MAX_RUNNING_PER_OWNER) -> None:
        self._jobs: dict[str, RetrainJob] = {}
        self._lock = threading.Lock()
        self.max_running, self.max_per_owner = max_running, max_per_owner

    def start(self, experiment, config: CompressionConfig, *, key: tuple[str, str], owner: str) -> RetrainJob:
        """Retrain `config` on `experiment` in a background thread, or return the job already running or done for
        `key` (then its token belongs to whoever started it).

        Raises:
            JobLimitError: the server or this session already runs the most retrainings allowed.
        """
        with self._lock:
            same = [j for j in self._jobs.values() if j.key == key and j.status().state in (RUNNING, DONE)]
            if same:
                return same[-1]
            running = [j for j in self._jobs.values() if j.status().running]
            if len(running) >= self.max_running:
                raise JobLimitError(f"{len(running)} retrainings are already running on this server (the limit is "
                                    f"{self.max_running}); wait for one to finish")
            if sum(j.owner == owner for j in running) >= self.max_per_owner:
                raise JobLimitError("you already have a retraining running; wait for it to finish or cancel it")
            job = RetrainJob(key, config.label, owner)
            job.thread = threading.Thread(target=job._run, args=(experiment, config), name=f"retrain-{job.id}",
                                          daemon=True)
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if not j.status().running]
            for old in finished[:max(0, len(self._jobs) - MAX_KEPT)]:  # dicts keep insertion order: oldest first
                del self._jobs[old.id]
            job.thread.start()
            return job

    def get(self, job_id: str | None) -> RetrainJob | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id else None


@st.cache_resource(show_spinner=False)
def retrain_jobs() -> RetrainJobs:
    """The one RetrainJobs of this server process (shared by all sessions; jobs are found by id only)."""
    return RetrainJobs()


def unavailable(experiment) -> str | None:
    """One line on why this selection cannot be retrained (no train split, no class labels), or None."""
    name = experiment.dataset.info.name
    if "train" not in experiment.dataset.tensors:
        return (f"Retraining needs a train split, and {name} has none (an image folder needs train/ and test/ or "
                f"val/ subfolders).")
    if experiment.task != "classify":
        return f"Retraining trains on class labels; this selection's task is {experiment.task}."
    return None


def _temperature_label(t: float) -> str:
    return f"{t:g}" if t else "off"


def settings(config: CompressionConfig, reason: str | None) -> CompressionConfig:
    """The retrain controls (bound to the URL); returns `config` with the retraining they describe (epochs 0: off)."""
    c = st.columns(3)
    epochs = c[0].number_input("Epochs", 0, MAX_EPOCHS, 0, 1, key="explore_ft_epochs", bind="query-params",
                               disabled=reason is not None, help="Passes over the train split; 0 = no retraining.")
    off = reason is not None or epochs == 0
    optimizer = c[1].selectbox("Optimizer", OPTIMIZERS, key="explore_ft_optimizer", bind="query-params",
                               format_func=option_label, disabled=off, help="SGD uses momentum 0.9.")
    lr = c[2].select_slider("Learning rate", LEARNING_RATES, value=1e-4, key="explore_ft_lr", bind="query-params",
                            format_func="{:g}".format, disabled=off)
    c = st.columns(3)
    schedule = c[0].selectbox("LR schedule", SCHEDULES, key="explore_ft_schedule", bind="query-params",
                              format_func=option_label, disabled=off,
                              help="constant, cosine decay to 0, or step (×0.1 at 50 % and 75 % of the steps).")
    distill = c[1].select_slider("Distillation T", TEMPERATURES, value=0.0, key="explore_distill",
                                 bind="query-params", format_func=_temperature_label, disabled=off,
                                 help="Learn from the uncompressed model's softened outputs (Hinton et al. 2015).")
    gradual = c[2].number_input("Gradual stages", 0, MAX_GRADUAL, 0, 1, key="explore_gradual", bind="query-params",
                                disabled=off or config.prune.sparsity == 0,
                                help="Prune in this many steps on a cubic schedule while retraining (Zhu & Gupta "
                                     "2017); 0 = prune once, before. Needs a sparsity above 0.")
    if off:
        return config
    return dataclasses.replace(config, finetune_epochs=int(epochs), finetune_optimizer=optimizer,
                               finetune_lr=float(lr), finetune_schedule=schedule, distill=float(distill),
                               gradual=int(gradual) if config.prune.sparsity > 0 else 0)


def panel(selection: Selection, config: CompressionConfig, experiment=None) -> dict | None:
    """The Retrain section under Explore's controls (settings, Retrain, progress with Cancel, the outcome line).

    Args:
        selection, config: the sidebar's selection and Explore's current (not retrained) config.
        experiment: the selection's `Experiment`; default `services.get_experiment(selection)`.

    Returns:
        The record of this session's latest retraining on this selection, once, on the first run after it is done
        (Explore keeps it as a point; after "Clear explored points" it does not come back), else None.
    """
    job = retrain_jobs().get((st.session_state.get(STATE_KEY) or {}).get("job"))
    experiment = experiment or services.get_experiment(selection)
    reason = unavailable(experiment)
    with st.expander("Retrain", expanded=job is not None, icon=":material/model_training:"):
        retrained = settings(config, reason)
        if reason:
            st.caption(reason)
        elif st.button("Retrain", key="explore_retrain", icon=":material/play_arrow:", disabled=not retrained.retrains,
                       help="Retrain this config over the train split in the background (set Epochs first)."):
            job = _start(selection, experiment, retrained) or job
        if job is not None:
            polling = job.status().running
            st.fragment(run_every=POLL_S if polling else None)(_watch)(job.id, polling)
    status = job.status() if job is not None else None
    if status is None or status.state != DONE or job.key[0] != selection.key or st.session_state[STATE_KEY]["plotted"]:
        return None
    st.session_state[STATE_KEY] = {**st.session_state[STATE_KEY], "plotted": True}
    return status.record


def _start(selection: Selection, experiment, config: CompressionConfig) -> RetrainJob | None:
    """Start (or join) the retraining of `config`; keep its id, and its token when this session started it."""
    me = job_panel.owner()
    try:
        job = retrain_jobs().start(experiment, config, key=(selection.key, config.config_hash), owner=me)
    except JobLimitError as e:
        components.show_error(e)
        return None
    st.session_state[STATE_KEY] = {"job": job.id, "token": job.token if job.owner == me else None, "plotted": False}
    return job


def _watch(job_id: str, polling: bool) -> None:
    """Progress with the stage text and ETA and Cancel while the job runs; one outcome line once it ended."""
    job = retrain_jobs().get(job_id)
    if job is None:
        return
    token = (st.session_state.get(STATE_KEY) or {}).get("token")
    c = st.columns([6, 1], vertical_alignment="bottom")
    if token and job.status().running and c[1].button("Cancel", key="explore_retrain_cancel", icon=":material/stop:",
                                                      disabled=job.status().cancel_requested):
        job.cancel(token)
    status = job.status()
    if status.running:
        text = f"{components.plain(job.label)} · {status.stage}"
        c[0].progress(status.fraction, text=text + (" · cancelling…" if status.cancel_requested else ""))
        if not token:
            st.caption("Started in another session: only that session can cancel it.")
    elif polling:
        st.rerun()  # it ended since the last poll: redraw Explore with the new point and without the timer
    elif status.state == DONE:
        st.success(f"Retrained **{components.plain(job.label)}** in {status.seconds:.0f} s: accuracy "
                   f"{status.record['accuracy']:.1%}; it is a point on the chart below.",
                   icon=":material/check_circle:")
    elif status.state == CANCELLED:
        st.info("Retraining cancelled; the configs evaluated before are kept.", icon=":material/stop_circle:")
    else:
        components.show_error(status.error, "Retraining failed: ")
