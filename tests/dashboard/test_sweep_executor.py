"""Sweep page: the executor choice (in-process / the operator's Ray cluster), bound to the URL as `sweep_executor`,
and its one-line refusals when no cluster is configured or the configured one does not answer."""
from __future__ import annotations

import pytest

from compression_core.store import Store
from compression_core.grid import expand_grid
from dashboard import cluster, jobs, services
from dashboard.cluster import RAY_ADDRESS_ENV
from dashboard.components import plain
from dashboard.selection import Selection


def _launch(at, executor: str):
    at.radio(key="sweep_executor").set_value(executor)
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    return at


def test_ray_without_a_configured_cluster_is_refused_and_the_choice_is_in_the_url(make_app, no_exception,
                                                                                  monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    at = make_app("sweep")
    no_exception(at)
    choice = at.radio(key="sweep_executor")
    assert choice.value == "local" and choice.options == ["In-process", "Ray cluster"]
    assert any("No Ray cluster is configured on this server" in c.value for c in at.caption)
    _launch(at, "ray")
    no_exception(at)
    assert any("No Ray cluster is configured on this server" in e.value for e in at.error)
    assert "sweep_run" not in at.session_state  # no job was started
    assert at.radio(key="sweep_executor").proto.query_param_key == "sweep_executor"  # the browser keeps it in the URL


def test_an_unreachable_cluster_is_one_line(make_app, no_exception, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, "127.0.0.1:1")
    at = make_app("sweep")
    no_exception(at)
    assert at.radio(key="sweep_executor").options[1] == "Ray cluster"
    lines = [e.value for e in at.error]
    assert lines == ["Ray: " + plain("no Ray cluster answers at 127.0.0.1:1 (Connection refused); start one there "
                                     "with `ray start --head`, or check the host and port")]  # Markdown escaped
    _launch(at, "ray")
    assert "sweep_run" not in at.session_state and [e.value for e in at.error] == lines * 2  # form, then launch


def test_a_sweep_sent_to_ray_runs_as_a_background_job_with_the_same_records(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        address = ray.get_runtime_context().gcs_address
        monkeypatch.setenv(RAY_ADDRESS_ENV, address)
        selection = Selection(model="digits-cnn", dataset="digits", limit=200)
        experiment, configs = services.get_experiment(selection), expand_grid(bits=[2, 4], sparsity=[0, 0.5])
        executor = cluster.ray_executor(selection, cluster.ray_address())
        assert executor.gpus_per_worker == 0 and executor.spec.weights is None and executor.spec.limit == 200
        job = jobs.JobManager().start(experiment, configs, Store(tmp_path / "runs.sqlite"), label="ray",
                                      executor=executor)
        assert job.join(240) and job.status().state == jobs.DONE and job.status().warning is None
        stored = {r["config_hash"]: r for r in Store(tmp_path / "runs.sqlite").records(run_id=job.id)}
        for config in configs:  # exactly the numbers this server computes in-process
            assert stored[config.config_hash]["accuracy"] == experiment.run(config)["accuracy"]
        assert cluster.ray_cluster.__wrapped__(address)["workers"] == 0  # the job's workers ended with it
    finally:
        ray.shutdown()
