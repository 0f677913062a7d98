"""Running a model over a split and measuring it: batches of any input kind, the forward tuner, MACs, device choice.

Inputs `x` are a float Tensor (N, ...), a dict of tensors sharing N on dim 0 (text: input_ids, attention_mask;
the model is called `model(**batch)`), or a streamed split (`datasets_stream.StreamedImages`: batches read and
normalised on the fly). The metrics themselves are the task's accumulators (`tasks`).
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from .compressed import COMPRESSIBLE
from .tasks import accumulator, wilson_interval  # noqa: F401 - wilson_interval: importable from here as ever

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


Inputs = "torch.Tensor | dict[str, torch.Tensor]"  # an in-memory batch or split: a tensor or a dict of tensors


def n_samples(x) -> int:
    """N of a tensor, of a dict of tensors (dim 0 of each) or of a streamed split (its len)."""
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x)


def take(x, start: int, stop: int):
    """Samples [start, stop) of a tensor or a dict of tensors (views, no copy)."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def forward(model: nn.Module, batch):
    """`model(**batch)` for a dict of tensors, else `model(batch)`."""
    return model(**batch) if isinstance(batch, dict) else model(batch)


def batches(x, batch_size: int):
    """Yield the batches of x in order: slices of a tensor / dict, or what a streamed split reads and normalises."""
    if isinstance(x, (torch.Tensor, dict)):
        for i in range(0, n_samples(x), batch_size):
            yield take(x, i, i + batch_size)
    else:
        yield from x.batches(batch_size)


@torch.inference_mode()
def predict(model: nn.Module, x, batch_size: int) -> torch.Tensor:
    """Outputs for all of x (a tensor or dict of tensors on the model's device), in batches, concatenated."""
    return torch.cat([forward(model, b) for b in batches(x, batch_size)])


@torch.inference_mode()
def tune_forward(model: nn.Module, x) -> tuple[torch.memory_format, int]:
    """The fastest (memory format, batch size) for `model` on x's device that computes what the plain forward does.

    channels_last is tried for image inputs (N, C, H, W): on this kind of CPU it cuts LeNet-5's forward by
    about a third; dict inputs (text) keep the plain layout and only the batch size is tuned. A layout is kept
    only if, on the tuning slice, it runs and gives the same top-1 predictions as the plain contiguous forward
    with outputs equal up to float rounding (`same_function`); a model that flattens with `.view` or reads its
    memory as contiguous keeps the plain layout. A CUDA out-of-memory at a batch size drops that size and every
    larger one (and halves below the smallest candidate when even that fails). The model is not modified (each
    layout runs on a copy).
    """
    device = _device_of(x)
    sizes = sorted(BATCH_CANDIDATES.get(device.type, (DEFAULT_BATCH["cpu"],)))
    sample = take(x, 0, sizes[-1])
    sample = {k: v.contiguous() for k, v in sample.items()} if isinstance(sample, dict) else sample.contiguous()
    reference, smallest = predict_fitting(model, sample, sizes[0])  # the plain forward: what must not change
    image = isinstance(sample, torch.Tensor) and sample.dim() == 4
    formats = [torch.contiguous_format] + ([torch.channels_last] if image else [])
    timings = {(torch.contiguous_format, smallest): math.inf}  # always valid, even if nothing could be timed
    for fmt in formats:
        m = copy.deepcopy(model).to(memory_format=fmt)
        xs = sample.contiguous(memory_format=fmt) if image else sample
        try:
            if not same_function(predict(m, xs, smallest), reference):  # also the warm-up: allocator, kernels
                continue
        except Exception:  # noqa: BLE001 - any failure (an out-of-memory too) only rules this layout out
            _free(device)
            continue
        for bs in sorted({min(b, n_samples(xs)) for b in sizes if b >= smallest}):
            try:
                _sync(device)
                t0 = time.perf_counter()
                predict(m, xs, bs)
                _sync(device)
            except torch.OutOfMemoryError:
                _free(device)
                break
            timings[(fmt, bs)] = time.perf_counter() - t0
    return min(timings, key=timings.get)


def _device_of(x) -> torch.device:
    return next(iter(x.values())).device if isinstance(x, dict) else x.device


def same_function(logits: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether two forwards computed the same thing: same shape, same argmax over the last axis, outputs equal up
    to float rounding (logits (N, C), embeddings (N, D), token logits (N, L, V) alike)."""
    if logits.shape != reference.shape or not torch.equal(logits.argmax(-1), reference.argmax(-1)):
        return False
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return bool(torch.allclose(logits.float(), reference.float(), rtol=rtol, atol=rtol * max(scale, 1.0)))


def predict_fitting(model: nn.Module, x, batch_size: int) -> tuple[torch.Tensor, int]:
    """`predict`, halving the batch after a CUDA out-of-memory until it fits; returns (logits, batch size used)."""
    while True:
        try:
            return predict(model, x, batch_size), batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            _free(_device_of(x))
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


def evaluate(model: nn.Module, x, y: torch.Tensor | None, *, task: str = "classify", reference=None,
             logits: bool = True, keep: bool = False, batch_size: int | None = None) -> dict:
    """The task's metrics of `model` on (x, y), batch by batch (`tasks.accumulator`).

    Args:
        model: module in eval mode on the device of x.
        x: inputs — a tensor (N, ...), a dict of tensors sharing N, or a streamed split (see the module doc).
        y: classify: int64 labels (N,); lm: token labels (N, L), -100 where not scored; fidelity: ignored (None).
        task: classify | fidelity | lm.
        reference: the fp32 run's predictions (classify: (N,), for agreement) or outputs (fidelity, on the cpu);
            None = none (classify: agreement None; fidelity: the model is compared with itself).
        logits: fidelity only — the outputs are logits (agreement and KL) rather than embeddings (recall@10).
        keep: also return what a later run needs as its reference: `pred` (classify) or `outputs` (fidelity).
        batch_size: evaluation batch (default: large, per device type); a streamed split reads batches of it.

    Returns:
        The task's metrics (classify: accuracy, accuracy_ci_low, accuracy_ci_high, n_samples, correct, top5 (None
        for <= 5 classes), loss, agreement; fidelity: n_samples, cosine, rel_l2, kl, agreement, recall_at_10;
        lm: n_samples, n_tokens, loss, perplexity) + eval_seconds, batch_size, latency_ms_per_batch, eval_group.
    """
    batch_size = batch_size or DEFAULT_BATCH.get(_device_of(x).type if isinstance(x, (torch.Tensor, dict))
                                                 else x.device.type, 2048)
    acc = accumulator(task, reference, logits=logits, keep=keep)
    start, n_batches, device = 0, 0, torch.device("cpu")
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches(x, batch_size):
            out = forward(model, batch)
            stop, device = start + len(out), out.device
            acc.update(out, None if y is None else y[start:stop].to(device))
            start, n_batches = stop, n_batches + 1
    _sync(device)
    seconds = time.perf_counter() - t0
    return {**acc.result(), "eval_seconds": seconds, "batch_size": batch_size, "eval_group": 1,
            "latency_ms_per_batch": 1000 * seconds / max(n_batches, 1)}


def evaluate_stacked(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     reference: torch.Tensor | None = None, batch_size: int | None = None) -> list[dict]:
    """`evaluate` (task classify, tensor inputs) for K same-architecture models at once (see `predict_stacked`).

    Each dict's eval_seconds is the measured time of the shared forward divided by K, and `eval_group` = K.
    """
    batch_size = batch_size or DEFAULT_BATCH.get(x.device.type, 2048)
    _sync(x.device)
    t0 = time.perf_counter()
    logits = predict_stacked(models, x, batch_size)
    _sync(x.device)
    seconds = (time.perf_counter() - t0) / len(models)
    results = []
    for out in logits:
        acc = accumulator("classify", reference)
        acc.update(out, y)
        results.append({**acc.result(), "eval_seconds": seconds, "batch_size": batch_size, "eval_group": len(models),
                        "latency_ms_per_batch": 1000 * seconds / math.ceil(len(y) / batch_size)})
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def layer_macs(model: nn.Module, sample) -> dict[str, int]:
    """Multiply-accumulates per compressible layer for ONE input sample (a tensor or dict batch; dense count).

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
        forward(model, take(sample, 0, 1))
    finally:
        for h in handles:
            h.remove()
    return macs
