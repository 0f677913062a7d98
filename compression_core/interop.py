"""Standard exports beside the packed file: ONNX with integer weights + DequantizeLinear, and safetensors.

ONNX (opset 21): torch.onnx's dynamo exporter traces the compressed model with graph optimisation off (so
BatchNorm is not folded into the convolution before it and every weight keeps its state-dict name); then each
uniform-grid weight initializer is replaced by its integer codes feeding a DequantizeLinear:

    codes   int4 / uint4 (<= 4 bits), int8 / uint8 (<= 8), int16 / uint16 (16); sym -> signed, asym -> unsigned
    scale   float32, () per tensor or (C_out,) per channel (axis 0 = output channel)
    zero    same dtype as the codes (0 for sym)          (codes, scale, zero) -> DequantizeLinear -> Conv / Gemm

Pruned weights hold the zero point, so they dequantize to exactly 0.0. k-means / pow2 codebook layers, fp16 / bf16
casts, skipped and unquantized layers keep their dequantized float32 weights. With act_bits < 32 each layer input
the engine fake-quantizes gets QuantizeLinear -> DequantizeLinear (uint8, uint16 for 16 bits) and, when the grid is
narrower than the dtype, a Clip to the grid's float range (as torch's fake quantization clamps to [qmin, qmax]).

safetensors: the dequantized state dict (float32 weights, every other tensor at its own dtype) with the config,
act_qparams and engine version in the metadata. It is not smaller than the original; it is for other tools.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .compress import attach_activation_quant
from .compressed import CompressedModel, LayerCompression
from .evaluate import predict
from .export import ExportError, write_atomically
from .methods import quantizer_info

OPSET = 21  # first opset with int4 / uint4 DequantizeLinear
INSTALL_HINT = "pip install compression-explorer[onnx]"
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # ops whose input 0 is the layer input
PASS_THROUGH = ("Transpose", "Identity", "Cast", "CastLike", "Reshape")  # between a weight and its op
ORT_BATCH = 256


@dataclass(frozen=True)
class StandardExport:
    """What a standard export wrote.

    path: the file; file_bytes: its size; format: "onnx" or "safetensors".
    integer_layers: layers stored as integer codes + DequantizeLinear (ONNX only).
    float_layers: compressible layers stored as float32 values (codebook, cast, skipped or unquantized).
    """

    path: str
    file_bytes: int
    format: str
    integer_layers: tuple[str, ...] = ()
    float_layers: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"file": self.path, "file_bytes": self.file_bytes, "format": self.format,
                "integer_layers": list(self.integer_layers), "float_layers": list(self.float_layers)}


def _onnx():
    """The optional onnx modules, or an ExportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx, onnxruntime and onnxscript ({e.name} is missing): "
                          f"{INSTALL_HINT}") from None
    return onnx, onnxruntime


def is_grid_layer(lc: LayerCompression) -> bool:
    """True when the layer's weight is integer codes on a uniform grid (stored as DequantizeLinear in ONNX)."""
    grid = lc.quant.enabled and quantizer_info(lc.quant.quantizer).kind == "grid"
    return not lc.skipped and grid and lc.codes is not None and lc.side is None  # group scales: stored as floats


# ---- integer weights -----------------------------------------------------------------------------

def _code_dtype(bits: int, scheme: str) -> str:
    """Narrowest ONNX integer type that holds a b-bit grid: e.g. (4, sym) -> INT4, (8, asym) -> UINT8."""
    width = 4 if bits <= 4 else 8 if bits <= 8 else 16
    return ("INT" if scheme == "sym" else "UINT") + str(width)


def _integer_tensor(onnx, name: str, values: np.ndarray, dtype: str):
    """TensorProto of integer `values` (int64 array) as ONNX type `dtype`; 4-bit types packed two per byte."""
    proto_type = getattr(onnx.TensorProto, dtype)
    if dtype in ("INT4", "UINT4"):
        flat = (values.reshape(-1) & 0xF).astype(np.uint8)  # two's complement nibbles, low nibble first
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        packed = (flat[0::2] | (flat[1::2] << 4)).tobytes()
        return onnx.helper.make_tensor(name, proto_type, list(values.shape), packed, raw=True)
    np_type = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16}[dtype]
    return onnx.numpy_helper.from_array(values.astype(np_type), name)


def grid_tensors(lc: LayerCompression) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int64 like the weight, scale float32 (G,), zero point int64 (G,)) of a uniform-grid layer.

    Pruned positions hold the zero point. Raises ExportError unless (codes - zero) * scale is the layer's
    weight bit for bit, the check that makes the ONNX file describe the same model as the engine.
    """
    codes = lc.codes.detach().cpu().to(torch.int64).numpy()
    scale = lc.scale.detach().cpu().to(torch.float32).numpy().reshape(-1)
    zero = lc.zero_point.detach().cpu().to(torch.int64).numpy().reshape(-1)
    per_row = (-1,) + (1,) * (codes.ndim - 1)  # (G,) -> broadcast along axis 0
    if lc.mask is not None:
        codes = np.where(lc.mask.detach().cpu().numpy(), codes, zero.reshape(per_row))
    decoded = (codes - zero.reshape(per_row)).astype(np.float32) * scale.reshape(per_row)
    weight = lc.weight.detach().cpu().to(torch.float32).numpy()
    if decoded.shape != weight.shape or not np.array_equal(decoded.view(np.uint32), weight.view(np.uint32)):
        raise ExportError(f"layer {lc.name!r}: its codes / scales do not reproduce its weight exactly; "
                          "the compressed model is inconsistent, re-run compress")
    return codes, scale, zero


def _dequantize_node(onnx, lc: LayerCompression, weight_name: str) -> tuple[list, object]:
    """Initializers (codes, scale, zero point) and the DequantizeLinear node that outputs `weight_name`."""
    codes, scale, zero = grid_tensors(lc)
    dtype = _code_dtype(lc.quant.bits, lc.quant.scheme)
    per_channel = lc.quant.granularity == "channel"
    scale_shape = scale.shape if per_channel else ()
    inits = [_integer_tensor(onnx, f"{weight_name}_quantized", codes, dtype),
             onnx.numpy_helper.from_array(scale.reshape(scale_shape), f"{weight_name}_scale"),
             _integer_tensor(onnx, f"{weight_name}_zero_point", zero.reshape(scale_shape), dtype)]
    node = onnx.helper.make_node("DequantizeLinear", [t.name for t in inits], [weight_name],
                                 name=f"{weight_name}_dequantize", **({"axis": 0} if per_channel else {}))
    return inits, node


def _quantize_weights(onnx, graph, cm: CompressedModel) -> tuple[str, ...]:
    """Replace every uniform-grid weight initializer by codes + DequantizeLinear; return those layer names."""
    by_name = {t.name: t for t in graph.initializer}
    replaced, inits, nodes = set(), [], []
    for lc in cm.layers.values():
        if not is_grid_layer(lc):
            continue
        weight_name = f"{lc.name}.weight"
        if weight_name not in by_name:
            raise ExportError(f"layer {lc.name!r}: the ONNX exporter did not keep its weight as an initializer "
                              f"named {weight_name!r}; export --format packed or safetensors instead")
        traced = onnx.numpy_helper.to_array(by_name[weight_name])
        if not np.array_equal(traced, lc.weight.detach().cpu().numpy()):
            raise ExportError(f"layer {lc.name!r}: the ONNX exporter changed its weight (folded or transposed); "
                              "export --format packed or safetensors instead")
        layer_inits, node = _dequantize_node(onnx, lc, weight_name)
        replaced.add(weight_name)
        inits += layer_inits
        nodes.append(node)
    kept = [t for t in graph.initializer if t.name not in replaced]
    _replace(graph.initializer, kept + inits)
    _replace(graph.node, nodes + list(graph.node))  # DequantizeLinear reads initializers only: first is fine
    return tuple(lc_name for lc_name in cm.layers if f"{lc_name}.weight" in replaced)


def _replace(field, items: list) -> None:
    """Set a repeated protobuf field to `items` (copies, so items may come from the field itself)."""
    items = [copy.deepcopy(i) for i in items]
    del field[:]
    field.extend(items)


# ---- activation quantization ---------------------------------------------------------------------

def _layer_op(graph, weight_name: str) -> int:
    """Index of the Conv / Gemm / MatMul node that consumes `weight_name` (through Transpose, Cast ...)."""
    frontier = {weight_name}
    for _ in range(len(PASS_THROUGH) + 1):
        users = [(i, n) for i, n in enumerate(graph.node) if frontier & set(n.input)]
        for i, n in users:
            if n.op_type in WEIGHT_OPS and n.input[0] not in frontier:
                return i
        frontier = {n.output[0] for _, n in users if n.op_type in PASS_THROUGH}
        if not frontier:
            break
    raise ExportError(f"cannot find the operator that uses {weight_name!r} in the ONNX graph, so its input cannot "
                      "be quantized; export --format packed or safetensors instead")


def _activation_nodes(onnx, layer: str, source: str, qparams: tuple[float, int, int, int]) -> tuple[list, list]:
    """(initializers, nodes) that fake-quantize tensor `source` as the engine does; last node's output is the result."""
    scale, zero, qmin, qmax = qparams
    dtype, np_type = ("UINT8", np.uint8) if qmax <= 255 else ("UINT16", np.uint16)
    s = onnx.numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{layer}.input_scale")
    z = onnx.numpy_helper.from_array(np.array(zero, dtype=np_type), f"{layer}.input_zero_point")
    q = onnx.helper.make_node("QuantizeLinear", [source, s.name, z.name], [f"{layer}.input_quantized"],
                              name=f"{layer}.input_quantize")
    dq = onnx.helper.make_node("DequantizeLinear", [q.output[0], s.name, z.name], [f"{layer}.input_dequantized"],
                               name=f"{layer}.input_dequantize")
    inits, nodes = [s, z], [q, dq]
    if qmax < np.iinfo(np_type).max:  # the grid is narrower than the dtype: clamp to its float range
        lo, hi = (np.float32(v - zero) * np.float32(scale) for v in (qmin, qmax))
        inits += [onnx.numpy_helper.from_array(np.array(lo, np.float32), f"{layer}.input_min"),
                  onnx.numpy_helper.from_array(np.array(hi, np.float32), f"{layer}.input_max")]
        nodes.append(onnx.helper.make_node("Clip", [dq.output[0], f"{layer}.input_min", f"{layer}.input_max"],
                                           [f"{layer}.input_clipped"], name=f"{layer}.input_clip"))
    return inits, nodes


def _quantize_activations(onnx, graph, act_qparams: dict[str, tuple[float, int, int, int]]) -> None:
    """Insert the Q/DQ (+ Clip) chain in front of each layer whose input the engine fake-quantizes."""
    before: dict[int, list] = {}
    inits = []
    for layer, qparams in act_qparams.items():
        index = _layer_op(graph, f"{layer}.weight")
        op = graph.node[index]
        layer_inits, nodes = _activation_nodes(onnx, layer, op.input[0], qparams)
        op.input[0] = nodes[-1].output[0]  # only this layer reads the quantized copy
        inits += layer_inits
        before.setdefault(index, []).extend(nodes)
    ordered = [n for i, node in enumerate(graph.node) for n in before.get(i, []) + [node]]
    _replace(graph.node, ordered)
    graph.initializer.extend(inits)


# ---- public API ----------------------------------------------------------------------------------

def _float_copy(cm: CompressedModel) -> torch.nn.Module:
    """A CPU copy of the compressed model without the engine's activation hooks (they become Q/DQ nodes)."""
    model = copy.deepcopy(cm.model).cpu().float().eval()
    hook_name = f"{attach_activation_quant.__qualname__}.<locals>.hook"
    for module in model.modules():
        for key, fn in list(module._forward_pre_hooks.items()):
            if getattr(fn, "__qualname__", "") == hook_name:
                del module._forward_pre_hooks[key]
    return model


def export_onnx(cm: CompressedModel, path: str | os.PathLike, example: torch.Tensor) -> StandardExport:
    """Write `cm` as an ONNX model whose uniform-grid weights are integer initializers + DequantizeLinear.

    Args:
        cm: the compressed model (not modified; a CPU copy is traced).
        path: destination .onnx file (replaced atomically).
        example: one or more input samples (N, ...) for tracing; the batch dimension is exported as dynamic.

    Returns:
        StandardExport with the file size and which layers are integer / float.

    Raises:
        ExportError: onnx / onnxruntime / onnxscript missing (with the pip line), the model cannot be traced, or
            the traced graph no longer holds a weight as the engine computed it.
    """
    onnx, _ = _onnx()
    model = _float_copy(cm)
    example = example[:2].detach().cpu().float().contiguous()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter prints progress; stdout carries --json
            program = torch.onnx.export(model, (example,), dynamo=True, optimize=False, opset_version=OPSET,
                                        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)
    except Exception as e:  # torch.export / onnxscript raise many types; the first line names the problem
        raise ExportError(f"torch.onnx could not trace this model ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node debug notes (module paths, stack) are ~20 % of a small file
        del node.metadata_props[:]
    integer_layers = _quantize_weights(onnx, proto.graph, cm)
    if cm.act_qparams:
        _quantize_activations(onnx, proto.graph, cm.act_qparams)
    onnx.checker.check_model(proto)
    size = write_atomically(Path(path), proto.SerializeToString())
    floats = tuple(name for name in cm.layers if name not in integer_layers)
    return StandardExport(str(path), size, "onnx", integer_layers, floats)


def onnx_predictions(path: str | os.PathLike, x: torch.Tensor, batch_size: int = ORT_BATCH) -> torch.Tensor:
    """Top-1 class of every sample of x (N, ...) under onnxruntime's CPU provider, int64 (N,)."""
    _, ort = _onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = x.detach().cpu().float().contiguous().numpy()
    preds = [session.run(None, {name: x[i:i + batch_size]})[0].argmax(1) for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(preds)).to(torch.int64)


def export_safetensors(cm: CompressedModel, path: str | os.PathLike) -> StandardExport:
    """Write the compressed model's state dict (dequantized float32 weights) as a plain safetensors file.

    The metadata holds `config` (CompressionConfig JSON), `act_qparams` (JSON; empty unless act_bits < 32),
    `folded` (JSON [conv, BatchNorm] pairs) and `engine_version`. Load it with `safetensors.torch.load_file` or as
    `--weights FILE` for the same architecture — when no BatchNorm was folded: a folded model's state dict has
    its BNs' statistics in the convs' weights and biases (compress with `fold_bn=False` for a drop-in file).
    """
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in cm.model.state_dict().items()}
    meta = {"format": "compression-explorer-dequantized", "config": cm.config.to_json(),
            "act_qparams": json.dumps({k: list(v) for k, v in cm.act_qparams.items()}),
            "folded": json.dumps([list(pair) for pair in cm.folded])}
    meta["engine_version"] = __version__
    size = write_atomically(Path(path), save(state, metadata=meta))
    return StandardExport(str(path), size, "safetensors", (), tuple(cm.layers))


def require_onnx() -> None:
    """Raise ExportError (with the pip line) unless the optional ONNX modules import."""
    _onnx()


def export_standard(cm: CompressedModel, path: str | os.PathLike, fmt: str, x: torch.Tensor) -> tuple[dict, list[str]]:
    """The CLI's `export --format onnx|safetensors`: write the file and say what it holds.

    Args:
        cm: the compressed model.
        path: destination file.
        fmt: "onnx" or "safetensors".
        x: evaluation inputs on the model's device; ONNX is traced on two of them and then run by onnxruntime
            on all of them to measure its top-1 agreement with the engine's model.

    Returns:
        (fields for the JSON record, lines for the human-readable output).
    """
    if fmt == "safetensors":
        written = export_safetensors(cm, path)
        return written.as_dict(), [f"wrote {path}: {written.file_bytes} bytes (dequantized float32 state dict; "
                                   "not smaller than the original, it is for other tools)"]
    written = export_onnx(cm, path, x)
    engine = predict(cm.model, x, ORT_BATCH).argmax(1).cpu()
    agreement = float((onnx_predictions(path, x) == engine).double().mean()) if len(x) else None
    fields = {**written.as_dict(), "onnx_agreement": agreement, "onnx_samples": len(x)}
    lines = [f"wrote {path}: {written.file_bytes} bytes (ONNX opset {OPSET}; integer codes + DequantizeLinear for "
             f"{len(written.integer_layers)} of {len(cm.layers)} layers)"]
    if written.float_layers:
        lines.append(f"float32 (dequantized) weights for codebook / cast / unquantized layers: "
                     f"{', '.join(written.float_layers)}")
    if agreement is not None:
        lines.append(f"onnxruntime top-1 agrees with the engine on {agreement:.2%} of {len(x)} samples")
    return fields, lines
