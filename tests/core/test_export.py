"""export.py: packed files agree with the size report, load back bit-for-bit, and bad files are refused."""
import copy
import struct
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from compression_core.compressed import CompressedModel, LayerCompression, compressible_layers
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.export import PREFIX, ExportError, _relative_entries, export, load_exported, pack_bits, \
    unpack_bits
from compression_core.quantize import quantize_weight
from compression_core.size import flat_positions, size_report

SOURCE = {"kind": "factory", "factory": "test_export:LeNet300", "num_classes": None}  # stored; tests pass build=


class LeNet300(nn.Module):
    """784-300-100-10 MLP, the shape of Deep Compression's LeNet-300-100."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Exactly round(s * n) smallest |w| removed (stable order for ties)."""
    k = round(sparsity * w.numel())
    order = torch.sort(w.abs().reshape(-1), stable=True).indices
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


def compress_by_hand(model: nn.Module, quant: QuantSpec, sparsity: float, index_bits: int = 4) -> CompressedModel:
    """Magnitude pruning + quantize.quantize_weight on a copy of `model` (compress() without its extras)."""
    new = copy.deepcopy(model).eval()
    prune = PruneSpec(sparsity=sparsity)
    layers = {}
    with torch.no_grad():
        for name, m in compressible_layers(new):
            mask = magnitude_mask(m.weight, sparsity) if sparsity > 0 else None
            q = quantize_weight(m.weight, quant, mask)
            m.weight.copy_(q.weight)
            layers[name] = LayerCompression(name, tuple(m.weight.shape), m.weight.detach(), quant, prune, mask=mask,
                                            codes=q.codes, scale=q.scale, zero_point=q.zero_point,
                                            codebook=q.codebook)
    config = CompressionConfig(quant=quant, prune=prune, index_bits=index_bits)
    return CompressedModel(new, config, layers)


def trained_like(model_cls, seed=0):
    torch.manual_seed(seed)
    model = model_cls()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # give BN non-trivial statistics
        model.train()
        model(torch.randn(64, 1, 8, 8))
    return model.eval()


def round_trip(cm: CompressedModel, tmp_path, model_cls, x):
    path = tmp_path / "model.cmpx"
    written = export(cm, path, SOURCE)
    assert written == path.stat().st_size
    rebuilt, meta = load_exported(path, build=lambda source: model_cls())
    for name, lc in cm.layers.items():
        assert torch.equal(rebuilt.get_submodule(name).weight, lc.weight), name
    for key, t in cm.model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(rebuilt.state_dict()[key], t), key
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))
    return path, written, meta


CASES = {
    "uniform4-sym-channel": QuantSpec(bits=4),
    "uniform4-asym-tensor": QuantSpec(bits=4, scheme="asym", granularity="tensor"),
    "kmeans4": QuantSpec(bits=4, quantizer="kmeans"),
    "pow2-4": QuantSpec(bits=4, quantizer="pow2"),
}


@pytest.mark.parametrize("sparsity, quant", [(0.9, q) for q in CASES.values()] + [
    (0.0, QuantSpec(bits=8)), (0.0, QuantSpec(bits=16, quantizer="fp16")), (0.5, QuantSpec(bits=16, quantizer="bf16")),
    (0.9, QuantSpec()),
], ids=list(CASES) + ["uniform8-dense", "fp16-dense", "bf16-pruned", "fp32-pruned"])
def test_lenet300_file_agrees_with_report_and_loads_bit_exact(tmp_path, sparsity, quant):
    cm = compress_by_hand(trained_like(LeNet300), quant, sparsity)
    x = torch.randn(32, 1, 28, 28)
    path, written, meta = round_trip(cm, tmp_path, LeNet300, x)
    report = size_report(cm)
    assert abs(written - report.total_bytes) <= 0.02 * report.total_bytes + 4096
    # payload = the reported bits, each section rounded up to whole bytes; the rest is the JSON header
    head_len, payload_len = PREFIX.unpack_from(path.read_bytes())[2:4]
    n_sections = sum(len(e["sections"]) for e in meta["layers"]) + len(meta["tensors"])
    assert report.total_bytes <= payload_len <= report.total_bytes + n_sections
    assert head_len < 4096
    assert [e["format"] for e in meta["layers"]] == [l.index_format for l in report.layers]
    assert meta["source"] == SOURCE and meta["file_bytes"] == written


def test_pruned_lenet300_uses_sparse_formats():
    cm = compress_by_hand(trained_like(LeNet300), QuantSpec(bits=4), 0.9)
    formats = [l.index_format for l in size_report(cm).layers]
    assert "dense" not in formats


@pytest.mark.parametrize("kept, shape, index_bits, fmt", [
    ([0, 21, 42, 63, 79, 112, 150], (1, 200), 5, "relative"),  # gaps 32 and 37 need one filler each
    ([0, 21, 42, 63, 79, 112, 150], (1, 200), 4, "csr"),
    ([1, 14], (4, 4), 8, "csr"),
    (list(range(0, 64, 2)), (4, 16), 4, "bitmask"),
    (list(range(1, 64)), (4, 16), 4, "dense"),
])
@pytest.mark.parametrize("quant", [QuantSpec(bits=4, scheme="asym"), QuantSpec(bits=3, quantizer="kmeans"),
                                   QuantSpec(bits=1, quantizer="pow2"), QuantSpec(bits=16, quantizer="fp16")],
                         ids=["asym", "kmeans", "pow2-1bit", "fp16"])
def test_every_index_format_round_trips(tmp_path, kept, shape, index_bits, fmt, quant):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(shape[1], shape[0]))
    w = model[0].weight.detach()
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[kept] = True
    mask = mask.reshape(shape)
    q = quantize_weight(w, quant, mask)
    with torch.no_grad():
        model[0].weight.copy_(q.weight)
    lc = LayerCompression("0", shape, model[0].weight.detach(), quant, PruneSpec(sparsity=0.5), mask=mask,
                          codes=q.codes, scale=q.scale, zero_point=q.zero_point, codebook=q.codebook)
    cm = CompressedModel(model, CompressionConfig(quant=quant, index_bits=index_bits), {"0": lc})
    ls = size_report(cm).layers[0]
    if quant.quantizer == "uniform":  # the hand-computed winners of test_size (other widths may shift them)
        assert ls.index_format == fmt
    path = tmp_path / "layer.cmpx"
    export(cm, path, SOURCE)
    rebuilt, meta = load_exported(path, build=lambda source: nn.Sequential(nn.Linear(shape[1], shape[0])))
    assert torch.equal(rebuilt[0].weight, lc.weight)
    assert meta["layers"][0]["format"] == ls.index_format


def test_relative_entries_place_fillers_exactly():
    pos, gaps = _relative_entries(np.array([0, 21, 42, 63, 79, 112, 150]), 4)
    assert pos.tolist() == [0, 16, 21, 37, 42, 58, 63, 79, 95, 111, 112, 128, 144, 150]
    assert gaps.tolist() == [0, 15, 4, 15, 4, 15, 4, 15, 15, 15, 0, 15, 15, 5]
    assert (np.cumsum(gaps + 1) - 1).tolist() == pos.tolist()


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 32])
def test_pack_bits_round_trip_and_exact_length(width):
    rng = np.random.default_rng(width)
    count = (1 << 18) + 13 if width == 3 else 1001  # one case crosses the chunk boundary
    values = rng.integers(0, 2**width, size=count, dtype=np.int64)
    data = pack_bits(values, width)
    assert len(data) == -(-count * width // 8)
    assert np.array_equal(unpack_bits(data, count, width), values)


def test_pack_bits_is_lsb_first():
    assert pack_bits(np.array([1, 2, 3]), 2) == bytes([0b00111001])
    assert pack_bits(np.array([0x0102]), 16) == b"\x02\x01"


def test_cnn_with_batchnorm_and_activation_qparams(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("compression_core.compress")
    fake.attach_activation_quant = lambda model, act_qparams: calls.append((type(model), act_qparams))
    monkeypatch.setitem(sys.modules, "compression_core.compress", fake)
    cm = compress_by_hand(trained_like(SmallCNN), QuantSpec(bits=3, scheme="asym"), 0.7, index_bits=3)
    cm.act_qparams = {"conv": (0.0123456789, 3, 0, 255), "fc": (0.5, 0, 0, 255)}
    _, written, meta = round_trip(cm, tmp_path, SmallCNN, torch.randn(8, 1, 8, 8))
    assert calls == [(SmallCNN, {"conv": (0.0123456789, 3, 0, 255), "fc": (0.5, 0, 0, 255)})]
    report = size_report(cm)
    assert report.layers[0].meta_bits == 6 * 64 + 64  # scale + zero point per channel, plus the act qparams
    assert abs(written - report.total_bytes) <= 0.02 * report.total_bytes + 4096


@pytest.mark.parametrize("config", [
    CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.9), act_bits=8, bias_correction=True),
    CompressionConfig(quant=QuantSpec(bits=5, quantizer="kmeans"), prune=PruneSpec(sparsity=0.75, scope="global")),
    CompressionConfig(quant=QuantSpec(bits=3, quantizer="pow2", scheme="asym"), prune=PruneSpec(method="nm")),
    CompressionConfig(quant=QuantSpec(bits=6, scheme="asym", range="mse"), finetune_steps=3, index_bits=3),
], ids=["int4-act8-biascorr", "kmeans5-global", "pow2-nm", "int6-finetune"])
def test_real_compress_round_trips_through_the_default_builder(tmp_path, config):
    from compression_core.compress import compress
    from compression_core.models import build_architecture

    source = {"kind": "builtin", "name": "lenet5", "num_classes": 10}
    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    cm = compress(build_architecture(source), config, calib=(x, y))
    path = tmp_path / "lenet5.cmpx"
    written = export(cm, path, source)
    rebuilt, meta = load_exported(path)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))
    report = size_report(cm)
    assert abs(written - report.total_bytes) <= 0.02 * report.total_bytes + 4096
    assert CompressionConfig.from_dict(meta["config"]) == config and len(meta["act_qparams"]) == len(cm.act_qparams)


def test_full_codebook_pays_one_bit_for_relative_fillers(tmp_path):
    kept = [0, 21, 42, 63, 79, 112, 150]  # index_bits 5: gaps 32 and 37 need one filler each
    quant = QuantSpec(bits=2, quantizer="kmeans")
    model = nn.Sequential(nn.Linear(200, 1, bias=False))
    w = torch.zeros(1, 200)
    w[0, kept] = torch.tensor([-2.0, -1.0, 1.0, 2.0, 1.0, -1.0, 2.0])
    mask = w != 0
    q = quantize_weight(w, quant, mask)
    assert sorted(q.codebook.tolist()) == [-2.0, -1.0, 1.0, 2.0]  # 4 = 2^2 levels, none of them 0
    with torch.no_grad():
        model[0].weight.copy_(q.weight)
    lc = LayerCompression("0", (1, 200), model[0].weight.detach(), quant, PruneSpec(sparsity=0.5), mask=mask,
                          codes=q.codes, codebook=q.codebook)
    cm = CompressedModel(model, CompressionConfig(quant=quant, index_bits=5), {"0": lc})
    ls = size_report(cm).layers[0]
    # relative 9 x (3 + 5) < csr 2 x 3 + 7 x 8 + 7 x 2 < bitmask 200 + 7 x 2 < dense 200 x 3; codebook 4 x 32
    assert dict(ls.candidates) == {"dense": 600 + 128, "bitmask": 214 + 128, "csr": 76 + 128, "relative": 72 + 128}
    assert (ls.index_format, ls.value_bits, ls.fillers) == ("relative", 3, 2)
    export(cm, tmp_path / "m.cmpx", SOURCE)
    rebuilt, _ = load_exported(tmp_path / "m.cmpx", build=lambda source: nn.Sequential(nn.Linear(200, 1, bias=False)))
    assert torch.equal(rebuilt[0].weight, lc.weight)


def test_inconsistent_codes_are_refused(tmp_path):
    cm = compress_by_hand(trained_like(LeNet300), QuantSpec(bits=4), 0.9)
    cm.layers["fc2"].codes = cm.layers["fc2"].codes.clone()
    kept = flat_positions(cm.layers["fc2"].mask)[0]
    cm.layers["fc2"].codes.view(-1)[kept] += 1
    with pytest.raises(ExportError, match="fc2"):
        export(cm, tmp_path / "bad.cmpx", SOURCE)
    assert not (tmp_path / "bad.cmpx").exists()


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "magic":
        return b"NOPE" + data[4:]
    if how == "version":
        return data[:4] + struct.pack("<H", 99) + data[6:]
    if how == "truncated":
        return data[:-10]
    if how == "short":
        return data[:7]
    flipped = bytearray(data)  # a payload byte: the checksum catches it
    flipped[-5] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize("how, message", [("magic", "bad magic"), ("version", "version 99"),
                                          ("truncated", "truncated"), ("short", "truncated"),
                                          ("payload", "checksum")])
def test_bad_files_are_refused_with_one_line(tmp_path, how, message):
    cm = compress_by_hand(trained_like(SmallCNN), QuantSpec(bits=4), 0.5)
    good = tmp_path / "good.cmpx"
    export(cm, good, SOURCE)
    bad = tmp_path / "bad.cmpx"
    bad.write_bytes(_corrupt(good.read_bytes(), how))
    with pytest.raises(ExportError, match=message) as err:
        load_exported(bad, build=lambda source: SmallCNN())
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_file_that_does_not_fit_the_architecture_is_refused(tmp_path):
    cm = compress_by_hand(trained_like(SmallCNN), QuantSpec(bits=4), 0.5)
    export(cm, tmp_path / "m.cmpx", SOURCE)
    with pytest.raises(ExportError, match="do not fit") as err:
        load_exported(tmp_path / "m.cmpx", build=lambda source: LeNet300())
    assert "\n" not in str(err.value)


def test_missing_paths_give_one_line_errors(tmp_path):
    with pytest.raises(ExportError, match="cannot read"):
        load_exported(tmp_path / "nothing.cmpx", build=lambda source: SmallCNN())
    cm = compress_by_hand(trained_like(SmallCNN), QuantSpec(bits=4), 0.5)
    with pytest.raises(ExportError, match="cannot write") as err:
        export(cm, tmp_path / "no" / "such" / "dir.cmpx", SOURCE)
    assert "\n" not in str(err.value)
