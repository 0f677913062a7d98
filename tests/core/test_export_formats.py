"""Block formats (group scales, FP8/6/4, MX, NF4) in the size model and the packed file: exact counts, honest
file size, bit-identical round trip through `load_exported`."""
import re

import pytest
import torch
from torch import nn

from compression_core.compress import compress, compress_weight
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.export import PREFIX, export, load_exported
from compression_core.models import build_architecture
from compression_core.size import layer_size, size_report

SOURCE = {"kind": "builtin", "name": "lenet5", "num_classes": 10}
FORMAT_SPECS = {
    "int4-g32-sym": QuantSpec(bits=4, granularity="group", group_size=32),
    "int3-g64-asym-fp16": QuantSpec(bits=3, scheme="asym", granularity="group", group_size=64, scale_dtype="fp16"),
    "int8-channel-e8m0": QuantSpec(bits=8, scale_dtype="e8m0"),
    "fp8_e4m3-channel": QuantSpec(quantizer="fp8_e4m3"),
    "fp8_e5m2-tensor": QuantSpec(quantizer="fp8_e5m2", granularity="tensor"),
    "fp6_e3m2-g32-e8m0": QuantSpec(quantizer="fp6_e3m2", granularity="group", group_size=32, scale_dtype="e8m0"),
    "fp6_e2m3-g128": QuantSpec(quantizer="fp6_e2m3", granularity="group"),
    "fp4_e2m1-g16-fp16": QuantSpec(quantizer="fp4_e2m1", granularity="group", group_size=16, scale_dtype="fp16"),
    "mxfp8": QuantSpec(quantizer="mxfp8"), "mxfp6": QuantSpec(quantizer="mxfp6"),
    "mxfp4": QuantSpec(quantizer="mxfp4"), "mxint8": QuantSpec(quantizer="mxint8"),
    "nf4": QuantSpec(quantizer="nf4"), "nf4-g32-no-dq": QuantSpec(quantizer="nf4", group_size=32, double_quant=False),
}


@pytest.mark.parametrize("sparsity", [0.0, 0.8])
@pytest.mark.parametrize("quant", list(FORMAT_SPECS.values()), ids=list(FORMAT_SPECS))
def test_lenet5_file_agrees_with_report_and_loads_bit_identical(tmp_path, quant, sparsity):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    config = CompressionConfig(quant=quant, prune=PruneSpec(sparsity=sparsity))
    cm = compress(build_architecture(SOURCE), config, calib=(x, y))
    path = tmp_path / "lenet5.cmpx"
    written = export(cm, path, SOURCE)
    rebuilt, meta = load_exported(path)
    for name, lc in cm.layers.items():
        got = rebuilt.get_submodule(name).weight.detach()
        assert torch.equal(got.view(torch.int32), lc.weight.view(torch.int32)), name  # the same bits, signs of 0 too
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))
    report = size_report(cm)
    assert abs(written - report.total_bytes) <= 0.02 * report.total_bytes + 4096
    head_len, payload_len = PREFIX.unpack_from(path.read_bytes())[2:4]
    n_sections = sum(len(e["sections"]) for e in meta["layers"]) + len(meta["tensors"])
    assert report.total_bytes <= payload_len <= report.total_bytes + n_sections
    assert CompressionConfig.from_dict(meta["config"]) == config


def _layer(shape, quant):
    return compress_weight(torch.randn(shape), quant, PruneSpec(), name="w")


@pytest.mark.parametrize("shape,quant,value_bits,meta", [
    ((8, 100), QuantSpec(quantizer="mxfp4"), 4, 8 * 4 * 8),  # 4 blocks of 32 per row (the last padded), e8m0 each
    ((8, 100), QuantSpec(quantizer="mxint8"), 8, 8 * 4 * 8),
    ((6, 3, 5, 5), QuantSpec(quantizer="mxfp6"), 6, 6 * 3 * 8),  # in x kh x kw = 75: 3 blocks
    ((300, 130), QuantSpec(quantizer="nf4"), 4, 900 * 8 + 4 * 32 + 32),  # 3 blocks of 64 per row, int8 each
    ((300, 130), QuantSpec(quantizer="nf4", double_quant=False), 4, 900 * 32),
    ((16, 70), QuantSpec(bits=4, granularity="group", group_size=32), 4, 16 * 3 * 32),
    ((16, 70), QuantSpec(bits=4, scheme="asym", granularity="group", group_size=32), 4, 16 * 3 * (32 + 8)),
    ((16, 70), QuantSpec(bits=4, granularity="group", group_size=32, scale_dtype="e8m0"), 4, 16 * 3 * 8),
    ((16, 70), QuantSpec(quantizer="fp8_e4m3", granularity="tensor", scale_dtype="fp16"), 8, 16),
    ((16, 70), QuantSpec(quantizer="fp4_e2m1"), 4, 16 * 32),
])
def test_size_model_counts_every_scale_at_its_width_and_no_padding(shape, quant, value_bits, meta):
    lc = _layer(shape, quant)
    ls = layer_size(lc, index_bits=4)
    n = torch.Size(shape).numel()
    assert (ls.n, ls.entries, ls.value_bits, ls.meta_bits) == (n, n, value_bits, meta)
    assert ls.total_bits == n * value_bits + meta


def test_mx_layer_is_4_25_bits_per_weight():
    lc = _layer((64, 256), QuantSpec(quantizer="mxfp4"))
    assert layer_size(lc, 4).total_bits / lc.n == 4.25  # 4-bit elements + one 8-bit scale per 32


def test_linear_model_with_odd_input_round_trips_every_format(tmp_path):
    model = nn.Sequential(nn.Linear(45, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(5, 45)
    for label, quant in FORMAT_SPECS.items():
        cm = compress(model, CompressionConfig(quant=quant, fold_bn=False))
        path = tmp_path / f"{label}.cmpx"
        export(cm, path, {"kind": "factory", "factory": "x:y"})
        rebuilt, _ = load_exported(path, build=lambda source: nn.Sequential(nn.Linear(45, 7), nn.ReLU(),
                                                                            nn.Linear(7, 3)))
        with torch.no_grad():
            assert torch.equal(rebuilt(x), cm.model(x)), label


def _nf4_file(tmp_path, finetune_steps: int = 0):
    torch.manual_seed(1)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    config = CompressionConfig(quant=QuantSpec(quantizer="nf4"), finetune_steps=finetune_steps)
    cm = compress(build_architecture(SOURCE), config, calib=(x, y))
    path = tmp_path / "nf4.cmpx"
    export(cm, path, SOURCE)
    return cm, path, x


def test_fine_tuned_format_layers_keep_codes_that_match(tmp_path):
    cm, path, x = _nf4_file(tmp_path, finetune_steps=2)
    rebuilt, _ = load_exported(path)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))


@pytest.mark.parametrize("how, says", [
    ("drop", "missing keys ['side_scale_q']"),
    ("resize", "sections.side_scale_factor holds 8 bytes; its layer needs 4"),
    ("inf", "holds NaN/Inf values"),
])
def test_hostile_side_sections_are_refused_with_one_line(tmp_path, how, says):
    from compression_core.export import ExportError
    from tests.core.test_export_safety import resign, split

    _, path, _ = _nf4_file(tmp_path)
    header, payload = split(path.read_bytes())
    entry = header["layers"][0]
    if how == "drop":
        del entry["sections"]["side_scale_q"]
    elif how == "resize":
        entry["sections"]["side_scale_factor"][1] = 8
    else:  # a scale factor of 0 makes q / 0 infinite: decoded weights must be refused, never loaded
        off = entry["sections"]["side_scale_factor"][0]
        payload = payload[:off] + b"\x00\x00\x00\x00" + payload[off + 4:]
    path.write_bytes(resign(header, payload))
    with pytest.raises(ExportError, match=re.escape(says)) as err:
        load_exported(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("quant", [QuantSpec(quantizer="mxfp4"), QuantSpec(quantizer="nf4"),
                                   QuantSpec(quantizer="fp8_e4m3", granularity="group", group_size=64)],
                         ids=["mxfp4", "nf4", "fp8-g64"])
def test_torchvision_mobilenet_with_depthwise_convs_round_trips(tmp_path, quant):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=10).eval()  # depthwise 3x3 convs: 9 inputs, one partial block each
    cm = compress(model, CompressionConfig(quant=quant))
    source = {"kind": "torchvision", "name": "mobilenet_v3_small", "num_classes": 10}
    path = tmp_path / "mnv3.cmpx"
    export(cm, path, source)
    rebuilt, meta = load_exported(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cm.model(x))
    report = size_report(cm)
    # the payload is the reported bits, each section rounded up to whole bytes (the JSON header, ~25 KB for
    # 54 layers and their tensors, is not part of the size model, for any quantizer)
    payload_len = PREFIX.unpack_from(path.read_bytes())[3]
    n_sections = sum(len(e["sections"]) for e in meta["layers"]) + len(meta["tensors"])
    assert report.total_bytes <= payload_len <= report.total_bytes + n_sections
    assert report.bits_per_weight < 4.3 if quant.quantizer != "fp8_e4m3" else report.bits_per_weight < 8.6
