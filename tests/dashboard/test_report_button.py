"""The "Download report (HTML)" buttons (AppTest on the real app): on Runs for the chosen run and config, on Sweep
for the run shown; the file is the report of the stored records, built when the button is clicked."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager

from compression_core.store import Store
from dashboard.report import choose
from dashboard.report_panel import LABEL
from dashboard.selection import Selection
from tests.report_run import LIMIT, sweep_run


@pytest.fixture(scope="module")
def run_id():
    """A run of digits-cnn in the dashboard's store, with the selection the Sweep page re-attaches to."""
    selection = Selection(model="digits-cnn", dataset="digits", device="cpu", limit=LIMIT)
    return sweep_run(Store(), "report run", meta={"selection": dataclasses.asdict(selection)})


@pytest.fixture
def deferred(monkeypatch):
    """file id -> (the callable a download button registered, its file name); Streamlit calls the callable when the
    button is clicked."""
    made = {}
    add = MediaFileManager.add_deferred

    def keep(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        file_id = add(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)
        made[file_id] = (data_callable, file_name, mimetype)
        return file_id
    monkeypatch.setattr(MediaFileManager, "add_deferred", keep)
    return made


def report_button(at, key: str):
    (button,) = [b for b in at.get("download_button") if b.proto.id.endswith(key)]
    return button.proto


def chosen_value(html: str, field: str):
    return json.loads(re.search(rf'data-field="{field}" data-value="([^"]+)"', html).group(1).replace("&quot;", '"'))


def test_runs_page_offers_the_report_of_the_chosen_run(run_id, make_app, no_exception, deferred):
    at = make_app("runs")
    no_exception(at)
    assert any("Choose a run in the Run filter above" in c.value for c in at.caption)
    at.selectbox(key="runs_run").set_value(run_id).run()
    no_exception(at)
    button = report_button(at, "runs_report")
    make, file_name, mime = deferred[button.deferred_file_id]
    assert button.label == LABEL and file_name == f"report-{run_id}.html" and mime == "text/html"
    records = Store().records(run_id=run_id)
    html = make()
    assert html.startswith("<!DOCTYPE html>") and "report run" in html
    assert chosen_value(html, "size_bytes") == choose(records)["size_bytes"]
    assert any(f"report --run {run_id} --out report.html" in c.value for c in at.caption)

    other = max(records, key=lambda r: r["size_bytes"])
    at.selectbox(key=f"runs_report_pick_{run_id}").set_value(other["config_hash"]).run()
    no_exception(at)
    html = deferred[report_button(at, "runs_report").deferred_file_id][0]()
    assert chosen_value(html, "size_bytes") == other["size_bytes"]
    assert chosen_value(html, "metric_value") == other["metric_value"]


def test_sweep_page_offers_the_report_of_the_run_shown(run_id, make_app, no_exception, deferred):
    at = make_app("sweep", sweep_run=run_id)
    no_exception(at)
    button = report_button(at, "sweep_report")
    make, file_name, _ = deferred[button.deferred_file_id]
    assert button.label == LABEL and file_name == f"report-{run_id}.html"
    html = make()
    records = Store().records(run_id=run_id)
    assert chosen_value(html, "size_bytes") == choose(records)["size_bytes"]
    assert html.count("Plotly.newPlot") == 2


def test_sweep_report_recommends_the_inspected_point(run_id, make_app, no_exception, deferred):
    from tests.dashboard.test_sweep import select_points  # the browser's selection event on the Pareto plot

    at = make_app("sweep", sweep_run=run_id)
    at, (picked,) = select_points(at, [(0, 0)])
    no_exception(at)
    record = next(r for r in Store().records(run_id=run_id) if r["config_hash"] == picked)
    html = deferred[report_button(at, "sweep_report").deferred_file_id][0]()
    assert chosen_value(html, "metric_value") == record["metric_value"]
    assert f"config {picked}" in html
