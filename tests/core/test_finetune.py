"""Retraining: schedule values, distillation loss, masks kept while accuracy recovers, cancel, cache, gradual."""
import dataclasses
import math
import threading

import pytest
import torch

from compression_core import CompressionConfig, PruneSpec, QuantSpec, compress, load_dataset, load_model
from compression_core.config import ConfigError
from compression_core.datasets import Dataset
from compression_core.evaluate import evaluate
from compression_core.experiment import Experiment, ExperimentError
from compression_core.finetune import RetrainCancelled, distillation_loss, gradual_schedule, lr_factor


def test_gradual_schedule_is_zhu_and_gupta_cubic():
    assert gradual_schedule(0.8, 4, 100) == [(18, 0.4625), (37, 0.7), (56, 0.7875), (75, 0.8)]
    assert gradual_schedule(0.5, 2, 10) == [(3, 0.4375), (7, 0.5)]


def test_learning_rate_schedules():
    assert [lr_factor(s, 100, "constant") for s in (0, 99)] == [1.0, 1.0]
    assert lr_factor(0, 100, "cosine") == 1.0 and lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor(s, 100, "step") for s in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_distillation_loss_by_hand():
    # student logits (1, 0), teacher (0, 1), label 0, T = 2
    got = float(distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 2.0))
    ce = math.log(1 + math.exp(-1))  # -log softmax(1, 0)[0]
    p = [1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))]  # softmax((0, 1) / 2): teacher
    q = [p[1], p[0]]  # softmax((1, 0) / 2): student
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert got == pytest.approx(ce + 4 * kl, rel=1e-6)
    assert got == pytest.approx(0.8031, abs=1e-4)


@pytest.fixture(scope="module")
def digits():
    return load_model("digits-cnn"), load_dataset("digits")


def accuracy(model, data):
    x, y = data.split("test")
    return evaluate(model, x, y)["accuracy"]


def test_retraining_keeps_masks_and_recovers_accuracy(digits):
    loaded, data = digits
    train = data.split("train")
    config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.85))
    once = compress(loaded.model, config)
    retrain = dataclasses.replace(config, finetune_epochs=4, finetune_lr=2e-3, finetune_schedule="cosine")
    cm = compress(loaded.model, retrain, train=train)
    for name, lc in cm.layers.items():
        assert torch.equal(lc.mask, once.layers[name].mask), name  # the same weights stay pruned
        assert (lc.weight[~lc.mask] == 0).all() and lc.codes.unique().numel() <= 16
        assert not torch.equal(lc.weight, once.layers[name].weight)  # and the others moved
    assert cm.finetune.data == "train split" and cm.finetune.steps == 4 * math.ceil(len(train[1]) / 128)
    assert accuracy(cm.model, data) >= accuracy(once.model, data) + 0.05


def test_retrained_result_is_cached_and_cancel_stops(digits):
    loaded, data = digits
    train = data.split("train")
    config = CompressionConfig(prune=PruneSpec(0.5), finetune_steps=5, finetune_optimizer="sgd", distill=3.0)
    first = compress(loaded.model, config, train=train)
    again = compress(loaded.model, config, train=train)
    assert not first.finetune.cached and again.finetune.cached and again.model is not first.model
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RetrainCancelled, match="after 0 of 5 steps"):
        compress(loaded.model, dataclasses.replace(config, seed=1), train=train, cancel=cancel)
    stop = threading.Event()
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if fraction >= 0.4:
            stop.set()
    with pytest.raises(RetrainCancelled, match="after 2 of 5 steps"):
        compress(loaded.model, dataclasses.replace(config, seed=2), train=train, progress=progress, cancel=stop)
    assert "ETA" in seen[0]


def test_gradual_pruning_ends_at_the_one_shot_counts(digits):
    loaded, data = digits
    train = data.split("train")
    for prune in (PruneSpec(0.6), PruneSpec(0.5, method="structured")):
        one_shot = compress(loaded.model, CompressionConfig(prune=prune), calib=train)
        gradual = compress(loaded.model, CompressionConfig(prune=prune, finetune_steps=20, gradual=3), train=train,
                           calib=train)
        for name, lc in gradual.layers.items():
            assert lc.shape == one_shot.layers[name].shape and lc.nnz == one_shot.layers[name].nnz, name


def test_bad_retraining_input_is_one_line(digits):
    with pytest.raises(ConfigError, match="distill must be a temperature T > 0"):
        CompressionConfig(finetune_epochs=1, distill=-1.0)
    with pytest.raises(ConfigError, match="set finetune_epochs or finetune_steps"):
        CompressionConfig(distill=2.0)
    loaded, data = digits
    no_train = Dataset(dataclasses.replace(data.info, splits={"test": data.info.splits["test"]}),
                       {"test": data.split("test")})
    exp = Experiment(loaded, no_train, device="cpu")
    with pytest.raises(ExperimentError, match="no train split"):
        exp.run(CompressionConfig(finetune_epochs=1))
