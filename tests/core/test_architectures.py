"""Any architecture: Conv1d / Conv3d / grouped / depthwise layers, BatchNorm folding, residual and branching
torchvision networks through compress -> size -> export -> load, tied weights counted once, untraceable models."""
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compression_core.compress import compress
from compression_core.compressed import compressible_layers
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.evaluate import layer_macs
from compression_core.export import ExportError, export, load_exported
from compression_core.size import layer_size, size_report
from compression_core.grid import expand_grid
from tests.core.test_export_safety import resign, split

INT4_HALF = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))


def with_bn_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """One training-mode forward gives every BatchNorm non-trivial running statistics; returns the model in eval."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


class ManyConvs(nn.Module):
    """Conv1d, Conv3d, a grouped and a depthwise Conv2d side by side (compress never runs a forward here)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 5)
        self.c3 = nn.Conv3d(2, 5, (3, 2, 2), bias=False)
        self.grouped = nn.Conv2d(8, 12, 3, groups=4)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, padding=1)


def test_conv1d_conv3d_grouped_depthwise_compress_with_exact_counts():
    torch.manual_seed(0)
    model = ManyConvs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cm = compress(model, INT4_HALF)
    assert list(cm.layers) == ["c1", "c3", "grouped", "depthwise"]
    for name, module in compressible_layers(model):
        lc = cm.layers[name]
        n = module.weight.numel()
        assert lc.shape == tuple(module.weight.shape)  # grouped: (out, in / groups, ...)
        assert lc.nnz == n - round(0.5 * n) == int(lc.weight.count_nonzero())
        assert lc.scale.shape == (module.weight.shape[0],)  # one scale per output channel (axis 0)
        assert lc.codes.shape == module.weight.shape and int(lc.codes.abs().max()) <= 7
    assert cm.layers["grouped"].shape == (12, 2, 3, 3) and cm.layers["depthwise"].shape == (8, 1, 3, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched


def test_structured_pruning_removes_whole_conv3d_and_conv1d_filters():
    pytest.importorskip("torch_pruning")  # the `pruning` extra (in make test)
    torch.manual_seed(0)
    net3d = nn.Sequential(nn.Conv3d(2, 5, (3, 2, 2)), nn.ReLU(), nn.Conv3d(5, 4, 1), nn.Flatten(), nn.LazyLinear(3))
    net1d = nn.Sequential(nn.Conv1d(4, 6, 5), nn.ReLU(), nn.Conv1d(6, 6, 3), nn.Flatten(), nn.Linear(6 * 2, 3))
    for net, x in ((net3d, torch.randn(1, 2, 4, 4, 4)), (net1d, torch.randn(1, 4, 8))):
        net(x)  # materialise the lazy layer
        cm = compress(net, CompressionConfig(prune=PruneSpec(sparsity=0.4, method="structured")), example=x)
        first, second = cm.layers["0"], cm.layers["2"]
        assert first.shape[0] == first.dense_shape[0] - round(0.4 * first.dense_shape[0])  # whole filters gone
        assert second.shape[1] == first.shape[0] and cm.structure.protected == ("4",)


def test_grouped_and_3d_layers_export_and_load_bit_exact(tmp_path):
    torch.manual_seed(1)
    cm = compress(ManyConvs(), CompressionConfig(quant=QuantSpec(bits=3, scheme="asym"), prune=PruneSpec(0.7)))
    written = export(cm, tmp_path / "convs.cmpx", {"kind": "factory", "factory": "x:y"})
    loaded, header = load_exported(tmp_path / "convs.cmpx", build=lambda source: ManyConvs())
    for name, module in compressible_layers(loaded):
        assert torch.equal(module.weight, cm.layers[name].weight)
    assert written <= size_report(cm).total_bytes * 1.02 + 4096 and header["folded"] == []


def test_depthwise_and_conv3d_macs_equal_the_hand_count():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.Conv2d(8, 16, 1), nn.Flatten(),
                          nn.Linear(16 * 10 * 10, 3))
    macs = layer_macs(model, torch.randn(2, 8, 10, 10))
    assert macs == {"0": 8 * 10 * 10 * 3 * 3, "1": 16 * 10 * 10 * 8, "3": 1600 * 3}
    conv3d = nn.Conv3d(4, 6, 3, groups=2)  # out 6 x 3 x 3 x 3 positions, each (4 / 2) x 27 MACs
    assert layer_macs(conv3d, torch.randn(1, 4, 5, 5, 5)) == {"": 6 * 27 * 2 * 27}


# ---- BatchNorm folding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv, bn, shape", [
    (nn.Conv1d(3, 6, 3, bias=False), nn.BatchNorm1d(6), (16, 3, 20)),
    (nn.Conv2d(3, 6, 3, groups=3), nn.BatchNorm2d(6), (16, 3, 9, 9)),
    (nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4, affine=False), (16, 2, 5, 5, 5)),
])
def test_folded_conv_bn_equals_torch_fuse(conv, bn, shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    model = with_bn_statistics(nn.Sequential(conv, bn, nn.ReLU()), x)
    cm = compress(model, CompressionConfig())  # fp32: folding is the only change
    fused = fuse_conv_bn_eval(model[0], model[1])
    assert cm.folded == (("0", "1"),) and isinstance(cm.model[1], nn.Identity)
    assert isinstance(model[1], type(bn))  # the caller's model keeps its BatchNorm
    assert torch.allclose(cm.model[0].weight, fused.weight, atol=1e-5)
    assert torch.allclose(cm.model[0].bias, fused.bias, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(cm.model(x), torch.relu(fused(x)), atol=1e-5)
        assert torch.allclose(cm.model(x), model(x), atol=1e-4)


def test_size_counts_the_new_bias_instead_of_the_batchnorm():
    x = torch.randn(8, 3, 12, 12)
    model = with_bn_statistics(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), x)
    folded, kept = (size_report(compress(model, CompressionConfig(fold_bn=f))) for f in (True, False))
    assert kept.other_bits == 4 * 8 * 32  # gamma, beta, mean, var (num_batches_tracked is not stored)
    assert folded.other_bits == 8 * 32  # the conv's new bias
    assert kept.total_bits - folded.total_bits == 3 * 8 * 32


def test_bn_after_an_addition_or_read_twice_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.bn_sum, self.bn_twice = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.a(x)
            return self.bn_sum(y + self.b(x)) + self.bn_twice(y)  # `a`'s output has two readers

    cm = compress(with_bn_statistics(Branchy(), torch.randn(4, 3, 5, 5)), CompressionConfig())
    assert cm.folded == () and cm.fold_note == "no BatchNorm directly follows a conv"


def test_a_conv_whose_weight_is_tied_is_not_folded():
    class SharedFilters(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
            self.b.weight = self.a.weight
            self.bn_a, self.bn_b = nn.BatchNorm2d(2), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn_a(self.a(x)) + self.bn_b(self.b(x))

    model = with_bn_statistics(SharedFilters(), torch.randn(4, 2, 3, 3))
    cm = compress(model, CompressionConfig())
    assert cm.folded == () and list(cm.layers) == ["a"]
    with torch.no_grad():
        x = torch.randn(2, 2, 3, 3)
        assert torch.equal(cm.model(x), model(x))


def test_untraceable_model_compresses_unfolded_and_says_why():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.sum() > 0:  # control flow on a value: torch.fx cannot trace it
                y = -y
            return self.fc(y.flatten(1))

    model = with_bn_statistics(DataDependent(), torch.randn(4, 1, 8, 8))
    cm = compress(model, INT4_HALF)
    assert cm.folded == () and isinstance(cm.model.bn, nn.BatchNorm2d)
    assert cm.fold_note.startswith("not folded: torch.fx cannot trace the model (TraceError")
    assert cm.layers["conv"].nnz == 36 - 18


def test_fold_bn_off_keeps_the_batchnorm_and_the_default_keeps_old_hashes():
    on, off = CompressionConfig(), CompressionConfig(fold_bn=False)
    assert "fold_bn" not in on.to_dict() and off.to_dict()["fold_bn"] is False
    assert CompressionConfig.from_dict(off.to_dict()) == off and on.config_hash != off.config_hash
    assert off.label.endswith("BN unfolded")
    assert [c.fold_bn for c in expand_grid(bits=[4], fold_bn=[True, False])] == [True, False]
    model = with_bn_statistics(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), torch.randn(4, 1, 5, 5))
    cm = compress(model, off)
    assert cm.folded == () and cm.fold_note == "off (fold_bn is False)" and isinstance(cm.model[1], nn.BatchNorm2d)


# ---- torchvision networks: residual (ResNet-18) and branching with squeeze-excitation (MobileNetV3) --------

@pytest.mark.parametrize("name, n_bn", [("resnet18", 20), ("mobilenet_v3_small", 34)])
def test_torchvision_round_trip_with_folded_bn(tmp_path, name, n_bn):
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    model = with_bn_statistics(getattr(torchvision.models, name)(num_classes=10), x)
    cm = compress(model, INT4_HALF)
    assert len(cm.folded) == n_bn == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in cm.model.modules())
    report = size_report(cm)
    source = {"kind": "torchvision", "name": name, "num_classes": 10}
    written = export(cm, tmp_path / "m.cmpx", source)
    loaded, header = load_exported(tmp_path / "m.cmpx")
    payload = len(split((tmp_path / "m.cmpx").read_bytes())[1])
    assert report.total_bytes <= payload <= report.total_bytes * 1.02 + 4096  # sections are byte-aligned
    if name == "resnet18":  # few, large layers: the JSON header is small next to the payload
        assert written <= report.total_bytes * 1.02 + 4096
    assert header["folded"] == [list(p) for p in cm.folded]
    with torch.no_grad():
        assert torch.equal(loaded(x), cm.model(x))
        assert torch.equal(loaded(x).argmax(1), cm.model(x).argmax(1))


def test_a_file_whose_folded_names_do_not_exist_is_refused(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    model = with_bn_statistics(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), x)
    export(compress(model, INT4_HALF), tmp_path / "f.cmpx", {"kind": "factory", "factory": "x:y"})
    header, payload = split((tmp_path / "f.cmpx").read_bytes())
    build = lambda source: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))  # noqa: E731
    loaded, _ = load_exported(tmp_path / "f.cmpx", build=build)
    assert isinstance(loaded[1], nn.Identity) and loaded[0].bias is not None
    for folded, says in (([["0", "9"]], "no such conv and BatchNorm"), ([["0"]], "pair of names"),
                         ("0", "must be a list")):
        (tmp_path / "bad.cmpx").write_bytes(resign({**header, "folded": folded}, payload))
        with pytest.raises(ExportError, match=says):
            load_exported(tmp_path / "bad.cmpx", build=build)
    del header["folded"]  # a file from before folding loads as unfolded
    (tmp_path / "old.cmpx").write_bytes(resign(header, payload))
    with pytest.raises(ExportError, match="weights do not fit"):
        load_exported(tmp_path / "old.cmpx", build=build)  # ...so the folded bias has nowhere to go


# ---- tied weights ------------------------------------------------------------------------------------------

class AutoEncoder(nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.encoder = nn.Linear(32, 32, bias=False)
        self.decoder = nn.Linear(32, 32)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(self, x):
        return self.decoder(torch.relu(self.encoder(x)))


def test_tied_weights_are_compressed_once_and_counted_once(tmp_path):
    torch.manual_seed(0)
    tied = AutoEncoder(tied=True)
    untied = AutoEncoder(tied=False)
    untied.load_state_dict(tied.state_dict())
    cms = {t: compress(m, INT4_HALF) for t, m in ((True, tied), (False, untied))}
    assert list(cms[True].layers) == ["encoder"] and list(cms[False].layers) == ["encoder", "decoder"]
    assert cms[True].model.decoder.weight is cms[True].model.encoder.weight  # the copy stays tied
    sizes = {t: size_report(cm) for t, cm in cms.items()}
    one_weight = layer_size(cms[False].layers["decoder"], INT4_HALF.index_bits).total_bits
    assert sizes[False].total_bits - sizes[True].total_bits == one_weight > 0
    assert sizes[False].dense_bits - sizes[True].dense_bits == 32 * 32 * 32
    export(cms[True], tmp_path / "tied.cmpx", {"kind": "factory", "factory": "x:y"})
    loaded, header = load_exported(tmp_path / "tied.cmpx", build=lambda source: AutoEncoder(tied=True))
    assert [t["name"] for t in header["tensors"]] == ["decoder.bias"]
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), cms[True].model(x))
    assert math.isclose(cms[True].realized_sparsity, 0.5)


def test_each_model_is_traced_once_and_concurrent_compressions_leave_torch_unpatched(monkeypatch):
    import threading

    from torch import fx

    from compression_core import fold

    traced = []
    real_trace = fx.symbolic_trace
    monkeypatch.setattr(fold.fx, "symbolic_trace", lambda m: traced.append(m) or real_trace(m))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    model.eval()
    call_before = nn.Module.__call__
    config = CompressionConfig(quant=QuantSpec(bits=4))
    errors, results = [], []

    def work():
        try:
            results.append(compress(model, config).folded)
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [(("0", "1"),)] * 4
    assert len(traced) == 1 and traced[0] is not model  # once, on a copy: the caller's model is never traced
    assert nn.Module.__call__ is call_before
