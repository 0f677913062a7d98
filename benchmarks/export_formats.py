"""Export formats side by side: file sizes (ONNX, packed .cex, safetensors) and onnxruntime's top-1 agreement.

For one built-in model on its full test split, compresses with fp32, int8 / int4 per-channel sym and asym (50 %
magnitude sparsity) and int8 + 8-bit activations, writes all three files and runs the ONNX file in onnxruntime.
Needs the onnx extra.

Usage: .venv/bin/python benchmarks/export_formats.py [--model lenet5] [--dataset mnist]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression_core.compress import compress  # noqa: E402  (after the path line)
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.evaluate import predict
from compression_core.experiment import Experiment
from compression_core.export import export
from compression_core.interop import export_onnx, export_safetensors, onnx_predictions
from compression_core.models import load_model

SETTINGS = [("fp32", QuantSpec(), 0.0, 32), ("int8 sym", QuantSpec(bits=8), 0.5, 32),
            ("int8 asym", QuantSpec(bits=8, scheme="asym"), 0.5, 32), ("int4 sym", QuantSpec(bits=4), 0.5, 32),
            ("int4 asym", QuantSpec(bits=4, scheme="asym"), 0.5, 32), ("int8 + act8", QuantSpec(bits=8), 0.5, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    loaded = load_model(args.model, dataset=args.dataset)
    exp = Experiment(loaded, load_dataset(args.dataset), device="cpu")
    folder = Path(tempfile.mkdtemp())
    for label, quant, sparsity, act_bits in SETTINGS:
        config = CompressionConfig(quant=quant, prune=PruneSpec(sparsity=sparsity), act_bits=act_bits)
        cm = compress(exp.model, config, calib=exp.calib)
        onnx_bytes = export_onnx(cm, folder / "m.onnx", exp.x).file_bytes
        packed_bytes = export(cm, folder / "m.cex", loaded.source)
        st_bytes = export_safetensors(cm, folder / "m.safetensors").file_bytes
        engine = predict(cm.model, exp.x, 1000).argmax(1)
        same = int((onnx_predictions(folder / "m.onnx", exp.x) == engine).sum())
        print(f"{args.model} {label:<12} sparsity {sparsity:.0%}  onnx {onnx_bytes:>10,d} B"
              f"  packed {packed_bytes:>10,d} B  safetensors {st_bytes:>10,d} B  onnxruntime = engine {same}/{len(engine)}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
