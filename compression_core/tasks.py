"""Tasks and their metrics: what "quality" means for a classifier, for any model against its fp32 self, and for a
causal language model — each measured batch by batch, so no split has to sit in memory at once.

- `classify`: labels (N,) int64; top-1 accuracy with its Wilson 95 % interval, top-5, mean cross-entropy, top-1
  agreement with the fp32 predictions.
- `fidelity`: any model, labels or not; the compressed outputs against the fp32 outputs of the same inputs: mean
  cosine similarity and mean relative L2 error per sample; for logits also top-1 agreement and KL(fp32 ‖
  compressed) of the softmax distributions; for 2-D embeddings of N > 10 samples, recall@10 of each sample's
  fp32 nearest neighbours (cosine, itself excluded).
- `lm`: token labels (N, L) in Hugging Face's convention (-100 = not scored; logits[:, t] predict labels[:, t+1]);
  perplexity = exp(mean token cross-entropy) over the scored tokens, and their count.

`METRICS` says which way each metric is better (Pareto fronts and charts read it); `DEFAULT_METRIC` is each task's
headline metric.

Example:
    >>> acc = accumulator("lm")
    >>> acc.update(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]))  # uniform over 4 tokens
    >>> round(acc.result()["perplexity"], 6), acc.result()["n_tokens"]
    (4.0, 2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASKS = ("classify", "fidelity", "lm")
RECALL_K = 10
IGNORE_INDEX = -100  # Hugging Face's "not scored" label
_SIM_CHUNK = 1024  # rows of the N x N similarity matrix computed at once (bounded memory for recall@10)


@dataclass(frozen=True)
class Metric:
    """A quality metric: its label for tables and charts and which way is better."""

    label: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", True),
    "top5": Metric("top-5 accuracy", True),
    "agreement": Metric("top-1 agreement with fp32", True),
    "loss": Metric("cross-entropy (nats)", False),
    "kl": Metric("KL(fp32 ‖ compressed) (nats)", False),
    "cosine": Metric("cosine similarity to fp32", True),
    "rel_l2": Metric("relative L2 error vs fp32", False),
    "recall_at_10": Metric("recall@10 of fp32 neighbours", True),
    "perplexity": Metric("perplexity", False),
}
DEFAULT_METRIC: dict[str, str] = {"classify": "accuracy", "fidelity": "cosine", "lm": "perplexity"}


def default_task(kind: str, labelled: bool) -> str:
    """The task a model of `kind` ("classifier" | "embedding" | "causal-lm") is evaluated with by default."""
    if kind == "causal-lm":
        return "lm"
    return "fidelity" if kind == "embedding" or not labelled else "classify"


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion correct/n (well-behaved near 0 and 1).

    Example:
        >>> [round(v, 4) for v in wilson_interval(95, 100)]
        [0.8882, 0.9785]
    """
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class ClassifyAccumulator:
    """Accuracy, Wilson interval, top-5, mean cross-entropy and agreement over batches of logits (B, C).

    Args:
        reference: (N,) fp32 predicted classes, in the order batches arrive; None = no agreement.
        keep: keep this model's predictions (`result()["pred"]`), to serve as another run's reference.
    """

    def __init__(self, reference: torch.Tensor | None = None, keep: bool = False):
        self.reference, self.keep = reference, keep
        self.n = self.correct = self.top5 = self.agree = 0
        self.loss_sum, self.classes, self.preds = 0.0, 0, []

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = logits.argmax(1)
        self.classes = logits.shape[1]
        self.correct += int((pred == y).sum())
        if self.classes > 5:
            self.top5 += int((logits.topk(5, dim=1).indices == y[:, None]).any(1).sum())
        self.loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        if self.reference is not None:
            ref = self.reference[self.n:self.n + len(y)].to(pred.device)
            self.agree += int((pred == ref).sum())
        if self.keep:
            self.preds.append(pred)
        self.n += len(y)

    def result(self) -> dict:
        low, high = wilson_interval(self.correct, self.n)
        out = {"accuracy": self.correct / self.n, "accuracy_ci_low": low, "accuracy_ci_high": high,
               "n_samples": self.n, "correct": self.correct,
               "top5": self.top5 / self.n if self.classes > 5 else None, "loss": self.loss_sum / self.n,
               "agreement": None if self.reference is None else self.agree / self.n}
        if self.keep:
            out["pred"] = torch.cat(self.preds)
        return out


class FidelityAccumulator:
    """The compressed model's outputs against the fp32 outputs of the same inputs, batch by batch.

    Args:
        reference: the fp32 outputs (N, ...) on the cpu, in the order batches arrive; None while measuring the
            fp32 model itself (then `keep` collects its outputs and every metric compares it with itself).
        logits: the outputs are class / token logits (agreement and KL are measured); False for embeddings
            (recall@10 is measured for 2-D outputs of more than RECALL_K samples).
        keep: keep this model's outputs on the cpu (`result()["outputs"]`), to serve as the reference.
    """

    def __init__(self, reference: torch.Tensor | None = None, logits: bool = True, keep: bool = False):
        self.reference, self.logits, self.keep = reference, logits, keep
        self.n, self.positions = 0, 0
        self.cos_sum = self.rel_sum = self.kl_sum = 0.0
        self.agree, self.outputs = 0, []

    def update(self, out: torch.Tensor, y: torch.Tensor | None = None) -> None:
        out = out.float()
        if self.reference is None:
            ref = out
        else:
            ref = self.reference[self.n:self.n + len(out)].to(out.device, torch.float32)
        flat, ref_flat = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        self.cos_sum += float(F.cosine_similarity(flat, ref_flat, dim=1, eps=1e-12).double().sum())
        ref_norm = ref_flat.norm(dim=1).clamp_min(1e-12)
        self.rel_sum += float(((flat - ref_flat).norm(dim=1) / ref_norm).double().sum())
        if self.logits:  # per position of the last (class / vocabulary) axis
            log_p, log_q = F.log_softmax(ref, dim=-1), F.log_softmax(out, dim=-1)
            self.kl_sum += float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())
            self.agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            self.positions += ref[..., 0].numel()
        if self.keep or not self.logits:  # the reference, or the embeddings recall@10 compares
            self.outputs.append(out.cpu())
        self.n += len(out)

    def result(self) -> dict:
        out = {"n_samples": self.n, "cosine": self.cos_sum / self.n, "rel_l2": self.rel_sum / self.n,
               "kl": self.kl_sum / self.positions if self.logits else None,
               "agreement": self.agree / self.positions if self.logits else None, "recall_at_10": None}
        outputs = torch.cat(self.outputs) if self.outputs else None
        if not self.logits and outputs is not None and outputs.dim() == 2 and self.n > RECALL_K:
            reference = self.reference if self.reference is not None else outputs
            out["recall_at_10"] = recall_at_k(reference.float(), outputs)
        if self.keep:
            out["outputs"] = outputs
        return out


class LMAccumulator:
    """Perplexity = exp(mean token cross-entropy) over the scored tokens of batches of logits (B, L, V)."""

    def __init__(self):
        self.nll, self.tokens, self.n = 0.0, 0, 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        shifted = labels[:, 1:]  # logits at t predict the token at t + 1
        self.nll += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                          shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"))
        self.tokens += int((shifted != IGNORE_INDEX).sum())
        self.n += len(labels)

    def result(self) -> dict:
        mean = self.nll / self.tokens if self.tokens else math.nan
        return {"n_samples": self.n, "n_tokens": self.tokens, "loss": mean, "perplexity": math.exp(mean)}


def accumulator(task: str, reference: torch.Tensor | None = None, *, logits: bool = True, keep: bool = False):
    """The streaming accumulator of `task`: call `update(outputs, targets)` per batch, then `result()`.

    Args:
        task: one of TASKS.
        reference: the fp32 run's predictions (classify) or outputs on the cpu (fidelity); unused for lm.
        logits: fidelity only — the outputs are logits (see `FidelityAccumulator`).
        keep: keep what a later run needs as its reference (predictions / outputs).

    Raises:
        ValueError: an unknown task.
    """
    if task == "classify":
        return ClassifyAccumulator(reference, keep)
    if task == "fidelity":
        return FidelityAccumulator(reference, logits, keep)
    if task == "lm":
        return LMAccumulator()
    raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")


def recall_at_k(reference: torch.Tensor, compressed: torch.Tensor, k: int = RECALL_K) -> float:
    """Mean over samples of |fp32 top-k neighbours ∩ compressed top-k neighbours| / k (cosine, itself excluded).

    Args:
        reference, compressed: embeddings (N, D) of the same N inputs, N > k.

    Returns:
        A fraction in [0, 1]; 1.0 when every sample keeps its k nearest neighbours.
    """
    n = len(reference)
    if n <= k:
        raise ValueError(f"recall@{k} needs more than {k} samples; got {n}")
    ref, cmp = F.normalize(reference.float(), dim=1), F.normalize(compressed.float(), dim=1)
    hits = 0
    for start in range(0, n, _SIM_CHUNK):
        rows = torch.arange(start, min(start + _SIM_CHUNK, n))
        sims = [m[rows] @ m.T for m in (ref, cmp)]  # (rows, N) each
        for s in sims:
            s[torch.arange(len(rows)), rows] = -math.inf  # a sample is not its own neighbour
        top_ref, top_cmp = (s.topk(k, dim=1).indices for s in sims)
        hits += int((top_ref[:, :, None] == top_cmp[:, None, :]).any(2).sum())
    return hits / (n * k)
