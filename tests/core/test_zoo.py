"""The zoo built-ins (ResNet-20, MobileNet, ViT): shipped accuracy, their structure, and compression end to end."""
import operator
import os

import pytest
import torch
from torch import fx, nn

from compression_core import datasets as ds
from compression_core.compressed import compressible_layers
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.evaluate import evaluate
from compression_core.experiment import Experiment
from compression_core.export import export, load_exported
from compression_core.models import ARCHITECTURES, build_architecture, list_models, load_model, read_manifest

ZOO = ("resnet20", "mobilenet-s", "vit-tiny")
SHIPPED = sorted((e["model"], e["dataset"]) for e in read_manifest().values() if e["model"] in ZOO)
# Linear / Conv2d layers: stem + 2 per block + 2 projection shortcuts + fc; stem + 2 per block + fc;
# patch embedding + (qkv, proj, fc1, fc2) per block + head
N_LAYERS = {"resnet20": 1 + 2 * 9 + 2 + 1, "mobilenet-s": 1 + 2 * 5 + 1, "vit-tiny": 1 + 4 * 4 + 1}
N_ADDS = {"resnet20": 9, "mobilenet-s": 0, "vit-tiny": 2 * 4 + 1}  # residuals (+ the ViT's position embedding)


def _skip_missing(dataset: str) -> None:
    if ds.BUILTINS[dataset].missing() and not os.environ.get("CI"):
        pytest.skip(ds.BUILTINS[dataset].missing())


def test_every_zoo_model_ships_a_checkpoint():
    assert SHIPPED == [("mobilenet-s", "fashion-mnist"), ("resnet20", "fashion-mnist"), ("vit-tiny", "fashion-mnist"),
                       ("vit-tiny", "mnist")]
    rows = {r["name"]: r for r in list_models()}
    for name, dataset in SHIPPED:
        assert rows[name]["accuracy"][dataset] == read_manifest()[f"{name}_{dataset}.safetensors"]["accuracy"]


@pytest.mark.parametrize("name, dataset", SHIPPED)
def test_shipped_checkpoint_scores_its_manifest_accuracy(name, dataset):
    _skip_missing(dataset)
    loaded = load_model(name, dataset=dataset)
    x, y = load_dataset(dataset).split("test")
    result = evaluate(loaded.model, x, y)
    assert result["n_samples"] == loaded.manifest["n_test"] == 10_000
    assert round(result["accuracy"], 6) == loaded.manifest["accuracy"]  # the number train measured, exactly
    assert loaded.manifest["n_params"] == sum(p.numel() for p in loaded.model.parameters())


@pytest.mark.parametrize("name", ZOO)
def test_structure(name):
    model = ARCHITECTURES[name].build(10)
    layers = dict(compressible_layers(model))
    assert len(layers) == N_LAYERS[name]
    adds = [n for n in fx.symbolic_trace(model).graph.nodes if n.target in (operator.add, torch.add)]
    assert len(adds) == N_ADDS[name]
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    depthwise = [m for m in layers.values() if isinstance(m, nn.Conv2d) and m.groups > 1]
    if name == "resnet20":
        assert len(batchnorms) == 1 + 2 * 9 + 2 and not depthwise
    if name == "mobilenet-s":
        assert len(batchnorms) == 1 + 2 * 5 and len(depthwise) == 5
        assert all(m.groups == m.in_channels == m.out_channels and m.weight.shape[1] == 1 for m in depthwise)
    if name == "vit-tiny":
        assert not batchnorms and sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2 * 4 + 1
        attention = {f"blocks.{i}.attn.{p}" for i in range(4) for p in ("qkv", "proj")}
        assert {n for n in layers if ".attn." in n} == attention
        assert layers["patch_embed"].kernel_size == layers["patch_embed"].stride == (7, 7)


@pytest.mark.parametrize("name, dataset", [("resnet20", "fashion-mnist"), ("mobilenet-s", "fashion-mnist"),
                                           ("vit-tiny", "mnist")])
def test_int4_half_pruned_runs_and_exports(name, dataset, tmp_path):
    _skip_missing(dataset)
    loaded = load_model(name, dataset=dataset)
    exp = Experiment(loaded, load_dataset(dataset), limit=500, device="cpu")
    config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))
    cm = exp.compress(config)
    assert sorted(cm.layers) == sorted(exp.layer_names) and len(cm.layers) == N_LAYERS[name]
    record = exp.run(config, compressed=cm)
    assert record["n_samples"] == 500 and abs(record["realized_sparsity"] - 0.5) < 0.01
    path = tmp_path / f"{name}.cmpx"
    export(cm, path, loaded.source)
    rebuilt, header = load_exported(path)
    assert header["source"] == {"kind": "builtin", "name": name, "num_classes": 10}
    with torch.no_grad():
        rebuilt = rebuilt.to(memory_format=exp.memory_format)  # the layout Experiment tuned its own model to
        logits = rebuilt(exp.x)
        assert torch.equal(logits, cm.model(exp.x))  # same weights, same layout: the same logits, bit for bit
    assert (logits.argmax(1) == exp.y).sum().item() == round(record["accuracy"] * 500)
    assert build_architecture(header["source"]).state_dict().keys() == loaded.model.state_dict().keys()
