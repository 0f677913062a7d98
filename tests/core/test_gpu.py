"""The GPU path gives the CPU's results within float tolerance (skipped cleanly without CUDA)."""
import pytest
import torch

from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.models import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("config", [
    CompressionConfig(),
    CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(0.5)),
    CompressionConfig(quant=QuantSpec(bits=3, quantizer="kmeans"), prune=PruneSpec(0.8, scope="global")),
], ids=lambda c: c.label)
def test_cuda_matches_cpu(config):
    loaded, data = load_model("lenet5", dataset="mnist"), load_dataset("mnist")
    cpu = Experiment(loaded, data, limit=2000, device="cpu").run(config)
    gpu = Experiment(loaded, data, limit=2000, device="cuda").run(config)
    assert gpu["device"].startswith("cuda")
    assert abs(cpu["accuracy"] - gpu["accuracy"]) <= 0.002  # a few borderline samples may flip
    assert gpu["size_bytes"] == cpu["size_bytes"] and gpu["nnz"] == cpu["nnz"]
    assert gpu["agreement"] >= 0.998
