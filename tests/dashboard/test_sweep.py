"""Sweep page (AppTest on the real app): launch a small digits sweep, read the Pareto figure spec, open details."""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.models import load_model
from compression_core.pareto import pareto_front, staircase
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep
from dashboard import jobs
from dashboard.selection import Selection
from tests.dashboard.conftest import decode_figure

ROOT = Path(__file__).resolve().parents[2]
BITS = [4, 8, 32]
SPARSITY = (0.0, 0.5)
N_CONFIGS = len(BITS) * len(SPARSITY)


def chart(at, key: str):
    charts = [c for c in at.get("plotly_chart") if c.key == key]
    assert len(charts) == 1, f"expected one chart {key!r}; charts are {[c.key for c in at.get('plotly_chart')]}"
    return charts[0]


def spec(at, key: str) -> dict:
    return decode_figure(json.loads(chart(at, key).proto.spec))


def traces(at, key: str, role: str) -> list[dict]:
    return [t for t in spec(at, key)["data"] if (t.get("meta") or {}).get("role") == role]


def launch(at, bits=BITS, span=SPARSITY, step=0.5):
    at.multiselect(key="sweep_bits").set_value(bits)
    at.slider(key="sweep_sparsity").set_value(span)
    at.number_input(key="sweep_step").set_value(step)
    next(b for b in at.button if b.label == "Launch sweep").click().run()
    return at


def finish(at):
    """Wait for this session's background job, then rerun the page as the polling fragment would."""
    job = jobs.job_manager().get(at.session_state["sweep_run"])
    assert job is not None and job.join(300), "the sweep did not finish"
    at.run()
    return job


@pytest.fixture(scope="module")
def swept():
    """One small sweep shared by the tests below: (AppTest after the sweep, the run id)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # like conftest's make_app, which is per test
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
        at.query_params = {"model": "digits-cnn", "dataset": "digits"}
        at.run()
        at.switch_page("views/sweep.py").run()
        job = finish(launch(at))
    return at, job.id


def test_sweep_page_loads_with_empty_state(make_app, no_exception):
    at = make_app("sweep")
    no_exception(at)
    assert at.title[0].value == "Sweep"
    assert any("No sweep yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_small_sweep_draws_pareto_front_and_reference(swept, no_exception):
    at, run_id = swept
    no_exception(at)
    assert at.query_params["sweep_run"] == [run_id] or at.query_params["sweep_run"] == run_id
    records = Store().records(run_id=run_id)
    assert len(records) == N_CONFIGS
    assert {(r["bits"], r["sparsity"]) for r in records} == {(b, s) for b in BITS for s in SPARSITY}

    configs = traces(at, "sweep_pareto", "configs")
    assert sorted(t["name"] for t in configs) == ["4-bit", "8-bit", "fp32"]
    assert sum(len(t["x"]) for t in configs) == N_CONFIGS
    by_hash = {r["config_hash"]: r for r in records}
    points = [(d[0], x, y) for t in configs for d, x, y in zip(t["customdata"], t["x"], t["y"])]
    assert {h for h, _, _ in points} == set(by_hash)
    for h, x, y in points:  # KiB and % of exactly the engine's numbers
        assert x == pytest.approx(by_hash[h]["size_bytes"] / 1024)
        assert y == pytest.approx(100 * by_hash[h]["accuracy"])

    (front,) = traces(at, "sweep_pareto", "front")
    xs, ys = staircase(pareto_front(records))
    assert front["x"] == pytest.approx([x / 1024 for x in xs])
    assert front["y"] == pytest.approx([100 * y for y in ys])

    (ref,) = traces(at, "sweep_pareto", "reference")
    baseline = next(r for r in records if r["bits"] == 32 and r["sparsity"] == 0)
    assert ref["y"] == pytest.approx([100 * baseline["accuracy"]] * 2)
    assert any("Sweep finished" in s.value for s in at.success)


def test_heatmap_table_and_csv(swept):
    at, run_id = swept
    (hm,) = spec(at, "sweep_heatmap")["data"]
    assert len(hm["z"]) == len(BITS) and all(len(row) == len(SPARSITY) for row in hm["z"])
    table = table_with(at, "compression_ratio")
    assert len(table) == N_CONFIGS
    stored = Store().records(run_id=run_id)
    assert sorted(table["accuracy"]) == pytest.approx(sorted(100 * r["accuracy"] for r in stored))
    assert at.get("download_button")[0].proto.label == "Download CSV"


def table_with(at, column: str):
    """The st.dataframe showing `column` (non-selectable dataframes carry no key in AppTest)."""
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(frames) == 1, [list(d.value.columns) for d in at.dataframe]
    return frames[0]


def select_points(at, points: list[tuple[int, int]]):
    """Send the selection event the browser sends after a click / box on the Pareto plot, then rerun."""
    element = chart(at, "sweep_pareto")
    data = spec(at, "sweep_pareto")["data"]
    event = {"selection": {
        "points": [{"curve_number": c, "point_number": i, "point_index": i, "x": data[c]["x"][i],
                    "y": data[c]["y"][i], "customdata": data[c]["customdata"][i]} for c, i in points],
        "point_indices": [i for _, i in points], "box": [], "lasso": []}}
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=element.proto.id, string_value=json.dumps(event)))
    return at._run(states), [data[c]["customdata"][i][0] for c, i in points]


def test_selecting_a_point_opens_its_details(swept, no_exception):
    at, run_id = swept
    at, (picked,) = select_points(at, [(0, 1)])
    no_exception(at)
    record = next(r for r in Store().records(run_id=run_id) if r["config_hash"] == picked)
    assert f"Selected: {record['label']}" in [h.value for h in at.subheader]
    layers = table_with(at, "Layer")
    assert list(layers["Layer"]) == [l["name"] for l in record["layers"]]
    largest = max(record["layers"], key=lambda l: l["n"])  # the layer shown first, as on Explore
    assert at.selectbox(key="sweep_detail_layer").value == largest["name"]
    hist = spec(at, "sweep_detail_histogram")["data"]
    n_weights = largest["n"]
    before = next(t for t in hist if t.get("name", "").startswith("before"))
    assert sum(before["y"]) <= n_weights and sum(before["y"]) > 0


def test_box_selection_lets_the_user_pick_one(swept, no_exception):
    at, run_id = swept
    at, picked = select_points(at, [(0, 0), (1, 1)])
    no_exception(at)
    labels = {r["config_hash"]: r["label"] for r in Store().records(run_id=run_id)}
    pick = at.selectbox(key="sweep_detail_pick")
    assert "2 configs selected" in pick.label
    assert list(pick.options) == [labels[h] for h in picked] and pick.value == picked[0]
    at = pick.set_value(picked[1]).run()
    no_exception(at)
    assert f"Selected: {labels[picked[1]]}" in [h.value for h in at.subheader]


def test_reload_reattaches_and_other_sessions_do_not_see_it(swept, make_app, no_exception):
    _, run_id = swept
    reloaded = make_app("sweep", sweep_run=run_id)  # a new browser session with the shared URL
    no_exception(reloaded)
    assert sum(len(t["x"]) for t in traces(reloaded, "sweep_pareto", "configs")) == N_CONFIGS
    other = make_app("sweep")
    assert not other.get("plotly_chart")
    assert any("No sweep yet" in i.value for i in other.info)


def test_empty_grid_choice_is_explained(make_app, no_exception):
    at = launch(make_app("sweep"), bits=[])
    no_exception(at)
    assert any("at least one bit-width" in e.value for e in at.error)
    assert "sweep_run" not in at.session_state


class GatedExperiment:
    """A real digits experiment whose run(config) first waits for the test to open that config's gate."""

    def __init__(self, experiment, n: int) -> None:
        self.experiment = experiment
        self.gates = [threading.Event() for _ in range(n)]
        self.started = [threading.Event() for _ in range(n)]
        self._i = 0

    def key(self, config):
        return self.experiment.key(config)

    def run(self, config):
        i, self._i = self._i, self._i + 1
        self.started[i].set()
        assert self.gates[i].wait(60), "test never opened the gate"
        return self.experiment.run(config)


def test_progress_and_cancel_on_the_page(make_app, no_exception):
    selection = Selection(model="digits-cnn", dataset="digits", device="cpu", limit=1000)
    real = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=selection.limit, device="cpu")
    configs = expand_grid(bits=[3, 5, 6, 7], sparsity=[0.0, 0.2])
    gated = GatedExperiment(real, len(configs))
    job = jobs.job_manager().start(gated, configs, Store(), label="gated", owner="someone else",
                                   meta={"selection": dataclasses.asdict(selection)})
    gated.gates[0].set()
    assert gated.started[1].wait(60)

    at = make_app("sweep", sweep_run=job.id)  # another session, or a reload: it has the run id, not the token
    no_exception(at)
    (bar,) = at.get("progress")
    assert f"1 / {len(configs)} configs" in bar.proto.text
    assert bar.proto.value == round(100 / len(configs))
    assert sum(len(t["x"]) for t in traces(at, "sweep_pareto", "configs")) == 1  # the finished config streams in
    assert not [b for b in at.button if b.key == "sweep_cancel"]  # the run id alone cannot cancel
    assert any("only that session, or whoever has its cancel key" in c.value for c in at.caption)

    at.text_input(key="sweep_cancel_key").input(job.id).run()  # guessing with the run id
    at.button(key="sweep_cancel_with_key").click().run()
    no_exception(at)
    assert any("does not belong to this sweep" in e.value for e in at.error)
    assert not job.status().cancel_requested

    at.text_input(key="sweep_cancel_key").input(job.token).run()  # the key the starting session was shown
    at.button(key="sweep_cancel_with_key").click().run()
    no_exception(at)
    assert job.status().cancel_requested
    gated.gates[1].set()
    assert job.join(60)
    at.run()
    assert not at.get("progress")
    assert any("Cancelled after 2 of" in w.value for w in at.warning)
    assert sum(len(t["x"]) for t in traces(at, "sweep_pareto", "configs")) == 2


def test_launching_session_holds_the_token(make_app, no_exception):
    at = launch(make_app("sweep"), bits=[3], span=(0.0, 0.0))
    no_exception(at)
    run_id = at.session_state["sweep_run"]
    job = jobs.job_manager().get(run_id)
    assert at.session_state["sweep_tokens"] == {run_id: job.token}  # in session state only
    assert job.token not in str(at.query_params) and job.owner == at.session_state["sweep_owner"]
    assert job.join(120)


def test_interrupted_sweep_resumes_the_same_run(make_app, no_exception):
    selection = Selection(model="digits-cnn", dataset="digits", device="cpu", limit=1000)
    real = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=selection.limit, device="cpu")
    configs = expand_grid(bits=[3, 5], sparsity=[0.0, 0.3])
    store = Store()
    label = "interrupted digits sweep"
    run_id = store.new_run(label, {"selection": dataclasses.asdict(selection),
                                   "configs": [c.to_dict() for c in configs]})
    sweep(real, configs[:2], store=store, run_id=run_id)  # then the server died: no job, 2 of 4 stored
    before = {r["config_hash"]: r["created_at"] for r in store.records(run_id=run_id)}

    at = make_app("sweep", sweep_run=run_id)
    no_exception(at)
    assert any("interrupted at 2 / 4 configs" in w.value for w in at.warning)
    at.button(key="sweep_resume").click().run()
    no_exception(at)
    job = jobs.job_manager().get(run_id)
    assert job is not None and job.id == run_id and job.join(120)
    at.run()
    no_exception(at)
    assert not any("interrupted" in w.value for w in at.warning)
    assert [r["label"] for r in store.runs()].count(label) == 1  # one run, not a second with the same label
    assert store.count(run_id=run_id) == 4
    after = {r["config_hash"]: r["created_at"] for r in store.records(run_id=run_id)}
    assert {h: after[h] for h in before} == before  # the stored configs were not recomputed
    assert sum(len(t["x"]) for t in traces(at, "sweep_pareto", "configs")) == 4
