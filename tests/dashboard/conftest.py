"""Fixtures for the dashboard's AppTests: the real entry point, fast defaults (digits-cnn on digits), a private store.

`make_app(page=None, **query)` runs `dashboard/app.py` in Streamlit's AppTest with the URL query string set
(by default `model=digits-cnn&dataset=digits`), optionally switches to `views/<page>.py`, and returns the AppTest.
`figures(at)`, `points_chart(at)`, `no_exception(at)` and `metric_value(at, label)` are small helpers shared by the
page tests.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from compression_core.store import ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
FAST_QUERY = {"model": "digits-cnn", "dataset": "digits"}
TIMEOUT = 120  # seconds per script run: the first run loads a model and a dataset on a shared 2-core machine


@pytest.fixture(autouse=True, scope="session")
def _private_store(tmp_path_factory):
    """Keep the dashboard's result store out of the user's cache dir."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(tmp_path_factory.mktemp("store") / "runs.sqlite")
    yield
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """AppTest reads .streamlit/config.toml from the working directory (serializable session state is on)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def make_app():
    def make(page: str | None = None, **query: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params = {**FAST_QUERY, **query}
        at.run()
        if page is not None:
            at.switch_page(f"views/{page}.py").run()
        return at

    return make


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metric_value(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics are {[m.label for m in at.metric]}"
    return values[0]


def decode_figure(node):
    """Plotly's JSON with typed arrays ({"dtype", "bdata", "shape"}) decoded to plain nested lists."""
    if isinstance(node, dict) and "bdata" in node and "dtype" in node:
        array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=np.dtype(node["dtype"]))
        if "shape" in node:
            array = array.reshape([int(n) for n in str(node["shape"]).split(",")])
        return array.tolist()
    if isinstance(node, dict):
        return {k: decode_figure(v) for k, v in node.items()}
    if isinstance(node, list):
        return [decode_figure(v) for v in node]
    return node


def _figures(at: AppTest) -> list[dict]:
    return [decode_figure(json.loads(chart.proto.spec)) for chart in at.get("plotly_chart")]


@pytest.fixture
def figures():
    """`figures(at)`: every st.plotly_chart of the last run as a plain dict (data arrays as lists; NaN stays NaN)."""
    return _figures


def _points_chart(at: AppTest) -> tuple[pd.DataFrame, dict]:
    """Explore's explored-points chart (the page's one Vega-Lite chart): its data and spec."""
    (chart,) = at.get("vega_lite_chart")
    return pa.ipc.open_stream(chart.proto.data.data).read_pandas(), json.loads(chart.proto.spec)


@pytest.fixture
def points_chart():
    """`points_chart(at)`: (data, spec) of Explore's explored-points chart (`charts.explore.explored_points`)."""
    return _points_chart


@pytest.fixture
def no_exception():
    """`no_exception(at)`: fail with the app's own error messages when a run raised."""
    return _no_exception


@pytest.fixture
def metric_value():
    """`metric_value(at, label)`: the shown value of the st.metric with this label."""
    return _metric_value
