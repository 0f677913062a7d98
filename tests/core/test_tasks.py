"""Task metrics on hand-computed cases: classify, fidelity (cosine, relative L2, KL, agreement, recall@10), lm."""
import math

import pytest
import torch
import torch.nn.functional as F

from compression_core.pareto import pareto_front
from compression_core.tasks import (DEFAULT_METRIC, METRICS, TASKS, accumulator, default_task, recall_at_k,
                                    wilson_interval)


def _run(task, outs, targets, **kw):
    acc = accumulator(task, **kw)
    for out, y in zip(outs, targets):
        acc.update(out, y)
    return acc.result()


def test_classify_counts_loss_top5_and_agreement_over_two_batches():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 2])
    r = _run("classify", [logits[:3], logits[3:]], [y[:3], y[3:]], reference=torch.tensor([0, 1, 1, 0]))
    assert (r["correct"], r["n_samples"], r["accuracy"]) == (2, 4, 0.5)
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == wilson_interval(2, 4)
    assert r["top5"] is None  # 3 classes: top-5 is meaningless
    assert r["agreement"] == 0.75  # predictions 0, 1, 2, 0 against 0, 1, 1, 0
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_classify_top5_counts_a_label_among_the_five_largest_logits():
    logits = torch.arange(7.0).repeat(2, 1)  # top-5 classes: 2..6
    r = _run("classify", [logits], [torch.tensor([1, 3])])
    assert r["top5"] == 0.5 and r["agreement"] is None


def test_fidelity_of_logits_by_hand():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r = _run("fidelity", [out[:1], out[1:]], [None, None], reference=ref)
    assert r["cosine"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-7)
    assert r["rel_l2"] == pytest.approx(0.5, abs=1e-7)  # 0 for the first sample, |(1, 0)| / |(0, 1)| = 1 for the second
    p1, p2 = 1 / (1 + math.e), math.e / (1 + math.e)  # softmax(0, 1); the compressed softmax(1, 1) is (1/2, 1/2)
    assert r["kl"] == pytest.approx((p1 * math.log(2 * p1) + p2 * math.log(2 * p2)) / 2, abs=1e-7)
    assert r["agreement"] == 0.5  # argmax (1, 1) is class 0, the fp32 argmax class 1
    assert r["recall_at_10"] is None  # logits: no neighbour search


def test_fidelity_of_token_logits_averages_kl_and_agreement_over_positions():
    ref = torch.zeros(1, 2, 3)
    out = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]]])  # second position: (1/2, 1/4, 1/4)
    r = _run("fidelity", [out], [None], reference=ref)
    kl_second = sum(1 / 3 * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))
    assert r["kl"] == pytest.approx(kl_second / 2, abs=1e-7)
    assert r["agreement"] == 1.0  # argmax 0 at both positions in both (ties go to the first index)


def test_fidelity_of_the_reference_itself_is_perfect_and_kept():
    emb = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    r = _run("fidelity", [emb[:7], emb[7:]], [None, None], logits=False, keep=True)
    assert r["cosine"] == pytest.approx(1.0) and r["rel_l2"] == 0.0 and r["recall_at_10"] == 1.0
    assert r["kl"] is None and r["agreement"] is None and torch.equal(r["outputs"], emb)


def _circle(n=12):
    angles = torch.arange(n) * (2 * math.pi / n)
    return torch.stack([angles.cos(), angles.sin()], 1)


def test_recall_at_10_on_a_circle_with_two_neighbours_swapped():
    # 12 points 30° apart: each one's 10 nearest others are all but the antipodal point. Swapping samples 0 and 1
    # changes the excluded point for samples 0, 1, 6 and 7 only (9 of 10 kept), so recall = (8*10 + 4*9) / 120.
    ref = _circle()
    swapped = ref[[1, 0, *range(2, 12)]]
    assert recall_at_k(ref, swapped) == pytest.approx(116 / 120)
    r = _run("fidelity", [swapped], [None], reference=ref, logits=False)
    assert r["recall_at_10"] == pytest.approx(116 / 120)
    assert recall_at_k(ref, 3.0 * ref) == 1.0  # a scale per sample changes no cosine


def test_recall_excludes_each_sample_itself():
    # with 11 samples every other sample is a neighbour, whatever the embeddings: recall must be exactly 1
    g = torch.Generator().manual_seed(1)
    assert recall_at_k(torch.randn(11, 4, generator=g), torch.randn(11, 4, generator=g)) == 1.0
    with pytest.raises(ValueError, match="more than 10 samples"):
        recall_at_k(torch.randn(10, 4), torch.randn(10, 4))
    assert _run("fidelity", [torch.randn(10, 4)], [None], logits=False)["recall_at_10"] is None


def test_perplexity_is_exp_of_the_mean_scored_token_cross_entropy():
    # sequence 1: position 0 predicts label 1 with p = 3/4, position 1 predicts label 0 with p = 1/2
    logits1 = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    labels1 = torch.tensor([[-100, 1, 0]])
    # sequence 2 (another batch): one scored token with p = 1/2
    logits2 = torch.zeros(1, 3, 2)
    labels2 = torch.tensor([[-100, -100, 1]])
    r = _run("lm", [logits1, logits2], [labels1, labels2])
    mean = (math.log(4 / 3) + 2 * math.log(2)) / 3  # token-weighted, not a mean of batch means
    assert r["n_tokens"] == 3 and r["n_samples"] == 2
    assert r["loss"] == pytest.approx(mean, abs=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(mean), abs=1e-6)


def test_metric_table_directions_and_default_tasks():
    assert set(DEFAULT_METRIC) == set(TASKS) and all(m in METRICS for m in DEFAULT_METRIC.values())
    assert {n for n, m in METRICS.items() if not m.higher_is_better} == {"loss", "kl", "rel_l2", "perplexity"}
    assert default_task("causal-lm", True) == "lm"
    assert default_task("embedding", True) == default_task("classifier", False) == "fidelity"
    assert default_task("classifier", True) == "classify"
    with pytest.raises(ValueError, match="classify, fidelity, lm"):
        accumulator("regress")


@pytest.mark.parametrize("field", ["perplexity", "kl", "rel_l2", "loss"])
def test_pareto_front_of_a_lower_is_better_metric(field):
    pts = [{"size_bytes": 10, field: 3.0}, {"size_bytes": 20, field: 4.0}, {"size_bytes": 30, field: 2.0},
           {"size_bytes": 40, field: 2.0}]
    assert [p["size_bytes"] for p in pareto_front(pts, y=field)] == [10, 30]
    scores = [{"size_bytes": p["size_bytes"], "score": p[field]} for p in pts]  # not in METRICS: higher is better
    assert [p["size_bytes"] for p in pareto_front(scores, y="score")] == [10, 20]
