"""The Task picker and the pages that follow the record's metric: MiniLM (fidelity, cosine), a tiny GPT-2 from a
shared folder (lm, perplexity), a classifier (classify or fidelity) and a URL naming a task that does not apply."""
import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.models import load_model
from compression_core.pareto import pareto_front, staircase
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep
from dashboard import frame
from dashboard.server_paths import DATA_ROOTS_ENV
from tests.core.hf_models import save_gpt2
from tests.dashboard import test_sweep as sweep_page
from tests.dashboard.conftest import APP, TIMEOUT, decode_figure

FP32 = {"explore_bits": "32", "explore_sparsity": "0"}  # Explore on the uncompressed model (not its default view)


def _summary(at) -> str:
    (line,) = [c.value for c in at.sidebar.caption if "one evaluation pass" in c.value]
    return line


def _points_axis(points_chart, at) -> str:
    """The y axis title of Explore's points chart."""
    _, spec = points_chart(at)
    (title,) = {layer["encoding"]["y"]["title"] for layer in spec["layer"] if "title" in layer["encoding"]["y"]}
    return title


@pytest.fixture(scope="module")
def minilm():
    """Explore on all-minilm-l6-v2 / sentences, 200 sentences (one app for the module: MiniLM loads slowly)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params = {"model": "all-minilm-l6-v2", "dataset": "sentences", "limit": "200", **FP32}
    at.run()
    return at


def test_minilm_offers_fidelity_only_and_says_what_the_reference_is(minilm, no_exception):
    no_exception(minilm)
    assert minilm.selectbox(key="task").options == ["fidelity"]
    summary = _summary(minilm)
    assert summary.startswith("fidelity (cosine similarity to fp32): reference = the fp32 model itself, on 200 "
                              "samples from the shipped sentences set "), summary
    assert "1.0" not in summary


def test_minilm_tiles_and_chart_follow_cosine(minilm, no_exception, metric_value, points_chart):
    assert metric_value(minilm, "Cosine similarity to fp32") == "1.0000"  # fp32 against itself
    assert metric_value(minilm, "Recall@10") == "100.0 %"
    assert "Accuracy" not in [m.label for m in minilm.metric]
    assert _points_axis(points_chart, minilm) == "Cosine similarity to fp32"
    minilm.select_slider(key="explore_bits").set_value(4).run()
    no_exception(minilm)
    tile = next(m for m in minilm.metric if m.label == "Cosine similarity to fp32")
    assert 0.5 < float(tile.value) < 1.0 and tile.delta.startswith("-") and tile.delta.endswith(" vs fp32")
    assert any(c.value == "n = 200" for c in minilm.caption)
    assert _points_axis(points_chart, minilm) == "Cosine similarity to fp32"
    data, _ = points_chart(minilm)
    cosines = sorted(data[data["kind"] == "explored"]["y"])
    assert cosines[-1] == pytest.approx(1.0, abs=1e-6) and cosines[0] == pytest.approx(float(tile.value), abs=1e-4)


def test_a_classifier_offers_classify_and_fidelity(make_app, no_exception, metric_value, points_chart):
    at = make_app(model="lenet5", dataset="mnist", limit="200", **FP32)
    no_exception(at)
    task = at.selectbox(key="task")
    assert task.options == ["classify", "fidelity"]
    assert task.value == "classify"
    assert _summary(at).startswith("fp32 accuracy: **")
    task.set_value("fidelity").run()
    no_exception(at)
    assert at.session_state["selection"]["task"] == "fidelity"
    assert metric_value(at, "Cosine similarity to fp32") == "1.0000"
    assert metric_value(at, "Agreement") == "100.0 %" and metric_value(at, "KL vs fp32 (nats)") == "0.0000"
    assert _points_axis(points_chart, at) == "Cosine similarity to fp32"
    assert _summary(at).startswith("fidelity (cosine similarity to fp32): reference = the fp32 model itself, on 200")


def test_a_task_that_does_not_apply_in_the_url_falls_back_to_the_default(make_app, no_exception, metric_value):
    at = make_app(model="lenet5", dataset="mnist", limit="200", task="lm")
    no_exception(at)
    assert at.selectbox(key="task").value == "classify"
    assert at.session_state["selection"]["task"] is None
    assert _summary(at).startswith("fp32 accuracy: **") and "Accuracy" in [m.label for m in at.metric]


def test_a_gpt2_from_a_shared_folder_is_scored_by_perplexity(make_app, no_exception, metric_value, points_chart,
                                                               tmp_path, monkeypatch):
    save_gpt2(tmp_path / "gpt2")
    monkeypatch.setenv(DATA_ROOTS_ENV, str(tmp_path))
    at = make_app(model=frame.model_label(frame.CUSTOM), dataset="sentences", limit="100", **FP32)
    at.text_input(key="factory").input(f"hf:{tmp_path}/gpt2").run()
    at.button(key="load_model").click().run()
    no_exception(at)
    task = at.selectbox(key="task")
    assert task.options == ["fidelity", "lm"]
    assert task.value == "lm"
    summary = _summary(at)
    found = re.match(r"fp32 perplexity: \*\*([\d,.]+)\*\* on 100 samples \(([\d,]+) tokens\) from the shipped "
                     r"sentences set \\\(\d+ tokens in \d+ windows of 64, stride 32\\\) · ", summary)
    assert found, summary
    ppl = metric_value(at, "Perplexity")
    assert ppl == found[1]  # Explore opened on the fp32 config: the tile is the summary's number
    assert 1.0 < float(ppl.replace(",", "")) < 10 * 51  # a random 51-token model: near its vocabulary size
    assert any(c.value == f"n = 100 · {found[2]} tokens" for c in at.caption)
    assert _points_axis(points_chart, at) == "Perplexity"


def test_layers_sensitivity_follows_the_task_metric(make_app, no_exception, figures):
    at = make_app("layers", task="fidelity")
    at.multiselect(key="layers_bits").set_value([2, 8])
    at.multiselect(key="layers_sparsity").set_value([])
    at.button[0].click().run()
    no_exception(at)
    heat = figures(at)[0]
    (cells,) = heat["data"]
    assert cells["colorbar"]["title"]["text"] == "Cosine similarity to fp32 drop vs fp32"
    assert heat["layout"]["title"]["text"] == "Cosine similarity to fp32 drop vs fp32 when only this layer is compressed"
    int2 = next(i for i, x in enumerate(cells["x"]) if x.startswith("int2"))
    lost = [row[int2] for row in cells["z"]]
    assert all(0 < v < 1 for v in lost)  # cosine lost: a fraction of 1, never a percentage


def test_runs_never_put_two_metrics_on_one_axis(make_app, no_exception):
    store = Store()
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    grid = expand_grid(bits=[2, 8], sparsity=[0.0, 0.5])
    for task in ("classify", "fidelity", "fidelity"):
        run = store.new_run(f"{task} run", {"model": "digits-cnn"})
        sweep(Experiment(loaded, data, limit=None, device="cpu", task=task), grid, store=store, run_id=run)
    at = make_app("runs")
    no_exception(at)
    metric = at.selectbox(key="runs_metric")
    assert metric.options[:2] == ["Accuracy", "Cosine similarity to fp32"]
    metric.set_value("cosine").run()
    no_exception(at)
    assert any("only those measured by cosine similarity to fp32" in c.value for c in at.caption)
    (chart,) = [c for c in at.get("plotly_chart") if c.key == "runs_overlay"]
    fig = decode_figure(json.loads(chart.proto.spec))
    assert fig["layout"]["yaxis"]["title"]["text"] == "Cosine similarity to fp32"
    ys = [y for t in fig["data"] if t["meta"]["role"] == "overlay-points" for y in t["y"]]
    assert len(ys) == 8 and all(0 < y <= 1 for y in ys)  # two fidelity runs of 4 configs, no accuracy among them


def test_a_fidelity_sweep_draws_cosine_fronts_heatmap_and_table(make_app, no_exception):
    at = make_app("sweep", task="fidelity")
    sweep_page.finish(sweep_page.launch(at, bits=[2, 8], span=(0.0, 0.5)))
    no_exception(at)
    records = Store().records(run_id=at.session_state["sweep_run"])
    assert len(records) == 4 and {r["metric"] for r in records} == {"cosine"}
    pareto = sweep_page.spec(at, "sweep_pareto")
    assert pareto["layout"]["yaxis"]["title"]["text"] == "Cosine similarity to fp32"
    (front,) = sweep_page.traces(at, "sweep_pareto", "front")
    _, ys = staircase(pareto_front(records, y="cosine"), y="cosine")
    assert front["y"] == pytest.approx(ys)
    (reference,) = sweep_page.traces(at, "sweep_pareto", "reference")
    assert reference["y"] == pytest.approx([1.0, 1.0], abs=1e-6)  # the fp32 model against itself
    (heat,) = sweep_page.spec(at, "sweep_heatmap")["data"]
    best = max(r["cosine"] for r in records if r["bits"] == 8 and r["sparsity"] == 0.0)
    assert heat["colorbar"]["title"]["text"] == "Cosine similarity to fp32"
    assert heat["z"][heat["y"].index("8-bit")][heat["x"].index("0 %")] == pytest.approx(best)
    (table,) = [d.value for d in at.dataframe if "compression_ratio" in d.value.columns]
    assert {"cosine", "rel_l2", "agreement", "kl"} <= set(table.columns) and "accuracy" not in table.columns
