"""Number formats side by side: accuracy, honest size and compress time of every format at its natural settings.

For the built-in ViT (vit-tiny on MNIST) and ResNet-20 (on Fashion-MNIST), trained checkpoints shipped in
compression_core/checkpoints, evaluates fp32, the integer baselines (int8 / int4 per channel, int4 in groups of
128) and every block / float format: FP8 (E4M3, E5M2) / FP6 (E3M2, E2M3) / FP4 (E2M1) per channel, the MX formats
and NF4. Prints one JSON object on stdout: per model, per format, the accuracy with its sample count, the size in
bytes and bits per weight (size.py, the packed file agrees), and the seconds compress took. Progress on stderr.

Usage: .venv/bin/python benchmarks/formats.py [--limit N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression_core.config import CompressionConfig, QuantSpec  # noqa: E402  (after the path line)
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.methods import quantizers
from compression_core.models import load_model

MODELS = (("vit-tiny", "mnist"), ("resnet20", "fashion-mnist"))
BASELINES = {"fp32": QuantSpec(), "int8 channel": QuantSpec(bits=8), "int4 channel": QuantSpec(bits=4),
             "int4 g128": QuantSpec(bits=4, granularity="group")}


def format_specs() -> dict[str, QuantSpec]:
    """Every registered block / float format at its natural settings (registry defaults)."""
    return {name: QuantSpec(quantizer=name) for name, info in quantizers().items() if info.kind == "format"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="evaluate a stratified subset of N test samples")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = {"torch": torch.__version__, "device": args.device, "models": {}}
    for model, dataset in MODELS:
        exp = Experiment(load_model(model, dataset=dataset), load_dataset(dataset), limit=args.limit,
                         device=args.device)
        rows = {}
        for label, quant in {**BASELINES, **format_specs()}.items():
            rec = exp.run(CompressionConfig(quant=quant))
            rows[label] = {"config": rec["config"]["quant"], "accuracy": rec["accuracy"],
                           "n_samples": rec["n_samples"], "size_bytes": rec["size_bytes"],
                           "bits_per_weight": round(rec["bits_per_weight"], 4),
                           "compress_seconds": round(rec["compress_seconds"], 3)}
            print(f"{model} {label:<14} acc {rec['accuracy']:.4f}  {rec['size_bytes']:>9,d} B  "
                  f"{rec['bits_per_weight']:.3f} b/w  {rec['compress_seconds']:.2f} s", file=sys.stderr)
        out["models"][f"{model}/{dataset}"] = rows
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
