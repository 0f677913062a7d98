"""interop.py: ONNX files with integer weights that onnxruntime runs like the engine, and safetensors round trips."""
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
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.interop import INSTALL_HINT, export_onnx, export_safetensors, onnx_predictions
from compression_core.models import load_model
from tests.core import test_cli

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
AGREEMENT = 0.999
LIMIT = 1000
GRIDS = [QuantSpec(bits=b, scheme=s) for b in (8, 4) for s in ("sym", "asym")]  # per-channel


@pytest.fixture(scope="module", params=[("lenet5", "mnist"), ("lenet300", "mnist"), ("digits-cnn", "digits"),
                                        ("mobilenet_v3_small", None)])
def case(request):
    """(model, evaluation inputs (N, ...), calibration (x, y)) for each model the ONNX tests run on."""
    name, dataset = request.param
    if dataset is None:  # a torchvision architecture we did not write: BatchNorm, depthwise convs, SE blocks
        torch.manual_seed(0)
        model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
        x = torch.randn(LIMIT, 3, 32, 32)
        return name, model, x, (x[:256], torch.randint(0, 10, (256,)))
    exp = Experiment(load_model(name, dataset=dataset), load_dataset(dataset), limit=LIMIT, device="cpu")
    return name, exp.model, exp.x, exp.calib


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
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0].endswith(".weight"):
            codes = inits[n.input[0]].astype(np.int64)
            zero = inits[n.input[2]].astype(np.int64).reshape((-1,) + (1,) * (codes.ndim - 1))
            out[n.output[0]] = (codes, np.broadcast_to(zero, codes.shape), onnx.TensorProto.DataType.Name(
                model.graph.initializer[[t.name for t in model.graph.initializer].index(n.input[0])].data_type))
    return out


@needs_onnx
@pytest.mark.parametrize("quant", GRIDS, ids=lambda q: f"int{q.bits}-{q.scheme}")
def test_onnx_integer_weights_match_engine(case, quant, tmp_path):
    name, model, x, calib = case
    cm = compress(model, CompressionConfig(quant=quant, prune=PruneSpec(sparsity=0.5)))
    path = tmp_path / "m.onnx"
    written = export_onnx(cm, path, x)
    assert written.integer_layers == tuple(cm.layers) and written.float_layers == ()
    assert agreement(cm, path, x) >= AGREEMENT

    dequantized = dequantized_by_ort(path)
    codes = stored_codes(path)
    assert set(dequantized) == {f"{layer}.weight" for layer in cm.layers}
    for layer, lc in cm.layers.items():
        engine = lc.weight.detach().cpu().numpy()
        assert dequantized[f"{layer}.weight"].view(np.uint32).tolist() == engine.view(np.uint32).tolist()
        c, zero, dtype = codes[f"{layer}.weight"]
        assert dtype == ("INT" if quant.scheme == "sym" else "UINT") + str(quant.bits)
        pruned = ~lc.mask.cpu().numpy()
        assert (c[pruned] == zero[pruned]).all()  # every pruned weight is the zero point ...
        # ... and the zero point appears exactly where the engine's weight is 0 (pruned, or a survivor rounded to 0)
        assert int((c == zero).sum()) == int((engine == 0).sum()) >= int(pruned.sum())


@needs_onnx
def test_onnx_is_smaller_than_fp32_onnx(case, tmp_path):
    name, model, x, calib = case
    sizes = {}
    for bits in (32, 8, 4):
        cm = compress(model, CompressionConfig(quant=QuantSpec(bits=bits), prune=PruneSpec(sparsity=0.5)))
        sizes[bits] = export_onnx(cm, tmp_path / f"{bits}.onnx", x).file_bytes
    n = sum(p.numel() for p in model.parameters())
    assert sizes[8] < sizes[32] / 2.5 and sizes[4] < sizes[8] * 0.75, sizes  # int4 packs two codes per byte
    assert sizes[32] > 4 * n  # the fp32 file holds every parameter at 4 bytes


@needs_onnx
@pytest.mark.parametrize("act_bits", [8, 4])
def test_onnx_activation_quantization(case, act_bits, tmp_path):
    name, model, x, calib = case
    if name not in ("lenet5", "digits-cnn"):
        pytest.skip("activation quantization is checked on two built-in models")
    config = CompressionConfig(quant=QuantSpec(bits=8, scheme="asym"), prune=PruneSpec(sparsity=0.5),
                               act_bits=act_bits)
    cm = compress(model, config, calib=calib)
    path = tmp_path / "act.onnx"
    export_onnx(cm, path, x)
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == len(cm.act_qparams) == len(cm.layers)
    assert ops.count("Clip") == (len(cm.layers) if act_bits < 8 else 0)
    assert agreement(cm, path, x) >= AGREEMENT


@needs_onnx
def test_onnx_per_tensor_codebook_and_cast_layers(tmp_path):
    exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), device="cpu")
    first, *rest = exp.layer_names
    config = CompressionConfig(quant=QuantSpec(bits=4, scheme="asym", granularity="tensor"),
                               prune=PruneSpec(sparsity=0.5)).with_override(
        cli_module.parse_layer_override(f"{rest[0]}:quantizer=kmeans,bits=3", CompressionConfig()))
    config = config.with_override(cli_module.parse_layer_override(f"{rest[1]}:quantizer=fp16", CompressionConfig()))
    cm = compress(exp.model, config)
    written = export_onnx(cm, tmp_path / "mixed.onnx", exp.x)
    assert set(written.float_layers) == {rest[0], rest[1]}
    assert set(written.integer_layers) == set(exp.layer_names) - {rest[0], rest[1]}
    assert stored_codes(tmp_path / "mixed.onnx")[f"{first}.weight"][2] == "UINT4"
    assert agreement(cm, tmp_path / "mixed.onnx", exp.x) >= AGREEMENT


def test_safetensors_round_trip_is_exact(tmp_path):
    exp = Experiment(load_model("lenet5", dataset="mnist"), load_dataset("mnist"), limit=256, device="cpu")
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
