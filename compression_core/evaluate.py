"""Measuring a model: accuracy with a Wilson interval, top-5, loss, agreement, MACs/BitOps, device choice."""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .compressed import COMPRESSIBLE

DEFAULT_BATCH = {"cpu": 512, "cuda": 8192, "mps": 4096}
BATCH_CANDIDATES = {"cpu": (256, 512, 1024), "cuda": (1024, 4096, 16384), "mps": (512, 2048, 8192)}


class DeviceUnavailable(ValueError):
    """The requested device does not exist on this machine."""


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; `cuda` / `mps` must exist; `cpu` always does.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    name = (name or "auto").lower()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    if name == "mps" and has_mps:
        return torch.device("mps")
    if name in ("cuda", "mps"):
        raise DeviceUnavailable(f"device {name!r} is not available on this machine; use auto or cpu")
    raise DeviceUnavailable(f"device must be auto, cpu, cuda or mps; got {name!r}")


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


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for all of x, in batches; x already on the model's device."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def tune_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.memory_format, int]:
    """The fastest (memory format, batch size) for `model` on x's device that computes what the plain forward does.

    channels_last is tried for image inputs (N, C, H, W): on this kind of CPU it cuts LeNet-5's forward by
    about a third. A layout is kept only if, on the tuning slice, it runs and gives the same top-1 predictions as
    the plain contiguous forward with logits equal up to float rounding (`same_function`); a model that flattens
    with `.view` or reads its memory as contiguous keeps the plain layout. A CUDA out-of-memory at a batch size
    drops that size and every larger one (and halves below the smallest candidate when even that fails). The
    model is not modified (each layout runs on a copy).
    """
    sizes = sorted(BATCH_CANDIDATES.get(x.device.type, (DEFAULT_BATCH["cpu"],)))
    sample = x[:sizes[-1]].contiguous()
    reference, smallest = predict_fitting(model, sample, sizes[0])  # the plain forward: what must not change
    formats = [torch.contiguous_format] + ([torch.channels_last] if x.dim() == 4 else [])
    timings = {(torch.contiguous_format, smallest): math.inf}  # always valid, even if nothing could be timed
    for fmt in formats:
        m = copy.deepcopy(model).to(memory_format=fmt)
        xs = sample.contiguous(memory_format=fmt)
        try:
            if not same_function(predict(m, xs, smallest), reference):  # also the warm-up: allocator, kernels
                continue
        except Exception:  # noqa: BLE001 - any failure (an out-of-memory too) only rules this layout out
            _free(x.device)
            continue
        for bs in sorted({min(b, len(xs)) for b in sizes if b >= smallest}):
            try:
                _sync(x.device)
                t0 = time.perf_counter()
                predict(m, xs, bs)
                _sync(x.device)
            except torch.OutOfMemoryError:
                _free(x.device)
                break
            timings[(fmt, bs)] = time.perf_counter() - t0
    return min(timings, key=timings.get)


def same_function(logits: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether two forwards computed the same thing: same shape and top-1, logits equal up to float rounding."""
    if logits.shape != reference.shape or not torch.equal(logits.argmax(-1), reference.argmax(-1)):
        return False
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return bool(torch.allclose(logits.float(), reference.float(), rtol=rtol, atol=rtol * max(scale, 1.0)))


def predict_fitting(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """`predict`, halving the batch after a CUDA out-of-memory until it fits; returns (logits, batch size used)."""
    while True:
        try:
            return predict(model, x, batch_size), batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            _free(x.device)
            batch_size //= 2


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def predict_stacked(models: list[nn.Module], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (K, N, classes) of K models of one architecture in ONE vectorised forward per batch.

    The K weight sets are stacked (`torch.func.stack_module_state`) and the forward is `vmap`-ed over them, so
    a small model keeps a GPU busy with K configs at once instead of K small launches each.
    """
    params, buffers = torch.func.stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, xb):
        return torch.func.functional_call(skeleton, (p, b), (xb,))

    batched = torch.vmap(forward, in_dims=(0, 0, None))
    return torch.cat([batched(params, buffers, x[i:i + batch_size]) for i in range(0, len(x), batch_size)], dim=1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, reference_pred: torch.Tensor | None = None,
             batch_size: int | None = None) -> dict:
    """Accuracy (+ Wilson 95 % CI), top-5, mean loss and agreement with reference predictions.

    Args:
        model: module in eval mode on the same device as x.
        x, y: inputs (N, ...) and int64 labels (N,).
        reference_pred: (N,) predicted classes of the fp32 model; agreement is the fraction equal to them.
        batch_size: evaluation batch (default: large, per device type).

    Returns:
        dict with accuracy, accuracy_ci_low, accuracy_ci_high, n_samples, correct, top5 (None for <= 5
        classes), loss, agreement (None without a reference), eval_seconds, batch_size, latency_ms_per_batch.
    """
    batch_size = batch_size or DEFAULT_BATCH.get(x.device.type, 2048)
    _sync(x.device)
    t0 = time.perf_counter()
    logits = predict(model, x, batch_size)
    _sync(x.device)
    return metrics(logits, y, reference_pred, time.perf_counter() - t0, batch_size)


def evaluate_stacked(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     reference_pred: torch.Tensor | None = None, batch_size: int | None = None) -> list[dict]:
    """`evaluate` for K same-architecture models at once (see `predict_stacked`).

    Each dict's eval_seconds is the measured time of the shared forward divided by K, and `eval_group` = K.
    """
    batch_size = batch_size or DEFAULT_BATCH.get(x.device.type, 2048)
    _sync(x.device)
    t0 = time.perf_counter()
    logits = predict_stacked(models, x, batch_size)
    _sync(x.device)
    seconds = (time.perf_counter() - t0) / len(models)
    return [{**metrics(l, y, reference_pred, seconds, batch_size), "eval_group": len(models)} for l in logits]


def metrics(logits: torch.Tensor, y: torch.Tensor, reference_pred: torch.Tensor | None, seconds: float,
            batch_size: int) -> dict:
    """The metric dict of `evaluate` from logits (N, classes) and the measured forward time."""
    pred = logits.argmax(1)
    n = len(y)
    correct = int((pred == y).sum())
    low, high = wilson_interval(correct, n)
    top5 = None
    if logits.shape[1] > 5:
        top5 = float((logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean())
    return {
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "n_samples": n,
        "correct": correct,
        "top5": top5,
        "loss": float(F.cross_entropy(logits.float(), y)),
        "agreement": None if reference_pred is None else float((pred == reference_pred).float().mean()),
        "eval_seconds": seconds,
        "batch_size": batch_size,
        "latency_ms_per_batch": 1000 * seconds / math.ceil(n / batch_size),
        "pred": pred,
        "eval_group": 1,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def layer_macs(model: nn.Module, sample: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per compressible layer for ONE input sample (dense count).

    Conv: output elements x (in_channels / groups) x kernel size; Linear: in x out (per leading position).
    """
    macs: dict[str, int] = {}

    def hook(name):
        def fn(m, inputs, out):
            per_output = m.in_features if isinstance(m, nn.Linear) else (
                math.prod(m.kernel_size) * m.in_channels // m.groups)
            macs[name] = macs.get(name, 0) + out.numel() // out.shape[0] * per_output  # a module called twice adds up
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)]
    try:
        model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return macs
