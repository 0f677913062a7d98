"""Lessons: every link opens Explore with its settings; the shipped precomputed records are served only when they
match, equal a fresh engine run, and seed the first view's front."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import urllib.parse

import pytest

from compression_core import __version__
from compression_core.config import CompressionConfig, QuantSpec
from compression_core.models import load_model
from compression_core.record import differing_fields
from dashboard import explore_state, lessons, precomputed, services
from dashboard.charts import explore as explore_charts
from dashboard.selection import Selection

import pandas as pd

ROOT = precomputed.DIR.parents[1]
SHIPPED = precomputed.DIR / precomputed.file_name(
    {"model": "lenet5", "dataset": "mnist", "limit": 1000, "task": "classify", "device": "cpu"})
LESSON_QUERY = {"model": "lenet5", "dataset": "mnist"}  # make_app's defaults are digits-cnn: the lessons set theirs


def _script():
    spec = importlib.util.spec_from_file_location("make_precomputed", ROOT / "scripts" / "make_precomputed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shipped() -> list[dict]:
    return precomputed.unpack(json.loads(SHIPPED.read_text()))


# ---- the lessons open their page with their settings -------------------------------------------------------
@pytest.mark.parametrize("lesson", lessons.LESSONS, ids=lambda l: l.slug)
def test_each_lesson_link_opens_explore_with_its_settings(make_app, no_exception, lesson):
    at = make_app(**lesson.params)
    no_exception(at)
    view = lesson.view
    # the controls built exactly the lesson's config (without the retraining, which needs the Retrain button) and
    # show what is in force (a setting that does not apply shows the canonical value, disabled)
    untrained = dataclasses.replace(view, ft_epochs=0).config()
    shown = explore_state.widget_states(untrained, {"explore_quantizer": view.quantizer, "explore_prune": view.prune})
    assert at.select_slider(key="explore_bits").value == view.bits == shown["explore_bits"].value
    assert at.slider(key="explore_sparsity").value == pytest.approx(view.sparsity)
    for name in ("quantizer", "scheme", "granularity", "range", "prune", "scope"):
        assert at.selectbox(key=f"explore_{name}").value == shown[f"explore_{name}"].value, name
    assert at.number_input(key="explore_ft_epochs").value == view.ft_epochs
    if view.ft_epochs:
        assert at.select_slider(key="explore_ft_lr").value == pytest.approx(view.ft_lr)
    (points,) = at.session_state["explore_history"].values()
    assert points[0]["config_hash"] == untrained.config_hash


def test_the_gallery_links_carry_each_lessons_url(make_app, no_exception):
    at = make_app("lessons", **LESSON_QUERY)
    no_exception(at)
    links = at.get("page_link")
    assert [l.proto.label for l in links] == ["Open in Explore"] * len(lessons.LESSONS)
    for link, lesson in zip(links, lessons.LESSONS):
        assert urllib.parse.parse_qs(link.proto.query_string) == {k: [v] for k, v in lesson.params.items()}
    assert [s.value for s in at.subheader] == [l.title for l in lessons.LESSONS]
    tables = [t.value for t in at.dataframe]  # the precomputed numbers of every lesson's views
    assert [len(t) for t in tables] == [len(l.views) for l in lessons.LESSONS]
    by_label = {r["label"]: r for r in _shipped()}
    for table in tables:
        for row in table.itertuples():
            assert row[2] == pytest.approx(100 * by_label[row[1]]["accuracy"])


def test_the_learn_page_points_to_the_lessons_and_hides_the_sidebar_settings(make_app, no_exception):
    at = make_app("learn")
    no_exception(at)
    assert at.get("page_link")[0].proto.label.startswith("Ready-made lessons")
    assert any("stSidebarUserContent" in h.proto.body and "display: none" in h.proto.body for h in at.get("html"))
    at.switch_page("views/explore.py").run()  # the sidebar's choice survives the visit
    assert at.selectbox(key="model").value == "digits-cnn"


# ---- shipped precomputed records ---------------------------------------------------------------------------
def test_the_shipped_file_holds_every_lesson_config_and_is_small():
    records = _shipped()
    assert {r["config_hash"] for r in records} == {c.config_hash for c in lessons.shipped_configs()}
    assert {r["engine_version"] for r in records} == {__version__}, "engine changed: run scripts/make_precomputed.py"
    assert {r["fingerprint"] for r in records} == {load_model("lenet5", dataset="mnist").fingerprint}
    assert SHIPPED.stat().st_size < 200_000
    for lesson in lessons.LESSONS:
        assert all(r["config_hash"] != lesson.view.config().config_hash or r["layers"] for r in records)


SAMPLE = (0, 9, 27, 33, 47)  # fp32 pruned, int cliff points, per-tensor clipping, k-means


@pytest.fixture(scope="module")
def fresh_records(tmp_path_factory) -> dict[str, dict]:
    """The sampled shipped configs run afresh by scripts/make_precomputed.py (one Experiment), by config hash."""
    configs = [CompressionConfig.from_dict(_shipped()[i]["config"]) for i in SAMPLE]
    assert not any(c.retrains for c in configs)  # the sample stays fast
    out = tmp_path_factory.mktemp("precomputed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lessons, "shipped_configs", lambda: configs)
        assert _script().main(["--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    assert path.name == SHIPPED.name
    return {r["config_hash"]: r for r in precomputed.unpack(json.loads(path.read_text()))}


@pytest.mark.parametrize("index", SAMPLE)
def test_shipped_records_equal_a_fresh_engine_run(fresh_records, index):
    shipped = _shipped()[index]
    fresh = fresh_records[shipped["config_hash"]]
    assert set(fresh) == set(shipped)
    # counts, sizes and accuracy exact (deterministic on cpu); timings and batch means as two processes may differ
    assert differing_fields(shipped, fresh) == []


def _key(record: dict) -> dict:
    return {f: record[f] for f in ("model", "fingerprint", "dataset", "split", "limit", "task", "config_hash")}


@pytest.mark.parametrize("change", [{"fingerprint": "0123456789abcdef"}, {"limit": 500}, {"task": "fidelity"},
                                    {"dataset": "digits"}, {"split": "train"}, {"config_hash": "deadbeefdeadbeef"}])
def test_a_mismatch_is_never_served(change):
    record = _shipped()[5]
    assert precomputed.lookup(_key(record), "cpu")["accuracy"] == record["accuracy"]
    assert precomputed.lookup({**_key(record), **change}, "cpu") is None
    assert precomputed.lookup(_key(record), "cuda") is None


def test_a_stale_engine_or_config_is_never_served(tmp_path, monkeypatch):
    good, other = _shipped()[5], _shipped()[6]
    stale = {**good, "engine_version": "0.0.1"}
    rehashed = {**other, "config": {**other["config"], "quant": {**other["config"]["quant"], "bits": 7}}}
    precomputed.write([stale], tmp_path / "stale")
    precomputed.write([rehashed], tmp_path / "rehashed")
    assert precomputed.lookup(_key(good), "cpu", folder=tmp_path / "stale") is None  # another engine version
    assert precomputed.lookup(_key(other), "cpu", folder=tmp_path / "rehashed") is None  # config hashes otherwise
    monkeypatch.setattr(precomputed, "__version__", "0.0.1")
    assert precomputed.lookup(_key(good), "cpu", folder=tmp_path / "stale")["accuracy"] == good["accuracy"]


def test_evaluate_serves_the_shipped_record_first_and_computes_the_rest():
    selection = lessons.PRECOMPUTED_SELECTION
    config = lessons.lesson("kmeans").view.config()
    record = services.evaluate(selection, config.to_json())
    assert record["precomputed"] is True and record["layers"]
    live = services.evaluate(selection, CompressionConfig(quant=QuantSpec(bits=7)).to_json())
    assert not live.get("precomputed")
    assert services.precomputed(Selection(limit=500), config.to_json()) is None  # another subset: computed


# ---- the first view's seeded front -------------------------------------------------------------------------
def test_seed_points_are_the_shipped_front_for_the_default_selection_only():
    fields = ("config_hash", "label", "bits", "sparsity", "accuracy", "size_bytes", "metric")
    seeds = lessons.seed_points(lessons.PRECOMPUTED_SELECTION, fields)
    assert [p["config_hash"] for p in seeds] == [v.config().config_hash for v in lessons.FRONT]
    assert all(set(p) == {*fields, "precomputed"} and p["precomputed"] is True for p in seeds)
    assert {(p["bits"], p["sparsity"]) for p in seeds} == {(v.bits, v.sparsity) for v in lessons.FRONT}
    assert lessons.seed_points(Selection(model="digits-cnn", dataset="digits")) == []
    assert lessons.seed_points(Selection(limit=500)) == []
    merged = lessons.merged([{**seeds[3], "precomputed": None}], seeds)
    assert len(merged) == len(seeds) and merged[0]["precomputed"] is None  # explored here: drawn as explored


def test_seeded_points_are_labelled_precomputed_in_the_chart():
    seeds = lessons.seed_points(lessons.PRECOMPUTED_SELECTION)
    live = {k: v for k, v in seeds[0].items() if k != "precomputed"}
    data, spec = explore_charts.explored_points(pd.DataFrame([live, *seeds[1:]]), current=live["config_hash"])
    assert list(data["kind"]) == ["explored"] + ["precomputed"] * (len(seeds) - 1)
    assert list(data["current"]) == [True] + [False] * (len(seeds) - 1)
    layers = {layer["name"]: layer for layer in spec["layer"]}
    assert layers["precomputed"]["mark"]["filled"] is False and layers["explored"]["mark"]["filled"] is True
    assert layers["precomputed"]["encoding"]["tooltip"][0]["title"] == "precomputed:"


def test_the_default_view_shows_the_precomputed_front(make_app, no_exception, points_chart):
    at = make_app(**LESSON_QUERY)
    no_exception(at)
    data, _ = points_chart(at)
    # the first view's own config is one of the front's: drawn as the current point, the others as precomputed
    assert explore_state.DEFAULT_CONFIG.config_hash in {v.config().config_hash for v in lessons.FRONT}
    kinds = data["kind"].value_counts()
    assert kinds["precomputed"] == len(lessons.FRONT) - 1 and kinds["explored"] == 1 and kinds["front"] >= 2
    assert list(data[data["current"]]["config_hash"]) == [explore_state.DEFAULT_CONFIG.config_hash]


def test_the_first_views_default_config_is_on_the_shipped_front():
    front = {v.config().config_hash for v in lessons.FRONT}
    assert explore_state.DEFAULT_CONFIG.config_hash in front  # so its headline numbers are shipped, not computed


def test_a_shipped_record_says_so_and_a_live_one_does_not(make_app, no_exception):
    at = make_app(**LESSON_QUERY)  # the first view and its fp32 baseline are both shipped
    no_exception(at)
    assert any("from the shipped precomputed results" in c.value for c in at.caption)
    assert any("one evaluation pass" in c.value and "measured when the shipped results were made" in c.value
               for c in at.sidebar.caption)
    at.slider(key="explore_sparsity").set_value(0.37).run()  # in no lesson and not on the front: computed here
    no_exception(at)
    assert not any("shipped precomputed" in c.value for c in at.caption)
    (points,) = at.session_state["explore_history"].values()
    assert not points[-1].get("precomputed")
