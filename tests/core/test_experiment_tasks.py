"""Experiment on dict inputs (a transformer written the usual way) with tasks classify and fidelity (#8.3)."""
import math
from types import SimpleNamespace

import pytest
import torch

from compression_core import CompressionConfig, QuantSpec, Store
from compression_core.datasets import Dataset, DatasetInfo
from compression_core.experiment import Experiment, ExperimentError
from compression_core.models import LoadedModel
from compression_core.pareto import pareto_front
from compression_core.tasks import recall_at_k
from tests.core.text_models import TinyTextClassifier

N, L = 40, 12
INT4 = CompressionConfig(quant=QuantSpec(bits=4, granularity="tensor"))


def _text_dataset(num_classes=3, labelled=True):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, L + 1, (N,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 50, (N, L), generator=g) * mask  # padding id 0 after each sample's length
    y = torch.randint(0, 3, (N,), generator=g) if labelled else None
    info = DatasetInfo(name="toy-text", num_classes=num_classes if labelled else 0, input_shape=(L,), mean=(),
                       std=(), source="generated", splits={"test": N}, class_names=("a", "b", "c")[:num_classes])
    return Dataset(info=info, tensors={"test": ({"input_ids": ids, "attention_mask": mask}, y)})


def _loaded(num_classes=3, kind=None):
    torch.manual_seed(0)
    model = TinyTextClassifier(num_classes=num_classes).eval()
    if kind is not None:  # a model source that says what it returns (hf:, MiniLM)
        return SimpleNamespace(model=model, name="tiny-text", fingerprint="f" * 16, kind=kind)
    return LoadedModel(model=model, name="tiny-text", dataset=None, fingerprint="f" * 16, source={})


def test_dict_inputs_classify_by_default_and_count_what_the_plain_forward_predicts():
    data = _text_dataset()
    exp = Experiment(_loaded(), data, device="cpu")
    assert exp.task == "classify" and exp.memory_format == torch.contiguous_format
    x, y = data.split("test")
    with torch.no_grad():
        plain = exp.loaded.model(**x).argmax(1)
    base = exp.baseline
    assert base["correct"] == int((plain == y).sum()) and base["agreement"] == 1.0
    assert base["metric"] == "accuracy" and base["metric_value"] == base["accuracy"] and base["cosine"] is None
    record = exp.run(INT4)
    assert record["n_samples"] == N and 0.0 <= record["agreement"] <= 1.0 and record["task"] == "classify"


def test_dict_inputs_fidelity_of_logits_equals_an_independent_computation():
    exp = Experiment(_loaded(), _text_dataset(), device="cpu", task="fidelity")
    base = exp.baseline
    assert base["cosine"] == pytest.approx(1.0) and base["rel_l2"] == 0.0 and base["kl"] == 0.0
    assert base["accuracy"] is None and base["accuracy_drop_pts"] is None and base["metric"] == "cosine"
    cm = exp.compress(INT4)
    record = exp.run(INT4, compressed=cm)
    x, _ = exp.dataset.split("test")
    with torch.no_grad():
        ref, out = exp.loaded.model(**x), cm.model(**x)
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1).mean().item()
    kl = torch.nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                    reduction="batchmean").item()
    assert record["cosine"] == pytest.approx(cos, abs=1e-5) and record["metric_value"] == record["cosine"]
    assert record["kl"] == pytest.approx(kl, abs=1e-5) and record["kl"] > 0
    assert record["agreement"] == pytest.approx((out.argmax(1) == ref.argmax(1)).float().mean().item())
    assert record["rel_l2"] == pytest.approx(((out - ref).norm(dim=1) / ref.norm(dim=1)).mean().item(), abs=1e-5)
    assert record["recall_at_10"] is None and record["baseline_metric_value"] == base["cosine"]


def test_an_embedding_model_on_unlabelled_text_gets_fidelity_with_recall_at_10():
    exp = Experiment(_loaded(num_classes=0, kind="embedding"), _text_dataset(labelled=False), device="cpu")
    assert exp.task == "fidelity"
    cm = exp.compress(INT4)
    record = exp.run(INT4, compressed=cm)
    x, _ = exp.dataset.split("test")
    with torch.no_grad():
        ref, out = exp.loaded.model(**x), cm.model(**x)
    assert record["recall_at_10"] == pytest.approx(recall_at_k(ref, out))
    assert record["kl"] is None and record["agreement"] is None and record["accuracy"] is None
    assert exp.baseline["recall_at_10"] == 1.0


def test_limit_on_unlabelled_inputs_takes_the_first_samples():
    exp = Experiment(_loaded(), _text_dataset(labelled=False), device="cpu", limit=15)
    assert exp.task == "fidelity" and exp.run(INT4)["n_samples"] == 15 and exp.limit == 15
    assert torch.equal(exp.x["input_ids"], exp.dataset.split("test")[0]["input_ids"][:15])


def test_tasks_the_data_or_the_model_cannot_serve_are_one_line_refusals():
    with pytest.raises(ExperimentError, match="task classify needs class labels.*--task fidelity"):
        Experiment(_loaded(), _text_dataset(labelled=False), device="cpu", task="classify")
    with pytest.raises(ExperimentError, match="task lm needs token labels"):
        Experiment(_loaded(), _text_dataset(), device="cpu", task="lm")
    with pytest.raises(ExperimentError, match="task must be one of classify, fidelity, lm; got 'rank'"):
        Experiment(_loaded(), _text_dataset(), device="cpu", task="rank")
    with pytest.raises(ExperimentError, match=r"outputs 3 classes.*toy-text has 5 classes"):
        Experiment(_loaded(), _text_dataset(num_classes=5), device="cpu")
    wrong = LoadedModel(model=torch.nn.Sequential(torch.nn.Linear(L, 3)), name="mlp", dataset=None,
                        fingerprint="0" * 16, source={})
    with pytest.raises(ExperimentError, match=r"cannot take toy-text samples of input_ids \(1, 12\), "
                                              r"attention_mask \(1, 12\).*TypeError"):
        Experiment(wrong, _text_dataset(), device="cpu")


def test_store_keeps_the_records_of_two_tasks_apart(tmp_path):
    data = _text_dataset()
    store = Store(tmp_path / "runs.sqlite")
    classify = Experiment(_loaded(), data, device="cpu").run(INT4)
    fidelity = Experiment(_loaded(), data, device="cpu", task="fidelity").run(INT4)
    store.put(classify)
    store.put(fidelity)
    assert store.count() == 2
    assert store.get(classify)["task"] == "classify" and store.get(fidelity)["task"] == "fidelity"
    assert sorted(k["task"] for k in store.keys()) == ["classify", "fidelity"]
    assert {k["config_hash"] for k in store.keys()} == {INT4.config_hash}
    assert pareto_front([fidelity], y=fidelity["metric"]) == [fidelity]


class _HFCausalLM(torch.nn.Module):
    """A Hugging Face causal LM called as the engine calls models: keyword tensors in, (N, L, V) logits out."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits


def test_lm_perplexity_is_exp_of_hugging_faces_own_loss_on_a_tiny_random_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    lm = transformers.GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (6, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # a context-only prefix, as sliding windows have: 6 scored tokens a row
    labels[0, 8:] = -100
    mask = torch.ones_like(ids)
    info = DatasetInfo(name="toy-stream", num_classes=0, input_shape=(10,), mean=(), std=(), source="generated",
                       splits={"test": 6}, class_names=())
    data = Dataset(info=info, tensors={"test": ({"input_ids": ids, "attention_mask": mask}, labels)})
    loaded = SimpleNamespace(model=_HFCausalLM(lm), name="gpt2-tiny", fingerprint="1" * 16, kind="causal-lm")
    exp = Experiment(loaded, data, device="cpu", batch_size=4)  # two batches of unequal token counts
    assert exp.task == "lm"
    record = exp.baseline
    with torch.no_grad():
        hf_loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert record["n_tokens"] == 6 * 6 - 2 and record["metric"] == "perplexity"
    assert record["loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert record["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-5) == record["metric_value"]
    assert record["accuracy"] is None and record["cosine"] is None
    with pytest.raises(ExperimentError, match=r"task lm needs token logits \(1, L, vocabulary\).*shape \(1, 3\)"):
        Experiment(_loaded(), data, device="cpu", task="lm")
