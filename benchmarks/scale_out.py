"""Scale-out: the same 40-config grid swept serially in one process vs by `RayExecutor` workers.

Grid: bits {2,3,4,6,8} x sparsity {0,0.2,0.4,0.6,0.8,0.9,0.95,0.99} (magnitude, uniform symmetric per-channel
min-max) on lenet5 / mnist, a class-stratified --limit of the test set (~1 s of forward per config on one CPU thread).
  serial: `sweep` in this process, torch on one thread (one CPU's worth of work at a time);
  ray:    `sweep` with RayExecutor(--workers single-CPU workers, one torch thread each) on a local Ray instance;
          the workers are started and build their experiment on a 2-config warm-up grid first, so the timed
          sweep measures evaluation, not process start-up (printed separately).
Both write a fresh store. The records must agree config for config (`record.differing_fields`: every field
equal but what each process measures for itself, batch means like the loss up to float rounding; exit 1 if not).
Printed (JSON): wall times, wall_ratio = serial / ray (2 workers on 2 idle cores: expect >= 1.6), and
overhead_per_task_s = (ray wall x workers - serial wall) / configs: the worker-seconds each task costs beyond a
serial evaluation (transfer, scheduling, the driver's store writes).

Usage: .venv/bin/python benchmarks/scale_out.py [--limit 6000] [--workers 2]
       [--device cuda --gpus-per-worker 1 --workers 1]   (a GPU: one GPU worker vs the serial GPU sweep)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from compression_core.executor_ray import RayExecutor
from compression_core.record import differing_fields
from compression_core.spec import ExperimentSpec
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep

BITS = (2, 3, 4, 6, 8)
SPARSITY = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


def grid():
    return expand_grid(bits=list(BITS), sparsity=list(SPARSITY), prune="magnitude", scope="layer", scheme="sym",
                       granularity="channel", range="minmax")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", dest="gpus", type=float, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ExperimentSpec(model="lenet5", dataset="mnist", limit=args.limit, device=args.device)
    exp, configs, folder = spec.build(), grid(), Path(tempfile.mkdtemp())
    assert len(configs) == 40

    warmup = expand_grid(bits=[5], sparsity=[0.1, 0.3])  # not in the grid: pays the one-off work (layout and batch
    sweep(exp, warmup)                                      # tuning, the fp32 baseline) outside the timing, as below
    t0 = time.perf_counter()
    serial = sweep(exp, configs, store=Store(folder / "serial.sqlite"))
    serial_s = time.perf_counter() - t0

    ray.init(num_cpus=max(args.workers, 2), num_gpus=int(args.gpus * args.workers), include_dashboard=False,
             logging_level="ERROR")
    with RayExecutor(spec, workers=args.workers, gpus_per_worker=args.gpus) as executor:
        t0 = time.perf_counter()
        sweep(exp, warmup, executor=executor)  # start the workers and build their experiments
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        records = sweep(exp, configs, store=Store(folder / "ray.sqlite"), executor=executor)
        ray_s = time.perf_counter() - t0
    differing = sorted({f for a, b in zip(serial, records, strict=True) for f in differing_fields(a, b)})
    exact = sum(a["metric_value"] == b["metric_value"] and a["size_bytes"] == b["size_bytes"]
                for a, b in zip(serial, records))
    print(json.dumps({
        "configs": len(configs), "limit": args.limit, "device": args.device, "workers": args.workers,
        "differing_fields": differing, "metric_and_size_exactly_equal": f"{exact}/{len(configs)}",
        "loss_max_rel_diff": max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(serial, records)),
        "serial_s": round(serial_s, 2), "ray_s": round(ray_s, 2),
        "worker_start_and_build_s": round(warmup_s, 2), "wall_ratio": round(serial_s / ray_s, 3),
        "serial_s_per_config": round(serial_s / len(configs), 3),
        "overhead_per_task_s": round((ray_s * args.workers - serial_s) / len(configs), 3),
    }, indent=1))
    return 0 if not differing and exact == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
