"""size.py: every storage format costed on small hand-computed layers, fillers counted exactly, totals."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from compression_core.compressed import CompressedModel, LayerCompression
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.size import layer_size, relative_fillers, size_report

INT4 = QuantSpec(bits=4, granularity="tensor")


def layer(shape, kept=None, quant=INT4, codebook=None, scale_len=1, name="fc"):
    """A LayerCompression with a mask keeping the flat positions `kept` (None = unpruned)."""
    n = math.prod(shape)
    mask = None
    if kept is not None:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[list(kept)] = True
        mask = mask.reshape(shape)
    weight = torch.randn(shape) * (mask if mask is not None else 1)
    coded = quant.enabled and quant.quantizer in ("uniform", "kmeans", "pow2")
    return LayerCompression(
        name, tuple(shape), weight, quant, PruneSpec(), mask=mask,
        codes=torch.zeros(shape, dtype=torch.int64) if coded else None,
        scale=torch.ones(scale_len) if coded and quant.quantizer == "uniform" else None,
        zero_point=torch.zeros(scale_len, dtype=torch.int32) if coded and quant.quantizer == "uniform" else None,
        codebook=codebook,
    )


def report_of(*layers, index_bits=4, act=None):
    cm = CompressedModel(model=nn.Identity(), config=CompressionConfig(index_bits=index_bits),
                         layers={l.name: l for l in layers}, act_qparams=act or {})
    return size_report(cm, model_state={})


def test_4x8_every_format_by_hand():
    # kept flat positions -> gaps (zeros skipped) 0, 4, 3, 10, 9, 0: no fillers with 4 index bits
    ls = report_of(layer((4, 8), kept=[0, 5, 9, 20, 30, 31])).layers[0]
    meta = 32  # one float32 scale, sym zero point implied
    assert dict(ls.candidates) == {
        "dense": 32 * 4 + meta,
        "bitmask": 32 + 6 * 4 + meta,
        "csr": 5 * 3 + 6 * 3 + 6 * 4 + meta,  # row_ptr 5 x ceil(log2 7), cols 6 x log2 8, values
        "relative": 6 * (4 + 4) + meta,
    }
    assert (ls.index_format, ls.total_bits, ls.value_bits, ls.index_bits, ls.meta_bits) == ("relative", 80, 4, 24, 32)
    assert (ls.n, ls.nnz, ls.entries, ls.fillers, ls.bits) == (32, 6, 6, 0, 4)
    assert ls.total_bits == ls.entries * ls.value_bits + ls.index_bits + ls.meta_bits


def test_fewer_index_bits_add_fillers_and_bitmask_wins():
    # 2 index bits reach a gap of 3: gaps 4, 10, 9 need 1 + 2 + 2 fillers
    ls = report_of(layer((4, 8), kept=[0, 5, 9, 20, 30, 31]), index_bits=2).layers[0]
    assert dict(ls.candidates)["relative"] == (6 + 5) * (4 + 2) + 32
    assert (ls.index_format, ls.total_bits, ls.entries, ls.index_bits) == ("bitmask", 88, 6, 32)


def test_filler_count_for_gaps_of_twenty():
    assert relative_fillers(np.array([20, 41, 62]), 4).tolist() == [1, 1, 1]  # gaps of 20 zeros, max 15
    assert relative_fillers(np.array([15, 31, 48]), 4).tolist() == [0, 0, 1]  # gaps 15, 15, 16
    assert relative_fillers(np.array([0, 21, 42, 63, 79, 112, 150]), 4).tolist() == [0, 1, 1, 1, 0, 2, 2]
    assert relative_fillers(np.array([], dtype=np.int64), 4).tolist() == []


def test_relative_with_fillers_costed_exactly():
    kept = [0, 21, 42, 63, 79, 112, 150]  # 7 fillers with 4 index bits
    ls = report_of(layer((1, 200), kept=kept)).layers[0]
    assert dict(ls.candidates) == {
        "dense": 800 + 32,
        "bitmask": 200 + 28 + 32,
        "csr": 2 * 3 + 7 * 8 + 28 + 32,  # one row: absolute column indices of 8 bits
        "relative": (7 + 7) * (4 + 4) + 32,
    }
    assert ls.index_format == "csr"
    ls5 = report_of(layer((1, 200), kept=kept), index_bits=5).layers[0]  # gaps 32 and 37 need one filler each
    assert (ls5.index_format, ls5.fillers, ls5.entries, ls5.total_bits) == ("relative", 2, 9, 9 * (4 + 5) + 32)


def test_csr_wins_on_a_small_matrix():
    ls = report_of(layer((4, 4), kept=[1, 14]), index_bits=8).layers[0]
    assert dict(ls.candidates) == {"dense": 64 + 32, "bitmask": 16 + 8 + 32, "csr": 5 * 2 + 2 * 2 + 8 + 32,
                                   "relative": 2 * 12 + 32}
    assert (ls.index_format, ls.total_bits, ls.index_bits) == ("csr", 54, 14)


def test_unpruned_layer_is_dense_and_asym_channel_counts_zero_points():
    q = QuantSpec(bits=4, scheme="asym", granularity="channel")
    ls = report_of(layer((4, 8), quant=q, scale_len=4)).layers[0]
    assert dict(ls.candidates) == {"dense": 128 + 4 * (32 + 32)}
    assert (ls.index_format, ls.index_bits, ls.meta_bits) == ("dense", 0, 256)


@pytest.mark.parametrize("codebook, dense_width", [
    (torch.linspace(0.1, 1.6, 16), 5),  # full 4-bit codebook without 0: one more bit for the zero code
    (torch.linspace(0.1, 0.8, 8), 4),  # a free code remains for 0
    (torch.cat([torch.zeros(1), torch.linspace(0.1, 1.5, 15)]), 4),  # 0 is a level already
])
def test_kmeans_zero_code_width(codebook, dense_width):
    q = QuantSpec(bits=4, quantizer="kmeans")
    ls = report_of(layer((4, 8), kept=range(1, 32), quant=q, codebook=codebook)).layers[0]
    meta = len(codebook) * 32
    cands = dict(ls.candidates)
    assert cands["dense"] == 32 * dense_width + meta
    assert cands["bitmask"] == 32 + 31 * 4 + meta
    expected = "bitmask" if dense_width == 5 else "dense"
    assert ls.index_format == expected
    assert ls.value_bits == (4 if expected == "bitmask" else dense_width)


def test_float_casts_and_skipped_layers():
    fp16 = report_of(layer((4, 8), quant=QuantSpec(bits=16, quantizer="fp16"))).layers[0]
    bf16 = report_of(layer((4, 8), quant=QuantSpec(bits=16, quantizer="bf16"))).layers[0]
    assert fp16.total_bits == bf16.total_bits == 32 * 16 and fp16.meta_bits == 0
    skipped = layer((4, 8), quant=QuantSpec())
    skipped.skipped = True
    ls = report_of(skipped).layers[0]
    assert (ls.bits, ls.value_bits, ls.total_bits, ls.index_format) == (32, 32, 1024, "dense")
    pruned_fp32 = report_of(layer((4, 8), kept=[3], quant=QuantSpec())).layers[0]
    assert dict(pruned_fp32.candidates)["bitmask"] == 32 + 32


def test_totals_other_tensors_and_activation_qparams():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))
    q8 = QuantSpec(bits=8, granularity="tensor")
    layers = {}
    for name in ("0", "3"):
        w = model.get_submodule(name).weight.detach()
        layers[name] = LayerCompression(name, tuple(w.shape), w, q8, PruneSpec(), codes=torch.zeros_like(w).long(),
                                        scale=torch.ones(1), zero_point=torch.zeros(1, dtype=torch.int32))
    cm = CompressedModel(model, CompressionConfig(quant=q8), layers, act_qparams={"0": (0.1, 0, -127, 127)})
    r = size_report(cm)
    assert [l.total_bits for l in r.layers] == [36 * 8 + 32 + 64, 432 * 8 + 32]
    # conv bias 4, BN weight/bias/running mean/var 4 x 4, linear bias 3; num_batches_tracked is not counted
    assert r.other_bits == (4 + 16 + 3) * 32
    assert r.total_bits == 384 + 3488 + 736 and r.total_bytes == math.ceil(r.total_bits / 8)
    assert r.dense_bits == (36 + 432 + 4 + 16 + 3) * 32 and r.dense_bytes == r.dense_bits // 8
    assert r.compression_ratio == pytest.approx(r.dense_bits / r.total_bits)
    assert r.bits_per_weight == pytest.approx((384 + 3488) / 468)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["layers"][0]["index_format"] == "dense" and d["layers"][1]["shape"] == [3, 144]


def test_layer_size_ties_prefer_the_simpler_format():
    lc = layer((1, 32), kept=range(0, 32, 4))  # bitmask 32 + 8 x 4 == relative 8 x (4 + 4)
    ls = layer_size(lc, index_bits=4)
    cands = dict(ls.candidates)
    assert cands["bitmask"] == cands["relative"] == 64 + 32 and ls.index_format == "bitmask"


# ---- the per-layer breakdown: values / index / scales / codebook / other, summing to total_bits ------------

def test_breakdown_by_hand():
    ls = report_of(layer((4, 8), kept=[0, 5, 9, 20, 30, 31])).layers[0]  # relative, 6 x 4-bit values
    assert ls.breakdown() == {"value_bits": 24, "index_bits": 24, "scale_bits": 32, "codebook_bits": 0,
                              "other_bits": 0}
    kmeans = QuantSpec(bits=4, quantizer="kmeans")  # full codebook without 0: dense needs a 5-bit zero code
    ls = report_of(layer((4, 8), quant=kmeans, codebook=torch.linspace(0.1, 1.6, 16)), act={"fc": None}).layers[0]
    assert ls.breakdown() == {"value_bits": 32 * 4, "index_bits": 0, "scale_bits": 0, "codebook_bits": 16 * 32,
                              "other_bits": 64}  # the activation's float32 scale + int32 zero point


class TwoLayers(nn.Module):
    """A conv and two linears written the usual way: 3 x 8 x 8 images -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _quant_specs() -> list[QuantSpec]:
    """Every registered quantizer at its smallest width, plus the grid's scheme / granularity / scale formats."""
    from compression_core.methods import quantizers

    specs = [QuantSpec(bits=min(b for b in q.bits if b > 1 or q.kind != "grid"), quantizer=name)
             for name, q in quantizers().items()]
    return specs + [QuantSpec(bits=3, scheme="asym", granularity="tensor"),
                    QuantSpec(bits=4, granularity="group", group_size=32, scale_dtype="fp16"),
                    QuantSpec(bits=4, quantizer="fp4_e2m1", granularity="group", scale_dtype="e8m0"),
                    QuantSpec(bits=4, quantizer="nf4", double_quant=False), QuantSpec()]


PRUNES = [PruneSpec(), PruneSpec(sparsity=0.6), PruneSpec(method="random", sparsity=0.6),
          PruneSpec(method="structured", sparsity=0.5), PruneSpec(method="nm", n=2, m=4),
          PruneSpec(method="taylor", sparsity=0.5, scope="global")]


@pytest.mark.parametrize("quant", _quant_specs(), ids=lambda q: f"{q.quantizer}-{q.bits}b-{q.granularity}")
def test_breakdown_sums_to_size_bits_for_every_quantizer_and_pruning_method(quant):
    from compression_core.compress import compress

    torch.manual_seed(0)
    model = TwoLayers().eval()
    calib = (torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    for prune in PRUNES:
        for extra in ({}, {"act_bits": 8, "repair": "awq"} if quant.enabled and quant.quantizer == "uniform" else {}):
            config = CompressionConfig(quant=quant, prune=prune, **extra)
            report = size_report(compress(model, config, calib=calib))
            for ls in report.layers:
                parts = ls.breakdown()
                assert sum(parts.values()) == ls.total_bits, (config.label, ls.name, parts)
                assert all(isinstance(v, int) and v >= 0 for v in parts.values())
                coded = quant.enabled and quant.quantizer not in ("fp16", "bf16")
                assert (parts["codebook_bits"] > 0) == (quant.quantizer in ("kmeans", "pow2") and quant.enabled)
                assert (parts["scale_bits"] > 0) == (coded and quant.quantizer not in ("kmeans", "pow2"))
                assert parts["index_bits"] == 0 or ls.index_format != "dense"
                assert parts["other_bits"] == (64 + 32 * ls.shape[1] if extra else 0)  # act qparams + AWQ scales
