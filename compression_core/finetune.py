"""Retraining a compressed model: masks and removed channels fixed, quantization in the loop, optional distillation.

The float weights are the master copy; every step runs forward and backward through their quantized version and
applies the gradient to the floats (straight-through estimator), so training sees the grid the weights will be
stored on. Pruned weights get no gradient and are re-zeroed after each step; skipped layers do not move. Data: the
training split when the caller passes it (`compress(..., train=)`), else the calibration batch.

Extras:
- knowledge distillation (Hinton et al. 2015): loss = CE(student, y) + T^2 * KL(softmax(teacher / T) ||
  softmax(student / T)), the teacher being the uncompressed model (`distillation_loss`);
- gradual pruning (Zhu & Gupta 2017): sparsity rises on a cubic schedule in `stages` steps over the first 75 % of
  the retraining steps (`gradual_schedule`); the caller's `prune_to(sparsity)` applies each stage;
- cancel (a `threading.Event`, checked every step: `RetrainCancelled`), progress with an ETA, and an in-process
  cache of retrained results keyed by the model's fingerprint, the config hash and the data's fingerprint
  (`cache_key`, `cached`, `remember`), so one config is not retrained twice in a process.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import quantize as quant_ops

GRADUAL_WINDOW = 0.75  # gradual pruning happens in the first 75 % of the steps; the rest recovers
STEP_MILESTONES = (0.5, 0.75)  # schedule "step": lr x 0.1 at each
SGD_MOMENTUM = 0.9
CACHE_SIZE = 4


class RetrainCancelled(Exception):
    """Retraining was cancelled (its `cancel` event was set); nothing half-trained is returned."""


@dataclass(frozen=True)
class FinetuneReport:
    """How retraining ran: steps done, epochs (0 = counted in steps), batch size, lr, optimizer, schedule, the
    distillation temperature (0 = off), gradual pruning stages (0 = one-shot), data ('train split' or 'calibration
    batch') and its sample count, wall seconds, the last step's loss, whether it came from the cache, and the
    (step, loss) log."""

    steps: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    schedule: str
    distill: float
    gradual: int
    data: str
    samples: int
    seconds: float
    final_loss: float
    cached: bool = False
    log: tuple[tuple[int, float], ...] = ()


def gradual_schedule(final: float, stages: int, total_steps: int) -> list[tuple[int, float]]:
    """Zhu & Gupta's cubic schedule: (step, sparsity) for stage j = 1..stages, s_j = final * (1 - (1 - j/n)^3),
    stage j applied before step floor(j * 0.75 * total_steps / n).

    Example:
        >>> gradual_schedule(0.8, 4, 100)
        [(18, 0.4625), (37, 0.7), (56, 0.7875), (75, 0.8)]
    """
    window = GRADUAL_WINDOW * total_steps
    return [(int(j * window / stages), round(final * (1.0 - (1.0 - j / stages) ** 3), 12))
            for j in range(1, stages + 1)]


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier at `step` of `total`: constant 1, cosine 0.5 (1 + cos(pi step / total)), or step
    (x0.1 at 50 % and again at 75 %).

    Example:
        >>> lr_factor(50, 100, "cosine"), lr_factor(80, 100, "step")
        (0.5, 0.010000000000000002)
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    if schedule == "step":
        return 0.1 ** sum(step >= m * total for m in STEP_MILESTONES)
    return 1.0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """CE(student, labels) + T^2 * KL(softmax(teacher / T) || softmax(student / T)), KL averaged over the batch.

    Args:
        student, teacher: logits (N, classes); the teacher's get no gradient.
        labels: int64 (N,).
        temperature: T > 0.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])
        >>> round(float(distillation_loss(s, t, torch.tensor([0]), 2.0)), 4)  # KL is 0: CE = ln 2
        0.6931
    """
    soft_teacher = F.log_softmax(teacher.detach() / temperature, dim=1)
    soft_student = F.log_softmax(student / temperature, dim=1)
    kl = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    return F.cross_entropy(student, labels) + temperature ** 2 * kl


def retrain(model: nn.Module, layers: dict, data: tuple[torch.Tensor, torch.Tensor], config, *,
            data_name: str, teacher: nn.Module | None = None,
            prune_to: Callable[[float], None] | None = None, final_sparsity: float = 0.0,
            progress: Callable[[str, float], None] | None = None,
            cancel: threading.Event | None = None) -> FinetuneReport:
    """Retrain `model` (ours) in place as `config` says; `layers` (name -> LayerCompression) give masks and specs.

    Args:
        model: the compressed model (a module we own); left in eval mode.
        layers: its LayerCompression per compressible layer; read for masks / quant / skipped at every step, so
            `prune_to` may replace them.
        data: (x, y) to train on; batches move to the model's device.
        config: the CompressionConfig (finetune_* fields, distill, gradual, seed).
        data_name: 'train split' or 'calibration batch', for the report.
        teacher: the uncompressed model, for distillation.
        prune_to: gradual pruning: called with each stage's sparsity; it may replace parameters (then a new
            optimizer is made).
        final_sparsity: the sparsity gradual pruning ends at.
        progress: (stage text with the ETA, fraction done).
        cancel: when set, raises RetrainCancelled before the next step.
    """
    x, y = data
    batch = min(config.finetune_batch, len(x))
    per_epoch = math.ceil(len(x) / batch)
    total = config.finetune_epochs * per_epoch if config.finetune_epochs else config.finetune_steps
    stages = dict(gradual_schedule(final_sparsity, config.gradual, total)) if config.gradual else {}
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.empty(0, dtype=torch.long)
    opt = _optimizer(model, config)
    log, start, stage = [], time.perf_counter(), "retraining"
    model.train()
    for step in range(total):
        if cancel is not None and cancel.is_set():
            model.eval()
            raise RetrainCancelled(f"retraining cancelled after {step} of {total} steps")
        if step in stages:
            prune_to(stages[step])
            opt = _optimizer(model, config)
        if step % per_epoch == 0:
            order = torch.randperm(len(x), generator=gen) if config.finetune_epochs else order
        idx = (order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch] if config.finetune_epochs
               else torch.randint(len(x), (batch,), generator=gen))
        for group in opt.param_groups:
            group["lr"] = config.finetune_lr * lr_factor(step, total, config.finetune_schedule)
        loss = _step(model, layers, opt, x[idx.to(x.device)].to(device), y[idx.to(y.device)].to(device),
                     teacher, config.distill)
        log.append((step + 1, loss))
        if progress:
            stage = _stage(stage, step + 1, total, time.perf_counter() - start)
            progress(stage, (step + 1) / total)
    model.eval()
    return FinetuneReport(steps=total, epochs=config.finetune_epochs, batch_size=batch, lr=config.finetune_lr,
                          optimizer=config.finetune_optimizer, schedule=config.finetune_schedule,
                          distill=config.distill, gradual=config.gradual, data=data_name, samples=len(x),
                          seconds=round(time.perf_counter() - start, 3), final_loss=log[-1][1] if log else math.nan,
                          log=tuple(log))


def _stage(previous: str, done: int, total: int, elapsed: float) -> str:
    """'retraining (ETA 1 min 5 s)': renewed at each tenth of the way, so a reporter per stage prints ~10 lines."""
    if done * 10 // total == (done - 1) * 10 // total and previous != "retraining":
        return previous
    left = elapsed / done * (total - done)
    eta = f"{int(left // 60)} min {left % 60:.0f} s" if left >= 60 else f"{left:.0f} s"
    return f"retraining {done}/{total} steps (ETA {eta})"


def _optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.is_floating_point()]
    if config.finetune_optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.finetune_lr, momentum=SGD_MOMENTUM)
    return torch.optim.Adam(params, lr=config.finetune_lr)


def _step(model, layers, opt, xb, yb, teacher, temperature) -> float:
    """One straight-through step: forward on the quantized weights, update the float masters, re-apply masks."""
    modules = dict(model.named_modules())
    quantized = [name for name, lc in layers.items() if not lc.skipped and lc.quant.enabled]
    masters = {}
    with torch.no_grad():
        for name in quantized:
            w, lc = modules[name].weight, layers[name]
            masters[name] = w.detach().clone()
            w.copy_(quant_ops.quantize_weight(masters[name], lc.quant, lc.mask).weight)
    out = model(xb)
    if teacher is not None and temperature > 0:
        with torch.no_grad():
            target = teacher(xb)
        loss = distillation_loss(out, target, yb, temperature)
    else:
        loss = F.cross_entropy(out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for name, master in masters.items():  # straight-through: the step moves the float weights
            modules[name].weight.copy_(master)
    for name, lc in layers.items():
        grad = modules[name].weight.grad
        if grad is not None and lc.skipped:
            grad.zero_()
        elif grad is not None and lc.mask is not None:
            grad.mul_(lc.mask)
    opt.step()
    with torch.no_grad():
        for name, lc in layers.items():
            if lc.mask is not None and not lc.skipped:
                modules[name].weight.mul_(lc.mask)  # momentum must not revive a pruned weight
    return loss.item()


# ---- the cache of retrained results -------------------------------------------------------------

_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex digits) of the tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(model: nn.Module, config, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, str, str]:
    """(model fingerprint, config hash, data fingerprint): one retrained result per key."""
    return fingerprint(*model.state_dict().values()), config.config_hash, fingerprint(*data)


def cached(key: tuple):
    """The retrained result stored under `key` (the caller copies it before handing it out), or None."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    return None


def remember(key: tuple, result) -> None:
    """Keep `result` (a private copy the caller will not change) under `key`; the oldest of CACHE_SIZE goes."""
    with _CACHE_LOCK:
        _CACHE[key] = result
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
