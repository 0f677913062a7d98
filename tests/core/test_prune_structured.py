"""Structured pruning removes channels: consumers shrink, outputs equal the masked-but-unshrunk model, residual
groups stay consistent, the output layer is never touched; size and export follow the smaller model."""
import copy
import sys

import pytest
import torch
import torchvision
from torch import nn

from compression_core import CompressionConfig, PruneSpec, QuantSpec, compress
from compression_core.export import load_exported, read_header
from compression_core.export import export as export_model
from compression_core.models.architectures import LeNet5
from compression_core.models.architectures_zoo import ResNet20
from compression_core.prune_structured import StructuredPruneError, prune_channels
from compression_core.size import size_report

pytest.importorskip("torch_pruning")


class PlainNet(nn.Module):
    """Written the usual way: conv-BN-ReLU twice, a residual add, global pooling, two linears."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.hidden = nn.Linear(16, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.branch(x)
        return self.head(torch.relu(self.hidden(x.mean((2, 3)))))


def randomise_bn(model):
    """Non-trivial BatchNorm statistics and scales, so channels differ and eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.1
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def masked(model, result):
    """The original model with the removed channels zeroed on their producing side, nothing shrunk."""
    zeroed = copy.deepcopy(model)
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for name, kept in result.kept.items():
            m = modules[name]
            gone = torch.ones(result.original[name], dtype=torch.bool)
            gone[list(kept)] = False
            for p in (m.weight, m.bias):
                if p is not None:
                    p[gone] = 0
    return zeroed


CASES = {
    "lenet5": (lambda: LeNet5(), (1, 28, 28)),
    "resnet20": (lambda: ResNet20(num_classes=10), (1, 28, 28)),
    "plain": (PlainNet, (3, 16, 16)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), (3, 64, 64)),
}


def build(name):
    torch.manual_seed(0)
    factory, shape = CASES[name]
    return randomise_bn(factory()), torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))


def last_linear(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("importance", ["norm", "bn"])
def test_removed_channels_equal_masked_model_and_spare_the_output_layer(name, importance):
    model, x = build(name)
    specs = {n: PruneSpec(0.5, method="structured", importance=importance)
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    pruned = copy.deepcopy(model)
    result = prune_channels(pruned, x[:1], specs)
    head = last_linear(model)
    assert head in result.protected and head not in result.kept
    assert dict(pruned.named_modules())[head].out_features == dict(model.named_modules())[head].out_features
    assert result.kept, "something was removed"
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(model, result)(x), atol=1e-5, rtol=1e-5)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * before


def test_lenet5_consumers_shrink_with_exact_counts():
    model, x = build("lenet5")
    cm = compress(model, CompressionConfig(prune=PruneSpec(0.5, method="structured")), example=x[:1])
    shapes = {n: tuple(lc.shape) for n, lc in cm.layers.items()}
    assert shapes == {"conv1": (10, 1, 5, 5), "conv2": (25, 10, 5, 5), "fc1": (250, 400), "fc2": (10, 250)}
    assert cm.layers["fc1"].dense_shape == (500, 800) and cm.layers["fc2"].dense_shape == (10, 500)
    assert cm.structure.protected == ("fc2",)
    assert cm.n_weights == sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert cm.nnz == 10 * 25 + 25 * 10 * 25 + 250 * 400 + 10 * 250
    assert all(lc.mask is None for lc in cm.layers.values())


def test_resnet18_residual_groups_stay_consistent():
    model, x = build("resnet18")
    specs = {n: PruneSpec(0.25, method="structured") for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))}
    pruned = copy.deepcopy(model)
    result = prune_channels(pruned, x[:1], specs)
    stream1 = ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"]
    assert len({result.kept[n] for n in stream1}) == 1 and len(result.kept["conv1"]) == 48  # 64 - round(16)
    stream2 = ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.0.downsample.1", "layer2.1.conv2"]
    assert len({result.kept[n] for n in stream2}) == 1 and len(result.kept["layer2.0.conv2"]) == 96
    assert pruned.layer2[0].conv1.in_channels == 48 and pruned.fc.in_features == 384
    assert pruned.layer4[1].conv2.out_channels == pruned.fc.in_features


def test_size_counts_the_smaller_dense_tensors_and_export_rebuilds_them(tmp_path):
    model, x = build("resnet20")
    config = CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(0.5, method="structured"))
    cm = compress(model, config, example=x[:1])
    report = size_report(cm)
    unpruned = size_report(compress(model, CompressionConfig(quant=QuantSpec(bits=8)), example=x[:1]))
    assert report.dense_bytes == unpruned.dense_bytes
    assert all(l.index_format == "dense" and l.index_bits == 0 for l in report.layers)
    for l, lc in zip(report.layers, cm.layers.values()):
        assert l.n == lc.weight.numel() and l.total_bits == l.n * 8 + l.meta_bits
    assert report.total_bytes < 0.4 * unpruned.total_bytes
    source = {"kind": "builtin", "name": "resnet20", "num_classes": 10}
    written = export_model(cm, tmp_path / "r20.cmpx", source)
    loaded, header = load_exported(tmp_path / "r20.cmpx")
    assert header["resized"] == cm.structure.resized
    payload = read_header(tmp_path / "r20.cmpx")[1]
    assert written > len(payload) and abs(len(payload) - report.total_bytes) <= 0.01 * report.total_bytes
    for name, lc in cm.layers.items():
        assert tuple(dict(loaded.named_modules())[name].weight.shape) == tuple(lc.shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), cm.model(x))


def test_taylor_importance_uses_calibration_data():
    model, x = build("plain")
    y = torch.randint(0, 5, (4,))
    config = CompressionConfig(prune=PruneSpec(0.5, method="structured", importance="taylor"))
    with pytest.raises(ValueError, match="calibration data"):
        compress(model, config, example=x[:1])
    cm = compress(model, config, calib=(x, y))
    assert cm.layers["hidden"].shape == (16, 8) and cm.layers["head"].shape == (5, 16)
    assert all(p.grad is None for p in cm.model.parameters())


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(-1, 8 * 6 * 6))  # the channel count written into the code


def test_a_forward_that_hard_codes_channels_is_refused_in_one_line():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(StructuredPruneError) as err:
        compress(HardCodedView(), CompressionConfig(prune=PruneSpec(0.5, method="structured")), example=x[:1])
    line = str(err.value)
    assert "\n" not in line and "'conv'" in line and "unstructured pruning" in line


def test_a_sparsity_that_removes_every_channel_is_refused():
    net = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3))
    with pytest.raises(StructuredPruneError, match=r"would remove all 2 output channel\(s\) of layer '0'"):
        compress(net, CompressionConfig(prune=PruneSpec(0.8, method="structured")), example=torch.randn(1, 4))


def test_without_torch_pruning_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(StructuredPruneError, match=r"pip install 'compression-explorer\[pruning\]'"):
        compress(LeNet5(), CompressionConfig(prune=PruneSpec(0.5, method="structured")),
                 example=torch.randn(1, 1, 28, 28))


def test_experiment_record_shows_smaller_shapes_fewer_macs_and_runs_alone():
    from compression_core import load_dataset, load_model
    from compression_core.experiment import Experiment

    exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=100, device="cpu")
    configs = [CompressionConfig(quant=QuantSpec(bits=8)), CompressionConfig(prune=PruneSpec(0.5, method="structured")),
               CompressionConfig(quant=QuantSpec(bits=4))]
    records = {r["config_hash"]: r for r in exp.run_many(configs, group=3)}
    plain, structured = records[configs[0].config_hash], records[configs[1].config_hash]
    assert structured["eval_group"] == 1 and plain["eval_group"] == 2
    head = exp.layer_names[-1]
    assert structured["protected_layers"] == head
    rows = {row["name"]: row for row in structured["layers"]}
    assert rows[head]["shape"][0] == rows[head]["dense_shape"][0] and rows[head]["shape"][1] < rows[head]["dense_shape"][1]
    assert all(row["shape"][0] == row["dense_shape"][0] - round(0.5 * row["dense_shape"][0])
               for name, row in rows.items() if name != head)
    assert structured["sparse_macs"] < 0.5 * structured["macs"] and structured["macs"] == plain["macs"]
    assert structured["dense_bytes"] == plain["dense_bytes"] and structured["size_bytes"] < 0.5 * plain["dense_bytes"]


@pytest.mark.parametrize("resized, expected", [
    ({"fc1": {"in_channels": 3}}, "cannot resize a Linear"),
    ({"nowhere": {"in_features": 3, "out_features": 2}}, "has no such module"),
    ({"fc1": {"in_features": 0, "out_features": 2}}, r"resized\['fc1'\].in_features\[0\] must be an integer"),
])
def test_an_edited_resized_header_is_one_export_error(tmp_path, resized, expected):
    import json

    from compression_core.export import ExportError
    from compression_core.export_format import pack_file

    model, x = build("lenet5")
    cm = compress(model, CompressionConfig(prune=PruneSpec(0.5, method="structured")), example=x[:1])
    path = tmp_path / "l5.cmpx"
    export_model(cm, path, {"kind": "builtin", "name": "lenet5", "num_classes": 10})
    header, payload = read_header(path)
    header["resized"] = resized
    path.write_bytes(pack_file(json.dumps(header).encode(), bytes(payload)))  # a valid checksum over the edit
    with pytest.raises(ExportError, match=expected) as err:
        load_exported(path)
    assert "\n" not in str(err.value)
