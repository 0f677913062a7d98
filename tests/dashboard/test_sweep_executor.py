"""Sweep page: the executor choice (in-process / the operator's Ray cluster), bound to the URL as `sweep_executor`,
and its one-line refusals when no cluster is configured or the configured one does not answer."""
from __future__ import annotations

from dashboard.services import RAY_ADDRESS_ENV


def _launch(at):
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    return at


def test_ray_chosen_in_the_url_without_a_configured_cluster_is_refused(make_app, no_exception, monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    at = make_app("sweep", sweep_executor="ray")
    no_exception(at)
    choice = at.radio(key="sweep_executor")
    assert choice.value == "ray" and choice.options == ["In-process (this server)",
                                                        "Ray cluster (not configured on this server)"]
    _launch(at)
    no_exception(at)
    assert any("No Ray cluster is configured on this server" in e.value for e in at.error)
    assert "sweep_run" not in at.session_state  # no job was started


def test_an_unreachable_cluster_is_one_line_and_in_process_still_runs(make_app, no_exception, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, "127.0.0.1:1")
    at = make_app("sweep", sweep_executor="ray")
    no_exception(at)
    assert at.radio(key="sweep_executor").options[1] == "Ray cluster at 127.0.0.1:1"
    lines = [e.value for e in at.error]
    assert lines == ["Ray: no Ray cluster answers at 127.0.0.1:1 (Connection refused); start one there with `ray "
                     "start --head`, or check the host and port"]
    _launch(at)
    assert "sweep_run" not in at.session_state and len(at.error) == 2  # the cluster line, then the refusal
    at.radio(key="sweep_executor").set_value("local").run()
    assert at.query_params["sweep_executor"] in ("local", ["local"])
