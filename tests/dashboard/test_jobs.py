"""Background sweep jobs: off the calling thread, progress, cancel by token only, quotas, resume, every record stored."""
from __future__ import annotations

import threading
import time

import pytest

from compression_core._version import __version__
from compression_core.config import CompressionConfig
from compression_core.store import Store
from compression_core.grid import expand_grid
from dashboard import jobs

CONFIGS = expand_grid(bits=[2, 4, 8, 32], sparsity=[0.0, 0.5])  # 8 configs


class GatedExperiment:
    """An ExperimentLike whose run(config) waits until the test opens a gate: one gate per config, in order."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.gates = [threading.Event() for _ in CONFIGS]
        self.started = [threading.Event() for _ in CONFIGS]
        self.threads: list[str] = []
        self.fail_at = fail_at
        self._i = 0

    def key(self, config: CompressionConfig) -> dict:
        return {"model": "gated", "fingerprint": "f" * 16, "dataset": "digits", "split": "test", "limit": None,
                "config_hash": config.config_hash}

    def run(self, config: CompressionConfig) -> dict:
        i, self._i = self._i, self._i + 1
        self.threads.append(threading.current_thread().name)
        self.started[i].set()
        assert self.gates[i].wait(30), "test never opened the gate"
        if i == self.fail_at:
            raise RuntimeError("weights turned into NaN\nsecond line")
        return {**self.key(config), "engine_version": __version__, "label": config.label, "bits": config.quant.bits,
                "accuracy": 0.9 - 0.01 * i, "size_bytes": 100 * (i + 1)}


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "runs.sqlite") as s:
        yield s


def test_job_runs_in_background_and_stores_every_record(store):
    exp = GatedExperiment()
    manager = jobs.JobManager()
    job = manager.start(exp, CONFIGS, store, label="all", meta={"model": "gated"})
    assert exp.started[0].wait(10)
    status = job.status()
    assert status.running and status.total == len(CONFIGS) and status.done == 0
    assert exp.threads == [f"sweep-{job.id}"]  # not the caller's thread
    exp.gates[0].set()
    assert exp.started[1].wait(10)
    status = job.status()
    assert status.done == 1 and status.eta_s is None and status.current == CONFIGS[1].label  # no pace yet
    assert store.count(run_id=job.id) == 1  # written as it finished, while the job still runs
    time.sleep(0.5)  # the second config takes 0.5 s: 6 configs left take about 3 s
    exp.gates[1].set()
    assert exp.started[2].wait(10)
    first = job.status().eta_s
    time.sleep(0.2)
    assert 1.5 < first < 6.0 and job.status().eta_s == pytest.approx(first - 0.2, abs=0.1)  # counts down
    for gate in exp.gates:
        gate.set()
    assert job.join(30)
    status = job.status()
    assert (status.state, status.done, status.total, status.error) == (jobs.DONE, 8, 8, None)
    assert status.fraction == 1.0 and status.finished_at >= status.started_at
    assert {r["config_hash"] for r in store.records(run_id=job.id)} == {c.config_hash for c in CONFIGS}
    run = next(r for r in store.runs() if r["run_id"] == job.id)
    assert (run["label"], run["meta"]["model"], run["n_records"]) == ("all", "gated", 8)
    assert [CompressionConfig.from_dict(d) for d in run["meta"]["configs"]] == CONFIGS  # the grid, to resume from
    assert manager.get(job.id) is job and manager.get("nope") is None and manager.get(None) is None


def test_cancel_stops_after_the_config_in_flight(store):
    exp = GatedExperiment()
    job = jobs.JobManager().start(exp, CONFIGS, store, label="cancel me")
    exp.gates[0].set()
    assert exp.started[1].wait(10)
    assert not job.cancel(None) and not job.cancel("guess") and not job.status().cancel_requested
    assert job.cancel(job.token)
    assert job.status().cancel_requested and job.status().running
    exp.gates[1].set()  # the config in flight finishes and is kept
    assert job.join(30)
    status = job.status()
    assert (status.state, status.done, status.total) == (jobs.CANCELLED, 2, 8)
    assert not exp.started[2].is_set()  # nothing started after cancel
    assert store.count(run_id=job.id) == 2


def test_failure_is_captured_as_one_line(store):
    exp = GatedExperiment(fail_at=1)
    for gate in exp.gates:
        gate.set()
    job = jobs.JobManager().start(exp, CONFIGS, store, label="fails")
    assert job.join(30)
    status = job.status()
    assert status.state == jobs.FAILED and status.done == 1
    assert status.error == "RuntimeError: weights turned into NaN"
    assert store.count(run_id=job.id) == 1  # what finished before the error is kept


def test_rerun_of_same_grid_reuses_stored_records(store):
    first = GatedExperiment()
    for gate in first.gates:
        gate.set()
    assert jobs.JobManager().start(first, CONFIGS, store, label="first").join(30)
    again = GatedExperiment()
    job = jobs.JobManager().start(again, CONFIGS, store, label="again")
    assert job.join(30)
    assert again.threads == []  # nothing recomputed
    assert job.status().done == 8 and store.count(run_id=job.id) == 8


def test_running_limit(store):
    exp_a, exp_b = GatedExperiment(), GatedExperiment()
    manager = jobs.JobManager(max_running=1)
    job = manager.start(exp_a, CONFIGS, store, label="a")
    with pytest.raises(jobs.JobLimitError, match="limit is 1"):
        manager.start(exp_b, CONFIGS, store, label="b")
    assert job.cancel(job.token)
    for gate in exp_a.gates:
        gate.set()
    assert job.join(30)
    for gate in exp_b.gates:
        gate.set()
    assert manager.start(exp_b, CONFIGS[:2], store, label="b").join(30)


def test_finished_jobs_beyond_max_kept_are_forgotten(store):
    manager = jobs.JobManager(max_kept=2)
    ids = []
    for _ in range(4):
        exp = GatedExperiment()
        for gate in exp.gates:
            gate.set()
        job = manager.start(exp, CONFIGS[:1], store, label="x")
        assert job.join(30)
        ids.append(job.id)
    kept = [i for i in ids if manager.get(i) is not None]
    assert ids[-1] in kept and len(kept) <= 3  # the newest is there; older finished ones are dropped
    assert all(store.count(run_id=i) == 1 for i in ids)  # the records stay in the store


def test_job_manager_is_one_per_process():
    assert jobs.job_manager() is jobs.job_manager()


def open_all(exp: GatedExperiment) -> GatedExperiment:
    for gate in exp.gates:
        gate.set()
    return exp


def test_only_the_token_cancels_through_the_manager(store):
    exp = GatedExperiment()
    manager = jobs.JobManager()
    job = manager.start(exp, CONFIGS, store, label="mine", owner="session-a")
    assert len(job.token) >= 20 and job.token not in job.id
    assert not manager.cancel(job.id, None) and not manager.cancel(job.id, "")
    assert not manager.cancel(job.id, job.id)  # knowing the run id (the URL) is not enough
    assert not manager.cancel("unknown", job.token)
    assert not job.status().cancel_requested
    assert manager.cancel(job.id, job.token) and job.status().cancel_requested
    open_all(exp)
    assert job.join(30) and job.status().state == jobs.CANCELLED
    assert not manager.cancel(job.id, job.token)  # nothing left to cancel


def test_session_quotas_name_their_limit(store):
    manager = jobs.JobManager(max_running=4, max_configs_per_hour=10)
    first = GatedExperiment()
    job = manager.start(first, CONFIGS, store, label="a1", owner="a")
    with pytest.raises(jobs.JobLimitError, match=r"you already have 1 sweep running \(the limit is 1 per session\)"):
        manager.start(GatedExperiment(), CONFIGS, store, label="a2", owner="a")
    other = manager.start(open_all(GatedExperiment()), expand_grid(bits=7), store, label="b", owner="b")  # a session
    assert other.join(30)
    open_all(first)
    assert job.join(30)
    more = expand_grid(bits=[3, 5, 6], sparsity=[0.0, 0.9])  # 6 configs not in the store; 8 + 6 > 10
    with pytest.raises(jobs.JobLimitError, match=r"needs 6 new configs .* started 8 in the last hour "
                                                  r"\(the limit is 10 per hour\)"):
        manager.start(GatedExperiment(), more, store, label="a3", owner="a")
    again = manager.start(GatedExperiment(), CONFIGS, store, label="a4", owner="a")  # all stored: costs nothing
    assert again.join(30) and again.status().done == 8


def test_interrupted_run_resumes_under_the_same_id(store):
    exp = GatedExperiment()
    old_server = jobs.JobManager()
    job = old_server.start(exp, CONFIGS, store, label="grid", owner="a")
    for i in range(3):
        exp.gates[i].set()
    assert exp.started[3].wait(10)
    assert job.cancel(job.token)
    exp.gates[3].set()
    assert job.join(30) and store.count(run_id=job.id) == 4

    new_server = jobs.JobManager()  # the server restarted: no job, only the store
    assert new_server.get(job.id) is None
    assert new_server.interrupted(store, job.id) == (4, 8)
    again = open_all(GatedExperiment())
    resumed = new_server.resume(again, store, job.id, owner="b")
    assert resumed.id == job.id and resumed.join(30)
    assert len(again.threads) == 4  # only the 4 missing configs ran
    assert resumed.status().done == 8 and resumed.status().total == 8
    assert [r["run_id"] for r in store.runs()] == [job.id] and store.count(run_id=job.id) == 8
    assert new_server.interrupted(store, job.id) is None
    for meta in ({}, {"argv": ["sweep"], "configs": 12}):  # runs the CLI made keep no grid
        cli_run = store.new_run("cli sweep", meta)
        assert new_server.interrupted(store, cli_run) is None
        with pytest.raises(ValueError, match="no stored grid"):
            new_server.resume(again, store, cli_run)


def test_a_running_sweep_is_not_resumed_twice(store):
    exp = GatedExperiment()
    manager = jobs.JobManager()
    job = manager.start(exp, CONFIGS, store, label="grid", owner="a")
    assert manager.interrupted(store, job.id) is None  # running, not interrupted
    with pytest.raises(jobs.JobLimitError, match="already running"):
        manager.resume(GatedExperiment(), store, job.id, owner="b")
    open_all(exp)
    assert job.join(30)
