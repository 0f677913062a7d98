"""Explore's Retrain section: a background retraining with progress and Cancel whose result is its own point."""
import time

import numpy as np
from streamlit.testing.v1 import AppTest

from compression_core import finetune
from dashboard import retrain_panel

PRUNED = {"explore_sparsity": "0.9", "explore_bits": "32", "explore_scope": "per layer"}  # fp32, pruned per layer


def _job(at) -> retrain_panel.RetrainJob:
    job = retrain_panel.retrain_jobs().get(at.session_state[retrain_panel.STATE_KEY]["job"])
    assert job is not None
    return job


def test_retraining_adds_a_labelled_point_at_least_as_accurate(make_app, no_exception, points_chart):
    at = make_app(**PRUNED, explore_ft_epochs="1", explore_ft_lr="0.001")
    no_exception(at)
    assert at.number_input(key="explore_ft_epochs").value == 1  # bound to the URL
    assert at.select_slider(key="explore_ft_lr").value == 0.001
    at.button(key="explore_retrain").click().run()
    no_exception(at)
    job = _job(at)
    assert job.join(300), "the retraining did not finish"
    at.run()
    no_exception(at)
    (points,) = at.session_state["explore_history"].values()
    pruned, retrained = points
    assert "retrained" not in pruned["label"]
    assert retrained["label"].endswith("magnitude layer 90% · retrained 1 ep")
    assert retrained["accuracy"] >= pruned["accuracy"]
    assert any("Retrained" in s.value for s in at.success)
    data, _ = points_chart(at)
    assert list(data[data["kind"] == "explored"]["label"]) == [pruned["label"], retrained["label"]]
    at.session_state["explore_history"] = {}  # what "Clear explored points" does (a fragment-only rerun)
    at.run()
    (points,) = at.session_state["explore_history"].values()
    assert [p["label"] for p in points] == [pruned["label"]]  # a cleared retrained point does not come back

    again = make_app(**PRUNED, explore_ft_epochs="1", explore_ft_lr="0.001")  # another session, same config
    again.button(key="explore_retrain").click().run()
    no_exception(again)
    assert _job(again) is job  # joined, not trained twice
    assert again.session_state[retrain_panel.STATE_KEY]["token"] is None  # only the starter may cancel


def test_cancel_stops_the_retraining_in_one_line(make_app, no_exception, monkeypatch):
    real_step = finetune._step

    def slow_step(*args):
        time.sleep(0.05)  # 20 epochs x 12 steps would take over 12 s
        return real_step(*args)

    monkeypatch.setattr(finetune, "_step", slow_step)
    at = make_app(explore_sparsity="0.8", explore_ft_epochs="20")
    at.button(key="explore_retrain").click().run()
    no_exception(at)
    (bar,) = at.get("progress")
    assert "retrained 20 ep" in bar.proto.text
    job = _job(at)
    assert job.status().running
    at.button(key="explore_retrain_cancel").click().run()
    no_exception(at)
    assert job.join(60)
    assert job.status().state == "cancelled" and job.status().record is None
    at.run()
    no_exception(at)
    assert not at.get("progress")
    assert [i.value for i in at.info] == ["Retraining cancelled; the configs evaluated before are kept."]
    (points,) = at.session_state["explore_history"].values()
    assert [p["sparsity"] for p in points] == [0.8]  # the evaluated config stays, no retrained point


def _panel_on(folder: str) -> None:
    # the sidebar lists registry datasets only: build the image folder's Experiment (the shipped digits weights)
    from compression_core.config import CompressionConfig
    from compression_core.datasets import load_dataset
    from compression_core.experiment import Experiment
    from compression_core.models import load_model
    from dashboard import retrain_panel
    from dashboard.selection import Selection

    experiment = Experiment(load_model("digits-cnn", dataset="digits"), load_dataset(f"imagefolder:{folder}"),
                            device="cpu")
    retrain_panel.panel(Selection(model="digits-cnn", dataset=f"imagefolder:{folder}", limit=None),
                        CompressionConfig(), experiment)


def test_a_dataset_without_a_train_split_disables_the_controls(tmp_path, no_exception):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):  # an image folder of class folders only: the test split, no train/
        (tmp_path / str(label)).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 17, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / str(label) / f"{i}.png")
    at = AppTest.from_function(_panel_on, args=(str(tmp_path),), default_timeout=120)
    at.query_params = {"explore_ft_epochs": "3"}
    at.run()
    no_exception(at)
    assert at.number_input(key="explore_ft_epochs").disabled
    assert all(w.disabled for w in at.selectbox) and all(w.disabled for w in at.select_slider)
    assert not [b for b in at.button if b.key == "explore_retrain"]
    (line,) = [c.value for c in at.caption if "train split" in c.value]
    assert line.startswith("Retraining needs a train split")
