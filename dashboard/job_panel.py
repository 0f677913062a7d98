"""The Sweep page's job panel: progress with Cancel, Resume of a run that stopped short, and the outcome line.

Only the session that launched a sweep holds its cancel token (`st.session_state["sweep_tokens"]`, never the
URL); another session sees the progress and can cancel only with that key. A sweep the server never finished
shows "interrupted at k / n" and a Resume button that continues the same run id.
"""
from __future__ import annotations

import secrets

import streamlit as st

from dashboard import components, jobs, services
from dashboard.selection import Selection

TOKENS_KEY = "sweep_tokens"  # session state only: {run id: cancel token} of the sweeps this session started
OWNER_KEY = "sweep_owner"  # session state only: a random id of this browser session, for the sweep quotas


def owner() -> str:
    """This browser session's id for the per-session sweep quotas."""
    return st.session_state.setdefault(OWNER_KEY, secrets.token_hex(8))


def remember(job: jobs.Job) -> None:
    """Keep the job's cancel token in this session only."""
    st.session_state[TOKENS_KEY] = {**st.session_state.get(TOKENS_KEY, {}), job.id: job.token}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating time left…"
    seconds = round(seconds)
    return f"about {seconds} s left" if seconds < 90 else f"about {seconds // 60} min {seconds % 60:02d} s left"


def _cancel_with_key(job: jobs.Job, where) -> None:
    """For a session that did not start the job: cancel only with the key the starting session shows."""
    with where.popover("Cancel…", icon=":material/stop:"):
        key = st.text_input("Cancel key", type="password", key="sweep_cancel_key",
                            help="Shown to the session that launched this sweep.")
        if st.button("Cancel this sweep", key="sweep_cancel_with_key"):
            if jobs.job_manager().cancel(job.id, key):
                remember(job)
            else:
                st.error("That cancel key does not belong to this sweep.", icon=":material/error:")


def show_progress(job: jobs.Job) -> None:
    """Progress bar, 'n / N configs, ETA', the config in flight, and Cancel (for the session holding the token)."""
    token = st.session_state.get(TOKENS_KEY, {}).get(job.id)
    c = st.columns([6, 1], vertical_alignment="bottom")
    if token is None:
        _cancel_with_key(job, c[1])
    elif c[1].button("Cancel", key="sweep_cancel", icon=":material/stop:", disabled=job.status().cancel_requested):
        jobs.job_manager().cancel(job.id, token)
    status = job.status()
    text = f"{status.done} / {status.total} configs · {_duration(status.eta_s)}"
    if status.cancel_requested:
        text += " · cancelling after the config in flight…"
    elif status.current:
        text += f" · now: {status.current}"
    c[0].progress(status.fraction, text=text)
    if token is None:
        st.caption("Started in another session: only that session, or whoever has its cancel key, can cancel it.")
    else:
        st.caption(f"Cancel key, to cancel from another tab or after a reload: `{token}`")
    if status.warning:
        st.warning(components.plain(status.warning), icon=":material/warning:")


def offer_resume(run_selection: Selection, run_id: str, status: jobs.JobStatus | None) -> None:
    """'Interrupted at k / n' and a Resume button that continues this run id, when the run stopped short."""
    stopped = jobs.job_manager().interrupted(services.store(), run_id)
    if stopped is None:
        return
    k, n = stopped
    c = st.columns([6, 1], vertical_alignment="center")
    if status is None:  # no job of this server: it stopped while the sweep ran
        c[0].warning(f"This sweep was interrupted at {k} / {n} configs (the server stopped). Resume computes only "
                     f"the {n - k} missing ones, in the same run.", icon=":material/running_with_errors:")
    else:
        c[0].caption(f"{k} / {n} configs are done; Resume computes the {n - k} missing ones in the same run.")
    if not c[1].button("Resume", key="sweep_resume", icon=":material/play_arrow:"):
        return
    try:
        job = jobs.job_manager().resume(services.get_experiment(run_selection), services.store(), run_id,
                                        owner=owner())
    except (jobs.JobLimitError, ValueError, *services.USER_ERRORS) as e:
        components.show_error(e)
        return
    remember(job)
    st.rerun()


def show_outcome(status: jobs.JobStatus) -> None:
    if status.state == jobs.FAILED:
        components.show_error(status.error, f"The sweep stopped with an error after {status.done} of {status.total} "
                                            f"configs: ")
    elif status.state == jobs.CANCELLED:
        st.warning(f"Cancelled after {status.done} of {status.total} configs; the finished ones are below and "
                   f"in the store.", icon=":material/stop_circle:")
    else:
        seconds = (status.finished_at or status.started_at) - status.started_at
        st.success(f"Sweep finished: {status.total} configs in {seconds:.0f} s.", icon=":material/check_circle:")
    if status.warning:
        st.warning(components.plain(status.warning), icon=":material/warning:")
