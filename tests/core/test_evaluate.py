"""Evaluation metrics, device choice, MAC counts, and the Experiment record on real digits data."""
import math

import pytest
import torch
from torch import nn

from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.evaluate import DeviceUnavailable, evaluate, layer_macs, select_device, wilson_interval
from compression_core.experiment import Experiment
from compression_core.models import load_model


def test_wilson_interval_known_values():
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.8882, abs=1e-4) and high == pytest.approx(0.9785, abs=1e-4)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(0.0713, abs=1e-4)
    low, high = wilson_interval(1000, 1000)
    assert high == 1.0 and low == pytest.approx(0.99617, abs=1e-4)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else select_device("auto").type)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="not available"):
            select_device("cuda")
    with pytest.raises(DeviceUnavailable, match="auto, cpu, cuda or mps"):
        select_device("tpu")


def test_evaluate_counts_and_agreement():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
    x = torch.tensor([[5., 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [5, 0, 0, 0]])
    y = torch.tensor([0, 1, 1, 0])
    m = evaluate(model, x, y, reference=torch.tensor([0, 1, 2, 1]), batch_size=3)
    assert (m["correct"], m["n_samples"], m["accuracy"]) == (3, 4, 0.75)
    assert m["agreement"] == 0.75 and m["top5"] is None
    assert m["accuracy_ci_low"] < 0.75 < m["accuracy_ci_high"]
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)


def test_layer_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10))
    macs = layer_macs(model, torch.zeros(5, 1, 8, 8))
    assert macs == {"0": 4 * 8 * 8 * 9, "1": 8 * 6 * 6 * 9 * 2, "3": 288 * 10}


@pytest.fixture(scope="module")
def digits_exp():
    return Experiment(load_model("digits-cnn", dataset="digits"), load_dataset("digits"), limit=200, device="cpu")


def test_experiment_record_is_consistent(digits_exp):
    base = digits_exp.baseline
    assert base["accuracy_drop_pts"] == 0 and base["agreement"] == 1.0 and base["n_samples"] == 200
    assert base["size_bytes"] == base["dense_bytes"] and base["compression_ratio"] == pytest.approx(1.0)
    rec = digits_exp.run(CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.5)))
    assert rec["accuracy_drop_pts"] == pytest.approx(100 * (base["accuracy"] - rec["accuracy"]))
    assert rec["correct"] == round(rec["accuracy"] * 200)
    assert rec["nnz"] == sum(l["nnz"] for l in rec["layers"])
    weights = {f"{n}.weight" for n in digits_exp.layer_names}
    other_bits = sum(32 * t.numel() for k, t in digits_exp.model.state_dict().items()
                     if k not in weights and t.is_floating_point())
    assert rec["size_bytes"] == math.ceil((sum(l["size_bits"] for l in rec["layers"]) + other_bits) / 8)
    assert rec["sparse_macs"] < rec["macs"]
    assert rec["bitops"] == sum(l["macs"] * l["bits"] * 32 for l in rec["layers"])


def test_experiment_never_mutates_the_loaded_model(digits_exp):
    before = {k: v.clone() for k, v in digits_exp.loaded.model.state_dict().items()}
    digits_exp.run(CompressionConfig(quant=QuantSpec(bits=2), prune=PruneSpec(0.9, method="taylor"),
                                     finetune_steps=2, bias_correction=True, act_bits=4,
                                     overrides=(LayerOverride(digits_exp.layer_names[0], skip=True),)))
    after = digits_exp.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_limit_is_a_fixed_stratified_subset():
    data, loaded = load_dataset("digits"), load_model("digits-cnn", dataset="digits")
    a = Experiment(loaded, data, limit=100, device="cpu")
    b = Experiment(loaded, data, limit=100, device="cpu")
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    assert torch.bincount(a.y, minlength=10).min() >= 9
    whole = Experiment(loaded, data, limit=10_000, device="cpu")
    assert whole.limit is None and len(whole.y) == data.info.splits["test"]


def test_stacked_forward_gives_the_same_records(digits_exp):
    """The GPU path (K configs per vmap-ed forward) checked on the CPU: same predictions, same sizes."""
    configs = [CompressionConfig(quant=QuantSpec(bits=b), prune=PruneSpec(s)) for b in (3, 8) for s in (0.0, 0.7)]
    configs.append(CompressionConfig(quant=QuantSpec(bits=8), act_bits=4))  # hooks: runs alone
    one_by_one = [digits_exp.run(c) for c in configs]
    stacked = list(digits_exp.run_many(configs, group=5))
    assert [r["config_hash"] for r in stacked] == [c.config_hash for c in configs]
    assert [r["eval_group"] for r in stacked] == [4, 4, 4, 4, 1]
    for a, b in zip(one_by_one, stacked):
        assert (a["correct"], a["size_bytes"], a["nnz"]) == (b["correct"], b["size_bytes"], b["nnz"])
        assert a["agreement"] == b["agreement"]


def test_finetuning_recovers_accuracy_lost_to_pruning(digits_exp):
    pruned = CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.8))
    tuned = CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.8), finetune_steps=150)
    before, after = digits_exp.run(pruned), digits_exp.run(tuned)
    assert after["accuracy"] >= before["accuracy"] + 0.10  # measured here: 0.645 -> 0.855
    assert after["realized_sparsity"] == before["realized_sparsity"]
    assert after["finetune_final_loss"] is not None
