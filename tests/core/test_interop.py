"""interop.py: ONNX files with integer weights that onnxruntime runs like the engine, and safetensors round trips."""
import functools
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from compression_core import cli as cli_module
from compression_core.compress import compress
from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.export import ExportError
from compression_core.interop import INSTALL_HINT, export_onnx, export_safetensors, onnx_predictions
from compression_core.models import load_model
from tests.core import test_cli

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
AGREEMENT = 0.999
LIMIT = 1000
GRIDS = [QuantSpec(bits=b, scheme=s) for b in (8, 4) for s in ("sym", "asym")]  # per-channel


@functools.cache
def experiment(name: str, dataset: str) -> Experiment:
    return Experiment(load_model(name, dataset=dataset), load_dataset(dataset), limit=LIMIT, device="cpu")


@pytest.fixture(scope="module", params=[("lenet5", "mnist"), ("lenet300", "mnist"), ("digits-cnn", "digits"),
                                        ("mobilenet_v3_small", None)])
def case(request):
    """(name, model, evaluation inputs (N, ...)) for each model the ONNX weight tests run on."""
    name, dataset = request.param
    if dataset is None:  # a torchvision architecture we did not write: BatchNorm, depthwise convs, SE blocks
        torch.manual_seed(0)
        return name, torchvision.models.mobilenet_v3_small(num_classes=10).eval(), torch.randn(LIMIT, 3, 32, 32)
    exp = experiment(name, dataset)
    return name, exp.model, exp.x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(case, quant) -> (CompressedModel, path): each model / grid compressed and exported once."""
    done = {}

    def export(case, quant):
        name, model, x = case
        key = (name, quant)
        if key not in done:
            cm = compress(model, CompressionConfig(quant=quant, prune=PruneSpec(sparsity=0.5)))
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            done[key] = cm, path, export_onnx(cm, path, x)
        return done[key]
    return export


def agreement(cm, path, x) -> float:
    with torch.inference_mode():
        engine = torch.cat([cm.model(x[i:i + 500]) for i in range(0, len(x), 500)]).argmax(1)
    return float((onnx_predictions(path, x) == engine).double().mean())


def dequantized_by_ort(path) -> dict[str, np.ndarray]:
    """Run only the file's weight DequantizeLinear nodes in onnxruntime: {weight name: float32 values}."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith(".weight")]
    used = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(nodes, "weights", [], [onnx.helper.make_tensor_value_info(n.output[0],
                                   onnx.TensorProto.FLOAT, None) for n in nodes],
                                   [t for t in model.graph.initializer if t.name in used])
    small = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    session = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([n.output[0] for n in nodes], session.run(None, {})))


def stored_codes(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{weight name: (codes int64, zero point int64 broadcast along axis 0)} from the file's initializers."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0].endswith(".weight"):
            codes = onnx.numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
            zero = onnx.numpy_helper.to_array(inits[n.input[2]]).astype(np.int64)
            zero = np.broadcast_to(zero.reshape((-1,) + (1,) * (codes.ndim - 1)), codes.shape)
            out[n.output[0]] = (codes, zero, onnx.TensorProto.DataType.Name(inits[n.input[0]].data_type))
    return out


@needs_onnx
@pytest.mark.parametrize("quant", GRIDS, ids=lambda q: f"int{q.bits}-{q.scheme}")
def test_onnx_integer_weights_match_engine(case, quant, exported):
    x = case[2]
    cm, path, written = exported(case, quant)
    assert written.integer_layers == tuple(cm.layers) and written.float_layers == ()
    assert agreement(cm, path, x) >= AGREEMENT

    dequantized = dequantized_by_ort(path)
    codes = stored_codes(path)
    assert set(dequantized) == {f"{layer}.weight" for layer in cm.layers}
    for layer, lc in cm.layers.items():
        engine = lc.weight.detach().cpu().numpy()
        assert np.array_equal(dequantized[f"{layer}.weight"].view(np.uint32), engine.view(np.uint32)), layer
        c, zero, dtype = codes[f"{layer}.weight"]
        assert dtype == ("INT" if quant.scheme == "sym" else "UINT") + str(quant.bits)
        pruned = ~lc.mask.cpu().numpy()
        assert (c[pruned] == zero[pruned]).all()  # every pruned weight is the zero point ...
        # ... and the zero point appears exactly where the engine's weight is 0 (pruned, or a survivor rounded to 0)
        assert int((c == zero).sum()) == int((engine == 0).sum()) >= int(pruned.sum())


@needs_onnx
def test_onnx_is_smaller_than_fp32_onnx(case, exported, tmp_path):
    name, model, x = case
    sizes = {bits: exported(case, QuantSpec(bits=bits))[2].file_bytes for bits in (8, 4)}
    sizes[32] = export_onnx(compress(model, CompressionConfig()), tmp_path / "fp32.onnx", x).file_bytes
    n = sum(p.numel() for p in model.parameters())
    assert sizes[8] < sizes[32] / 2.5 and sizes[4] < sizes[8] * 0.75, sizes  # int4 packs two codes per byte
    assert sizes[32] > 4 * n  # the fp32 file holds every parameter at 4 bytes


@needs_onnx
@pytest.mark.parametrize("name, dataset, act_bits", [("lenet5", "mnist", 8), ("digits-cnn", "digits", 8),
                                                     ("digits-cnn", "digits", 4)])
def test_onnx_activation_quantization(name, dataset, act_bits, tmp_path):
    exp = experiment(name, dataset)
    config = CompressionConfig(quant=QuantSpec(bits=8, scheme="asym"), prune=PruneSpec(sparsity=0.5),
                               act_bits=act_bits)
    cm = compress(exp.model, config, calib=exp.calib)
    path = tmp_path / "act.onnx"
    export_onnx(cm, path, exp.x)
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == len(cm.act_qparams) == len(cm.layers)
    assert ops.count("Clip") == (len(cm.layers) if act_bits < 8 else 0)
    assert agreement(cm, path, exp.x) >= AGREEMENT


@needs_onnx
def test_onnx_per_tensor_codebook_and_cast_layers(tmp_path):
    exp = experiment("digits-cnn", "digits")
    first, *rest = exp.layer_names
    config = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym", granularity="tensor"),
                               prune=PruneSpec(sparsity=0.5)).with_override(
        LayerOverride(name=rest[0], quant=QuantSpec(quantizer="kmeans", bits=3)))
    config = config.with_override(LayerOverride(name=rest[1], quant=QuantSpec(quantizer="fp16")))
    cm = compress(exp.model, config)
    written = export_onnx(cm, tmp_path / "mixed.onnx", exp.x)
    assert set(written.float_layers) == {rest[0], rest[1]}
    assert set(written.integer_layers) == set(exp.layer_names) - {rest[0], rest[1]}
    assert stored_codes(tmp_path / "mixed.onnx")[f"{first}.weight"][2] == "UINT4"
    assert agreement(cm, tmp_path / "mixed.onnx", exp.x) >= AGREEMENT


def test_safetensors_round_trip_is_exact(tmp_path):
    exp = experiment("lenet5", "mnist")
    config = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym"), prune=PruneSpec(sparsity=0.5), act_bits=8)
    cm = compress(exp.model, config, calib=exp.calib)
    written = export_safetensors(cm, tmp_path / "m.safetensors")
    assert written.file_bytes == (tmp_path / "m.safetensors").stat().st_size
    loaded = load_file(str(tmp_path / "m.safetensors"))
    state = cm.model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value.cpu()), key
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert CompressionConfig.from_json(meta["config"]) == config
    assert json.loads(meta["act_qparams"]) == {k: list(v) for k, v in cm.act_qparams.items()}
    assert json.loads(meta["folded"]) == [list(pair) for pair in cm.folded]


def test_onnx_without_the_extra_exits_2_with_pip_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    code = cli_module.main(["export", "--model", "digits-cnn", "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and INSTALL_HINT in err, err
    assert not (tmp_path / "m.onnx").exists()


@needs_onnx
@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_cli_export_standard_formats(fmt, tmp_path):
    out = tmp_path / f"m.{fmt}"
    r = test_cli.cli("export", "--model", "digits-cnn", "--dataset", "digits", "--bits", "4", "--sparsity", "0.5",
                     "--format", fmt, "--out", str(out), "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["file"] == str(out) and rec["file_bytes"] == out.stat().st_size and rec["format"] == fmt
    if fmt == "onnx":
        assert rec["onnx_agreement"] >= AGREEMENT and rec["onnx_samples"] == rec["n_samples"]
        assert len(rec["integer_layers"]) == len(rec["layers"])
    else:
        assert load_file(str(out)).keys() >= {f"{layer['name']}.weight" for layer in rec["layers"]}


@needs_onnx
def test_untraceable_model_is_one_line_error(tmp_path):
    class DataDependent(torch.nn.Module):  # python control flow on a tensor value: torch.export refuses it
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)

    cm = compress(DataDependent(), CompressionConfig(quant=QuantSpec(bits=8)))
    with pytest.raises(ExportError, match="could not trace") as err:
        export_onnx(cm, tmp_path / "m.onnx", torch.ones(3, 4))
    assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()
