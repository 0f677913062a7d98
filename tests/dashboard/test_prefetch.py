"""Neighbour prefetch: which configs are one slider step away, and the background worker (order, replacement per
session, bounds, cancellation, failures, concurrent sessions); on the page, the keys it fills are the very configs
the controls produce one step later."""
from __future__ import annotations

import threading
import time

from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from dashboard import prefetch
from dashboard.prefetch import Prefetcher

TIMEOUT = 30
PREVIOUS_KEY, HISTORY_KEY = "explore_previous_config", "explore_history"  # dashboard/views/explore.py


def _steps(configs: list[CompressionConfig]) -> list[tuple[int, float]]:
    return [(c.quant.bits, c.prune.sparsity) for c in configs]


def test_neighbours_put_the_continuation_of_the_last_move_first():
    config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))
    assert _steps(prefetch.neighbours(config)) == [(4, 0.49), (4, 0.51), (3, 0.5), (5, 0.5)]
    assert _steps(prefetch.neighbours(config, ("bits", -1))) == [(3, 0.5), (4, 0.49), (4, 0.51), (5, 0.5)]
    assert _steps(prefetch.neighbours(config, ("sparsity", 1)))[0] == (4, 0.51)
    assert all(c.quant.granularity == config.quant.granularity for c in prefetch.neighbours(config))


def test_neighbours_stay_inside_what_the_controls_and_the_engine_allow():
    # 2-bit symmetric: 1 bit needs asym (the engine refuses it); sparsity 0 has no step down
    assert _steps(prefetch.neighbours(CompressionConfig(quant=QuantSpec(bits=2)))) == [(2, 0.01), (3, 0.0)]
    top = CompressionConfig(quant=QuantSpec(bits=32), prune=PruneSpec(sparsity=0.99))
    assert _steps(prefetch.neighbours(top)) == [(32, 0.98), (16, 0.99)]
    fp16 = CompressionConfig(quant=QuantSpec(quantizer="fp16"), prune=PruneSpec(method="nm"))
    assert prefetch.neighbours(fp16) == []  # a cast has no bits slider, N:M no sparsity slider


def test_last_move():
    a = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))
    assert prefetch.last_move(None, a) is None
    assert prefetch.last_move(a, a) is None
    assert prefetch.last_move(CompressionConfig(quant=QuantSpec(bits=5), prune=PruneSpec(sparsity=0.5)), a) == (
        "bits", -1)
    assert prefetch.last_move(CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.4)), a) == (
        "sparsity", 1)


class Gate:
    """A job runner that records what it ran (and in which thread) and can hold the worker on a job."""

    def __init__(self, hold: str | None = None, fail: str | None = None):
        self.ran: list[str] = []
        self.threads: set[str] = set()
        self.hold, self.fail = hold, fail
        self.holding, self.release = threading.Event(), threading.Event()

    def __call__(self, selection, config_json: str) -> None:
        self.threads.add(threading.current_thread().name)
        if config_json == self.hold:
            self.holding.set()
            assert self.release.wait(TIMEOUT)
        self.ran.append(config_json)
        if config_json == self.fail:
            raise RuntimeError("engine refused")


def test_jobs_run_in_order_in_one_background_thread():
    gate = Gate()
    p = Prefetcher(gate, delay_s=0)
    assert p.submit("s1", "sel", ["a", "b", "a", "c"]) == 3  # duplicates once
    assert p.wait_idle(TIMEOUT)
    assert gate.ran == ["a", "b", "c"] and gate.threads == {"explore-prefetch"} and p.done == 3


def test_a_job_waits_its_delay_so_the_browser_draws_first():
    gate = Gate()
    p = Prefetcher(gate, delay_s=0.5)
    t0 = time.monotonic()
    p.submit("s1", "sel", ["a"])
    time.sleep(0.2)
    assert gate.ran == [] and p.pending() == ["a"]
    assert p.cancel("s1") == 1  # the user moved again within the delay: nothing ran
    p.submit("s1", "sel", ["b"])
    assert p.wait_idle(TIMEOUT) and gate.ran == ["b"] and time.monotonic() - t0 >= 0.7


def test_a_new_request_replaces_the_sessions_waiting_jobs_and_is_bounded():
    gate = Gate(hold="busy")
    p = Prefetcher(gate, per_owner=2, max_pending=3, delay_s=0)
    p.submit("s1", "sel", ["busy"])
    assert gate.holding.wait(TIMEOUT)  # the worker is on "busy": the rest waits
    p.submit("s1", "sel", ["a1", "a2", "a3"])
    assert p.pending("s1") == ["a1", "a2"]  # at most per_owner
    p.submit("s2", "sel", ["b1"])
    p.submit("s1", "sel", ["c1", "c2"])  # replaces a1, a2
    assert p.pending() == ["b1", "c1", "c2"]
    p.submit("s3", "sel", ["d1"])  # over max_pending: the oldest (b1) goes
    assert p.pending() == ["c1", "c2", "d1"]
    assert p.cancel("s1") == 2 and p.pending() == ["d1"]
    assert p.cancel("nobody") == 0
    gate.release.set()
    assert p.wait_idle(TIMEOUT)
    assert gate.ran == ["busy", "d1"]  # the running job finished; cancelled ones never ran


def test_close_lets_the_running_job_finish_and_stops_the_worker():
    gate = Gate(hold="busy")
    p = Prefetcher(gate, delay_s=0)
    p.submit("s1", "sel", ["busy", "next"])
    assert gate.holding.wait(TIMEOUT)
    threading.Timer(0.2, gate.release.set).start()
    p.close(TIMEOUT)  # what the interpreter's exit runs: waits for "busy", drops "next"
    assert gate.ran == ["busy"] and p.pending() == []
    assert p.submit("s1", "sel", ["late"]) == 0 and p.wait_idle(TIMEOUT) and gate.ran == ["busy"]


def test_a_failing_job_does_not_stop_the_worker():
    gate = Gate(fail="bad")
    p = Prefetcher(gate, delay_s=0)
    p.submit("s1", "sel", ["bad", "good"])
    assert p.wait_idle(TIMEOUT)
    assert gate.ran == ["bad", "good"] and p.done == 2


def test_concurrent_sessions_submit_and_cancel_safely():
    gate = Gate()
    p = Prefetcher(gate, per_owner=3, max_pending=8, delay_s=0)
    errors = []

    def session(i: int) -> None:
        try:
            for k in range(50):
                p.submit(f"s{i}", "sel", [f"s{i}-{k}-{j}" for j in range(3)])
                if k % 7 == 0:
                    p.cancel(f"s{i}")
                assert len(p.pending()) <= 8
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    assert p.wait_idle(TIMEOUT)
    assert p.pending() == [] and p.done == len(gate.ran) and len(gate.ran) == len(set(gate.ran))


def test_the_page_prefetches_exactly_the_configs_one_step_later(make_app, no_exception):
    from dashboard import services

    at = make_app(explore_bits="4", explore_sparsity="0.5")
    no_exception(at)
    shown = CompressionConfig.from_json(at.session_state[PREVIOUS_KEY])
    expected = {c.config_hash for c in prefetch.neighbours(shown)}
    assert len(expected) == 4
    worker = services.prefetcher()  # the server's one instance (a shared resource), also outside a script run
    assert worker.wait_idle(TIMEOUT) and worker.done >= 3  # the first three neighbours were evaluated
    for key, value in (("explore_sparsity", 0.51), ("explore_bits", 5)):
        widget = at.slider(key=key) if key == "explore_sparsity" else at.select_slider(key=key)
        widget.set_value(value).run()
        no_exception(at)
        (points,) = at.session_state[HISTORY_KEY].values()
        assert points[-1]["config_hash"] in expected  # the cache key the prefetcher filled
        expected = {c.config_hash for c in prefetch.neighbours(
            CompressionConfig.from_json(at.session_state[PREVIOUS_KEY]))}


def test_slow_evaluations_are_not_prefetched():
    config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))
    previous = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.49)).to_json()
    assert prefetch.plan(previous, config, prefetch.MAX_EVAL_S + 0.1) == []
    planned = [CompressionConfig.from_json(c) for c in prefetch.plan(previous, config, 0.05)]
    assert _steps(planned) == [(4, 0.51), (4, 0.49), (3, 0.5), (5, 0.5)]  # going up: 0.51 first


def test_the_prefetch_warms_histograms_only_for_sessions_that_show_them(make_app, no_exception, monkeypatch):
    import threading

    from dashboard import layer_services, services

    real, warmed = layer_services.layer_histogram, []

    def spy(*args, **kwargs):
        if threading.current_thread().name == "explore-prefetch":
            warmed.append(CompressionConfig.from_json(args[1]).config_hash)
        return real(*args, **kwargs)

    monkeypatch.setattr(layer_services, "layer_histogram", spy)
    worker = services.prefetcher()
    no_exception(make_app(explore_bits="3", explore_sparsity="0.4"))  # per-layer details off (the default)
    assert worker.wait_idle(TIMEOUT) and warmed == []
    at = make_app(explore_bits="3", explore_sparsity="0.4", explore_details="true")
    no_exception(at)
    assert worker.wait_idle(TIMEOUT)
    shown = CompressionConfig.from_json(at.session_state[PREVIOUS_KEY])
    neighbours = {c.config_hash for c in prefetch.neighbours(shown)}
    assert warmed and set(warmed) <= neighbours
