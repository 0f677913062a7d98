"""The stakeholder report (dashboard.report): its fields are the stored record's numbers, its charts are the run's
front and the chosen config's layers, it needs nothing from the network, and every user string is escaped."""
from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compression_core._version import __version__
from compression_core.cli_reproduce import reproduce_command
from compression_core.config import CompressionConfig
from compression_core.pareto import CLOSE_TO_FP32_PTS, pareto_front, recommended
from compression_core.store import Store
from dashboard.charts.layers import SIZE_PARTS
from dashboard.report import ReportError, build_report, choose, load_run
from dashboard.report_html import CHART_WIDTH
from tests.dashboard.conftest import decode_figure
from tests.report_run import sweep_run

ROOT = Path(__file__).resolve().parents[2]
WHEN = datetime.datetime(2026, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
HOSTILE = "<img src=x onerror=alert(1)>\"'&</script><script>alert(2)</script>"


class Page(HTMLParser):
    """What a browser would see: tags, data-field values, text, and the JSON of each chart."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fields: dict[str, list] = {}
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._script = self._row = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "data-field" in a:
            self.fields.setdefault(a["data-field"], []).append(json.loads(a["data-value"]))
        if tag == "script":
            self._script = []
        if tag == "tr":
            self._row = (a.get("class") or "", [])
            self.rows.append(self._row)

    def handle_endtag(self, tag):
        if tag == "script":
            self.scripts.append("".join(self._script))
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)
        else:
            self.text.append(data)
            if self._row is not None and data.strip():
                self._row[1].append(data)

    def charts(self) -> dict[str, dict]:
        """chart id -> its Plotly figure (typed arrays decoded)."""
        out = {}
        for s in self.scripts:
            m = re.search(r'var f = (\{.*\}); Plotly\.newPlot\("([^"]+)"', s, re.S)
            if m:
                out[m.group(2)] = decode_figure(json.loads(m.group(1)))
        return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(store, run id, run, records) of the 8-config digits-cnn sweep."""
    store = Store(tmp_path_factory.mktemp("report") / "runs.sqlite")
    run_id = sweep_run(store, "int2-8 x 0-50 %")
    run, records = load_run(store, run_id)
    return store, run_id, run, records


def test_fields_are_the_chosen_records_numbers(run):
    _, _, meta, records = run
    chosen = choose(records)
    page = Page(build_report(records, chosen, run=meta, generated_at=WHEN))
    for field in ("model", "fingerprint", "dataset", "split", "n_samples", "task", "metric_value", "size_bytes",
                  "compression_ratio", "bits_per_weight", "realized_sparsity", "accuracy_ci_low", "nnz", "bitops",
                  "dense_bytes", "baseline_metric_value", "accuracy_drop_pts"):
        assert set(page.fields[field]) == {chosen[field]}, field  # exact, as stored
    text = " ".join(page.text)
    assert f"{100 * chosen['accuracy']:.2f} % (95 % CI {100 * chosen['accuracy_ci_low']:.1f}–" \
           f"{100 * chosen['accuracy_ci_high']:.1f} %)" in text
    assert f"{chosen['size_bytes']:,} bytes" in text and f"{chosen['compression_ratio']:.2f}×" in text
    assert f"compression-explorer {__version__}" in text and "2026-03-04 05:06 UTC" in text
    assert chosen["label"] in text and meta["label"] in text and meta["run_id"] in text
    assert reproduce_command(chosen) in text  # the command, checked by the CLI's own parser
    assert "--bits" in reproduce_command(chosen) or chosen["bits"] == 32


def test_the_recommended_config_is_the_smallest_close_to_fp32(run):
    _, _, meta, records = run
    chosen = choose(records)
    front = pareto_front(records)
    assert chosen is recommended(records) and chosen in front
    assert chosen["accuracy_drop_pts"] <= CLOSE_TO_FP32_PTS
    assert all(r["accuracy_drop_pts"] > CLOSE_TO_FP32_PTS for r in front if r["size_bytes"] < chosen["size_bytes"])
    page = Page(build_report(records, chosen, run=meta))
    assert "Chosen by the rule: the smallest config on the Pareto front" in " ".join(page.text)
    front_rows = [cells for cls, cells in page.rows if cells and cells[0] in {r["label"] for r in front}]
    assert len(front_rows) >= len(front) and [cls for cls, cells in page.rows if cls == "chosen"] == ["chosen"]


def test_a_config_chosen_by_hash_and_one_not_in_the_run(run):
    _, _, meta, records = run
    worst = min(records, key=lambda r: r["accuracy"])
    assert choose(records, worst["config_hash"]) is worst
    page = Page(build_report(records, worst, run=meta))
    assert set(page.fields["metric_value"]) == {worst["accuracy"]}
    assert "Chosen by hand; the rule" in " ".join(page.text)
    with pytest.raises(ReportError, match="not a config of this run"):
        choose(records, "0123456789abcdef")


def test_charts_draw_the_runs_front_and_the_chosen_configs_layers(run):
    _, _, meta, records = run
    chosen = choose(records)
    charts = Page(build_report(records, chosen, run=meta)).charts()
    assert set(charts) == {"chart-pareto", "chart-layers"}
    pareto = {t["meta"]["role"]: t for t in charts["chart-pareto"]["data"]}
    configs = [t for t in charts["chart-pareto"]["data"] if t["meta"]["role"] == "configs"]
    assert sum(len(t["x"]) for t in configs) == len(records) == 8
    assert pareto["chosen"]["x"] == pytest.approx([chosen["size_bytes"] / 1024])
    assert pareto["chosen"]["y"] == pytest.approx([100 * chosen["accuracy"]])
    front = pareto_front(records)
    assert pareto["front"]["x"][::2] == pytest.approx([r["size_bytes"] / 1024 for r in front])
    parts = charts["chart-layers"]["data"]  # the stacked size parts of each layer: values, index, scales, ...
    assert {t["meta"]["role"] for t in parts} == {"size-part"} and parts[0]["meta"]["part"] == "value_bits"
    assert all(t["y"] == [l["name"] for l in chosen["layers"]] for t in parts)
    stacked = [sum(t["x"][i] for t in parts) for i in range(len(chosen["layers"]))]
    assert stacked == pytest.approx([l["size_bits"] / 8 / 1024 for l in chosen["layers"]])
    assert {c["layout"]["width"] for c in charts.values()} == {CHART_WIDTH}
    assert charts["chart-pareto"]["layout"]["template"]["layout"]["paper_bgcolor"] == "white"


def test_the_file_is_self_contained(run):
    _, _, meta, records = run
    text = build_report(records, choose(records), run=meta)
    page = Page(text)
    assert page.tags.count("script") == 3  # plotly.js once, then one per chart
    assert text.count("Plotly.newPlot") == 2 and len(page.scripts[0]) > 3_000_000  # the library itself
    assert not {"link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert not re.search(r"""\s(src|href)\s*=""", text.replace(page.scripts[0], ""))
    assert "default-src 'none'" in text  # the CSP: the page may not fetch anything


def test_every_user_string_is_escaped(run):
    _, _, meta, records = run
    hostile = [{**r, "model": HOSTILE, "label": r["label"] + HOSTILE,
                "layers": [{**l, "name": l["name"] + HOSTILE} for l in r["layers"]]} for r in records]
    chosen = choose(hostile)
    text = build_report(hostile, chosen, run={**meta, "label": HOSTILE})
    page = Page(text)
    assert HOSTILE not in text and "<img" not in text and "alert(2)</script>" not in text
    assert "img" not in page.tags and page.tags.count("script") == 3
    shown = " ".join(page.text)
    assert f"Compression report: {HOSTILE}" in shown and chosen["label"] in shown  # shown as text, literally
    assert "'<img src=x onerror=alert(1)>" in shown  # the reproduce command, shell-quoted
    assert page.charts()["chart-layers"]["data"][0]["y"][0].endswith("&lt;img src=x onerror=alert(1)&gt;"
                                                                        "&quot;&#x27;&amp;&lt;/script&gt;"
                                                                        "&lt;script&gt;alert(2)&lt;/script&gt;")


def test_fidelity_reports_the_tasks_metric(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    run_id = sweep_run(store, "fidelity", task="fidelity", limit=100, bits=[2, 8])
    meta, records = load_run(store, run_id)
    chosen = choose(records)
    page = Page(build_report(records, chosen, run=meta))
    text = " ".join(page.text)
    assert chosen["metric"] == "cosine" and set(page.fields["metric_value"]) == {chosen["cosine"]}
    assert "95 % CI" not in text and "cosine similarity to fp32 is worse than the fp32 model's by at most 1 %" in text
    assert "task" in page.fields and page.fields["task"] == ["fidelity"]


def test_records_of_two_evaluation_sets_and_missing_runs_are_refused(run, tmp_path):
    store, run_id, meta, records = run
    other = [{**records[0], "limit": 10}]
    with pytest.raises(ReportError, match="2 evaluation sets"):
        build_report(records + other, records[0], run=meta)
    with pytest.raises(ReportError, match="not one of the report's records"):
        build_report(records, dict(records[0]), run=meta)
    before_tasks = [{k: v for k, v in r.items() if k not in ("metric", "metric_value")} for r in records]
    with pytest.raises(ReportError, match="has no metric, metric_value; sweep the run again"):
        build_report(before_tasks, before_tasks[0], run=meta)
    with pytest.raises(ReportError, match=f"its newest runs: {run_id}"):
        load_run(store, "nope")
    empty = store.new_run("empty")
    with pytest.raises(ReportError, match="has no records yet"):
        load_run(store, empty)


def test_a_config_the_flags_cannot_express_shows_its_json(run):
    _, _, meta, records = run
    override = {"name": "fc1", "quant": {"bits": 4, "range": "percentile", "percentile": 99.0}, "prune": None,
                "skip": False}
    configs = [CompressionConfig.from_dict({**r["config"], "overrides": [override]}) for r in records]
    odd = [{**r, "config": c.to_dict(), "config_hash": c.config_hash} for r, c in zip(records, configs)]
    text = " ".join(Page(build_report(odd, odd[0], run=meta)).text)
    assert "per-layer settings the command line cannot express" in text and '"percentile": 99.0' in text


def test_a_record_without_layers_says_so(run):
    _, _, meta, records = run
    bare = [{k: v for k, v in r.items() if k != "layers"} for r in records]
    page = Page(build_report(bare, choose(bare), run=meta))
    assert "The store holds no per-layer rows for this record." in " ".join(page.text)
    assert set(page.charts()) == {"chart-pareto"}


def test_the_report_module_imports_no_streamlit():
    code = "import sys, dashboard.report; print('streamlit' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


def test_a_record_stored_before_the_size_parts_gets_the_totals_bar(run):
    _, _, meta, records = run
    chosen = choose(records)
    old = {**chosen, "layers": [{k: v for k, v in l.items() if k not in SIZE_PARTS} for l in chosen["layers"]]}
    records = [old if r is chosen else r for r in records]
    bars = Page(build_report(records, old, run=meta)).charts()["chart-layers"]["data"]
    assert [t["meta"]["role"] for t in bars] == ["layer-size"]
    assert bars[0]["x"] == pytest.approx([l["size_bits"] / 8 / 1024 for l in chosen["layers"]])
