"""Sweep speed: our engine vs the floor (forward passes only) vs the do-it-yourself baseline.

Runs bits {2,3,4,6,8,32} x sparsity {0,0.25,0.5,0.75,0.9} (magnitude, uniform symmetric per-channel min-max) on
lenet5 / mnist, full test set, three ways in one process, and prints a JSON summary:
  (a) engine: compression_core.sweep.sweep over the grid (no store, every config computed);
  (b) floor: one plain eager forward pass per config of an already-compressed model, data already on the device,
      same batch size as the engine, in the layout the user defined (contiguous); also printed: the same in the
      engine's measured-fastest layout (overhead_ratio_same_layout = pure bookkeeping overhead);
  (c) baseline: per config copy.deepcopy + torch.nn.utils.prune.l1_unstructured + prune.remove, weights replaced by
      torch.fake_quantize_per_channel_affine, evaluation through a DataLoader with batch 256.
overhead_ratio = a / b (target <= 1.10), speedup_vs_baseline = c / a (target >= 1.0; on a GPU >= 3).

Usage: .venv/bin/python benchmarks/sweep_speed.py [--device auto|cpu|cuda] [--repeat 1]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.evaluate import predict
from compression_core.experiment import Experiment
from compression_core.models import load_model
from compression_core.sweep import sweep

BITS = (2, 3, 4, 6, 8, 32)
SPARSITY = (0.0, 0.25, 0.5, 0.75, 0.9)


def grid() -> list[CompressionConfig]:
    return [CompressionConfig(quant=QuantSpec(bits=b, granularity="channel", scheme="sym", range="minmax"),
                              prune=PruneSpec(sparsity=s, method="magnitude", scope="layer"))
            for b in BITS for s in SPARSITY]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forwards(models, x, batch, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for m in models:
        predict(m, x, batch)
    sync(device)
    return time.perf_counter() - t0


def diy_compress(model: nn.Module, bits: int, sparsity: float) -> nn.Module:
    """A copy of `model` pruned (L1, per layer) and fake-quantized (per channel, symmetric) with PyTorch's own tools,
    as a user writes it by hand."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if sparsity > 0:
                torch_prune.l1_unstructured(mod, "weight", amount=sparsity)
                torch_prune.remove(mod, "weight")
            if bits < 32:
                with torch.no_grad():
                    w = mod.weight
                    qmax = 2 ** (bits - 1) - 1
                    scale = (w.abs().flatten(1).amax(1) / qmax).clamp_min(torch.finfo(torch.float32).eps)
                    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
                    w.copy_(torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -qmax, qmax))
    return m.eval()


def diy_baseline(model: nn.Module, x, y, bits: int, sparsity: float, device) -> float:
    """What a user writes by hand: `diy_compress`, then evaluation through a DataLoader."""
    m = diy_compress(model, bits, sparsity)
    correct = 0
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=256)
    with torch.no_grad():
        for xb, yb in loader:
            correct += int((m(xb.to(device)).argmax(1) == yb.to(device)).sum())
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="mnist")
    args = ap.parse_args()

    exp = Experiment(load_model(args.model, dataset=args.dataset), load_dataset(args.dataset), device=args.device)
    configs = grid()
    exp.baseline  # warm-up: fp32 predictions, MAC counts, kernels
    device = exp.device

    sync(device)
    t0 = time.perf_counter()
    records = sweep(exp, configs)
    sync(device)
    engine_s = time.perf_counter() - t0

    # the floor: the compressed models in the layout the user defined (contiguous), and, for reference, in the
    # layout the engine measured as fastest (channels_last for conv nets on CPU)
    compressed = [exp.compress(c).model for c in configs]
    batch = records[0]["batch_size"]
    floor_s = time_forwards([m.to(memory_format=torch.contiguous_format) for m in compressed],
                            exp.x.contiguous(), batch, device)
    floor_engine_layout_s = time_forwards([m.to(memory_format=exp.memory_format) for m in compressed],
                                          exp.x, batch, device)
    del compressed

    pristine = exp.loaded.model  # the user's model as defined (contiguous, on cpu)
    if device.type != "cpu":
        pristine = copy.deepcopy(pristine).to(device)
    t0 = time.perf_counter()
    diy = [diy_baseline(pristine, exp.x, exp.y, c.quant.bits, c.prune.sparsity, device) for c in configs]
    sync(device)
    baseline_s = time.perf_counter() - t0

    diffs = [abs(r["accuracy"] - d) * 100 for r, d in zip(records, diy)]
    summary = {
        "model": args.model, "dataset": args.dataset, "device": str(device), "configs": len(configs),
        "n_samples": records[0]["n_samples"], "engine_batch": batch, "threads": torch.get_num_threads(),
        "engine_layout": records[0]["memory_format"],
        "engine_seconds": round(engine_s, 3), "floor_seconds": round(floor_s, 3),
        "floor_engine_layout_seconds": round(floor_engine_layout_s, 3),
        "baseline_seconds": round(baseline_s, 3),
        "overhead_ratio": round(engine_s / floor_s, 3),
        "overhead_ratio_same_layout": round(engine_s / floor_engine_layout_s, 3),
        "speedup_vs_baseline": round(baseline_s / engine_s, 3),
        "max_accuracy_diff_pts": round(max(diffs), 4),
        "accuracy_agrees_within_0.1pt": max(diffs) <= 0.1,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
