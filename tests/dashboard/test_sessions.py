"""Two browser sessions in one server process: separate settings and history, one shared, untouched model."""
import torch

from compression_core.models import load_model
from dashboard import services
from dashboard.selection import Selection


def test_two_sessions_do_not_see_each_other_and_the_cached_model_stays_pristine(make_app, no_exception,
                                                                                 metric_value):
    fp32 = {"explore_bits": "32", "explore_sparsity": "0"}  # not Explore's default view
    alice, bob = make_app(**fp32), make_app(**fp32)
    alice.slider(key="explore_sparsity").set_value(0.9).run()
    alice.select_slider(key="explore_bits").set_value(2).run()
    bob.select_slider(key="explore_bits").set_value(8).run()
    for at in (alice, bob):
        no_exception(at)

    assert alice.slider(key="explore_sparsity").value == 0.9 and bob.slider(key="explore_sparsity").value == 0.0
    assert metric_value(alice, "Sparsity") == "90.0 %" and metric_value(bob, "Sparsity") == "0.0 %"
    (alice_points,) = alice.session_state["explore_history"].values()
    (bob_points,) = bob.session_state["explore_history"].values()
    assert [(p["bits"], p["sparsity"]) for p in alice_points] == [(32, 0.0), (32, 0.9), (2, 0.9)]
    assert [(p["bits"], p["sparsity"]) for p in bob_points] == [(32, 0.0), (8, 0.0)]

    # the Experiment both sessions used is one cached object; its model still has the shipped weights
    shared = services.get_experiment(Selection(**alice.session_state["selection"]))
    assert shared is services.get_experiment(Selection(**bob.session_state["selection"]))
    shipped = load_model("digits-cnn", dataset="digits").model.state_dict()
    assert all(torch.equal(shipped[k], v.contiguous()) for k, v in shared.model.state_dict().items())
    assert all(torch.equal(shipped[k], v) for k, v in shared.loaded.model.state_dict().items())
