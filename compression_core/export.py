"""Write a compressed model to a real packed file, in exactly the layout size.py costed, and load it back.

File layout (little-endian; the prefix, checksum and header checks live in `export_format`):

    b"CMPX" | version 2 u16 | header length u32 | payload length u64 | sha256 | header JSON | payload

The sha256 covers the prefix fields, the header and the payload. The JSON header holds the architecture `source`
(for models.build_architecture), the config, act_qparams, `folded` ([conv, BatchNorm] name pairs: the rebuilt
model's BN becomes an Identity and its conv gets a bias before loading; absent in files without folding) and, per
layer, its shape, storage format, value kind / width and the byte ranges of its payload sections. Payload sections
are byte-aligned bitstreams (LSB first, `width` bits per entry):

    values      entries x value_bits      integer codes (grids: code - qmin) or raw fp32 / fp16 / bf16 bits
    mask        n x 1                     bitmask format
    row_ptr     (rows+1) x ceil(log2(nnz+1)), cols  nnz x ceil(log2(cols))          csr format
    gaps        entries x index_bits      relative format (fillers included)
    scale       float32 per scale; zero_point int32 (asym only); codebook float32 levels
    side_NAME   each side tensor of a block format (group scales, FP / MX / NF4), raw in its storage kind
                (quantize_blocks.SIDE_KINDS: float32 / float16 / e8m0 byte / int8 / int32), in row order
    tensors     every other state-dict tensor, raw, at its own dtype

Decoding: grids w = (code - zp) * scale per output channel; codebooks w = codebook[code] (code K = 0); side data:
the quantizer's registered `decode(stored codes, side tensors, spec)`. Which applies follows the quantizer's
registry entry (value_storage / scale_storage / side_layout, see size.value_kind / scale_kind).
`export` decodes what it wrote and refuses to finish unless the weights come back bit-for-bit.

Files carry data, never code: `load_exported` rebuilds only `builtin` and `torchvision` sources by itself; for any
other source (a `package.module:factory`; an `hf:` folder, via `models.hf_builder(FOLDER)`) the caller passes
`build=` — nothing a file names is imported, called or read.
Every header field is checked before use, the layer and tensor names and shapes must match the rebuilt model
before anything is decoded, and decoded values must be finite. Version-1 files (payload crc32 only) stay readable
under the same rules; see `export_format` for why version 2 uses sha256. Every failure is one `ExportError` line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .compressed import CompressedModel, LayerCompression
from .config import QuantSpec, quant_to_dict
from .errors import shown
from .export_format import DTYPES, MAGIC, PREFIX, VERSION, ExportError, check_fits, pack_file, parse_file, \
    refold
from .methods import quantizer_info
from .quantize import qrange
from .quantize_blocks import SIDE_KINDS
from .size import LayerSize, flat_positions, needs_zero_code, other_tensors, relative_fillers, scale_kind, \
    size_report, value_kind

CHUNK = 1 << 18  # entries packed per step; a multiple of 8, so every chunk ends on a byte boundary
__all__ = ["MAGIC", "PREFIX", "VERSION", "ExportError", "export", "load_exported", "pack_bits", "read_header",
           "unpack_bits"]
# raw float value kinds: (torch dtype, same-width integer dtype its bits are viewed as)
FLOAT_KINDS = {"float32": (torch.float32, torch.int32), "float16": (torch.float16, torch.int16),
               "bfloat16": (torch.bfloat16, torch.int16)}


# ---- bit packing -------------------------------------------------------------------------------

def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers (< 2^width) into an LSB-first bitstream of exactly ceil(len * width / 8) bytes."""
    if width == 0 or values.size == 0:
        return b""
    if width in (8, 16, 32):
        return values.astype(f"<u{width // 8}").tobytes()
    out = []
    for start in range(0, values.size, CHUNK):
        v = values[start:start + CHUNK].astype(np.uint32)
        bits = np.empty((v.size, width), dtype=np.uint8)  # (entries, width), bit j of each entry
        for j in range(width):
            bits[:, j] = (v >> j) & 1
        out.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def unpack_bits(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of pack_bits: `count` unsigned integers of `width` bits as int64."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    if len(data) != -(-count * width // 8):
        raise ExportError(f"corrupt export: a section holds {len(data)} bytes, expected {count} x {width} bits")
    if width in (8, 16, 32):
        return np.frombuffer(data, dtype=f"<u{width // 8}", count=count).astype(np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(count, dtype=np.int64)
    step = CHUNK * width // 8  # bytes per chunk of CHUNK entries
    for i, start in enumerate(range(0, count, CHUNK)):
        m = min(CHUNK, count - start)
        bits = np.unpackbits(raw[i * step:i * step + -(-m * width // 8)], count=m * width, bitorder="little")
        bits = bits.reshape(m, width)
        acc = np.zeros(m, dtype=np.int64)
        for j in range(width):
            acc |= bits[:, j].astype(np.int64) << j
        out[start:start + m] = acc
    return out


# ---- encoding ----------------------------------------------------------------------------------

def _stored_values(lc: LayerCompression) -> np.ndarray:
    """Every position's stored unsigned value, int64 (n,): pruned positions hold the code of 0."""
    kind = value_kind(lc)
    w = lc.weight.detach().cpu().reshape(-1)
    if kind in FLOAT_KINDS:
        dtype, int_dtype = FLOAT_KINDS[kind]
        raw = w.to(dtype).view(int_dtype).numpy()
        return raw.view(f"u{raw.itemsize}").astype(np.int64)  # the raw bits as unsigned integers
    if lc.codes is None:
        raise ExportError(f"layer {lc.name!r} is {lc.quant.quantizer}-quantized but has no codes; re-run compress")
    codes = lc.codes.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if scale_kind(lc) == "side":  # codes at pruned positions already decode to 0
        grid = quantizer_info(lc.quant.quantizer).kind == "grid"
        return codes - qrange(lc.quant.bits, lc.quant.scheme)[0] if grid else codes
    if scale_kind(lc) == "scale":
        zp = lc.zero_point.detach().cpu().to(torch.int64).numpy()
        zero = np.repeat(zp, lc.n // zp.size) if lc.quant.scheme == "asym" else np.zeros(lc.n, np.int64)
        qmin = qrange(lc.quant.bits, lc.quant.scheme)[0]
        stored, zero = codes - qmin, zero - qmin
    else:
        hits = np.flatnonzero(lc.codebook.detach().cpu().numpy() == 0)
        zero_code = len(lc.codebook) if needs_zero_code(lc) else int(hits[0])
        stored, zero = codes, np.full(lc.n, zero_code, dtype=np.int64)
    if lc.mask is not None:
        keep = lc.mask.detach().cpu().reshape(-1).numpy()
        stored = np.where(keep, stored, zero)
    return stored


def _layer_sections(lc: LayerCompression, ls: LayerSize, index_bits: int) -> dict[str, bytes]:
    """The packed sections of one layer in the format the size report chose."""
    stored = _stored_values(lc)
    sections: dict[str, bytes] = {}
    if ls.index_format == "dense":
        sections["values"] = pack_bits(stored, ls.value_bits)
    else:
        pos = flat_positions(lc.mask)
        if ls.index_format == "bitmask":
            sections["mask"] = pack_bits(lc.mask.detach().cpu().reshape(-1).numpy(), 1)
        elif ls.index_format == "csr":
            rows, cols = lc.shape[0], lc.n // lc.shape[0]
            row_ptr = np.concatenate(([0], np.cumsum(np.bincount(pos // cols, minlength=rows))))
            sections["row_ptr"] = pack_bits(row_ptr, ls.nnz.bit_length())
            sections["cols"] = pack_bits(pos % cols, (cols - 1).bit_length())
        else:
            pos, gaps = _relative_entries(pos, index_bits)
            sections["gaps"] = pack_bits(gaps, index_bits)
        sections["values"] = pack_bits(stored[pos], ls.value_bits)
    if scale_kind(lc) == "scale":
        sections["scale"] = lc.scale.detach().cpu().to(torch.float32).numpy().tobytes()
        if lc.quant.scheme == "asym":
            sections["zero_point"] = lc.zero_point.detach().cpu().to(torch.int32).numpy().tobytes()
    elif scale_kind(lc) == "codebook":
        sections["codebook"] = lc.codebook.detach().cpu().to(torch.float32).numpy().tobytes()
    elif scale_kind(lc) == "side":
        layout = quantizer_info(lc.quant.quantizer).side_layout(lc.quant, tuple(lc.shape))
        for name, (_, storage) in layout.items():
            raw = lc.side[name].detach().cpu().reshape(-1).contiguous().view(SIDE_KINDS[storage][2])
            sections[f"side_{name}"] = raw.numpy().astype(SIDE_KINDS[storage][1]).tobytes()
    return sections


def _relative_entries(pos: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, gap) of every relative-index entry, fillers included, both int64 (nnz + fillers,)."""
    span = 1 << index_bits
    fill = relative_fillers(pos, index_bits)
    prev = np.concatenate(([-1], pos[:-1]))
    counts = fill + 1  # fillers then the real entry, per kept weight
    owner = np.repeat(np.arange(pos.size), counts)
    j = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)  # index within the group
    real = j == fill[owner]
    entry_pos = np.where(real, pos[owner], prev[owner] + (j + 1) * span)
    gaps = np.where(real, pos[owner] - prev[owner] - 1 - fill[owner] * span, span - 1)
    return entry_pos, gaps


# ---- decoding ----------------------------------------------------------------------------------

def _decode_layer(entry: dict, payload: memoryview) -> torch.Tensor:
    """Rebuild one float32 weight from its header entry and the payload."""
    def section(key: str) -> memoryview:  # ranges and sizes were checked with the header
        off, size = entry["sections"][key]
        return payload[off:off + size]

    shape, fmt, kind = tuple(entry["shape"]), entry["format"], entry["kind"]
    n = int(np.prod(shape))
    values = unpack_bits(section("values"), entry["entries"], entry["value_bits"])
    if fmt == "dense":
        pos = np.arange(n)
    elif fmt == "bitmask":
        pos = np.flatnonzero(unpack_bits(section("mask"), n, 1))
    elif fmt == "csr":
        rows, cols = shape[0], n // shape[0]
        row_ptr = unpack_bits(section("row_ptr"), rows + 1, entry["nnz"].bit_length())
        if row_ptr[0] != 0 or row_ptr[-1] != entry["nnz"] or (np.diff(row_ptr) < 0).any():
            raise ExportError(f"corrupt export: the row pointers of layer {entry['name']!r} are not 0 .. nnz in order")
        pos = np.repeat(np.arange(rows), np.diff(row_ptr)) * cols + unpack_bits(
            section("cols"), entry["nnz"], (cols - 1).bit_length())
    else:
        pos = np.cumsum(unpack_bits(section("gaps"), entry["entries"], entry["index_bits"]) + 1) - 1
    if pos.size != values.size or (pos.size and (pos.min() < 0 or pos.max() >= n)):
        raise ExportError(f"corrupt export: the index of layer {entry['name']!r} does not fit its shape {shape}")
    info, spec = side_spec(entry)
    if spec is not None:
        w = _decode_side(entry, section, info, spec, values, pos)
    elif kind in FLOAT_KINDS:
        dtype, int_dtype = FLOAT_KINDS[kind]
        size = int_dtype.itemsize
        w = torch.from_numpy(values.astype(f"<u{size}").view(f"<i{size}")).view(dtype).float()
    elif quantizer_info(entry["quant"]["quantizer"]).scale_storage == "scale":  # known: the header check built it
        scale = torch.from_numpy(np.frombuffer(section("scale"), dtype="<f4").copy())
        zp = (np.frombuffer(section("zero_point"), dtype="<i4").astype(np.int64) if "zero_point" in entry["sections"]
              else np.zeros(scale.numel(), np.int64))
        ch = pos // (n // scale.numel())  # output channel of each entry (0 for per-tensor)
        w = torch.from_numpy(values + entry["qmin"] - zp[ch]).to(torch.float32) * scale[torch.from_numpy(ch)]
    else:
        table = np.append(np.frombuffer(section("codebook"), dtype="<f4"), np.float32(0.0))
        if values.size and values.max() >= table.size:
            raise ExportError(f"corrupt export: layer {entry['name']!r} uses code {values.max()} of a "
                              f"{table.size - 1}-level codebook")
        w = torch.from_numpy(table[values])
    full = torch.zeros(n, dtype=torch.float32)
    full[torch.from_numpy(pos)] = w
    return full.reshape(shape)


def side_spec(entry: dict):
    """(quantizer info, QuantSpec) of a checked layer entry whose quantizer stores side tensors; (None, None)
    for the classic grid / codebook / float layouts."""
    if entry["kind"] != "code":
        return None, None
    spec = QuantSpec(**entry["quant"])  # valid: the header check built it
    info = quantizer_info(spec.quantizer)
    if info.side_layout is None or info.side_layout(spec, tuple(entry["shape"])) is None:
        return None, None
    return info, spec


def _decode_side(entry: dict, section, info, spec, values: np.ndarray, pos: np.ndarray) -> torch.Tensor:
    """Values at `pos` of a side-data layer: every code laid out (0 where not stored), decoded by the quantizer."""
    shape = tuple(entry["shape"])
    side = {}
    for name, (count, storage) in info.side_layout(spec, shape).items():
        raw = np.frombuffer(section(f"side_{name}"), dtype=SIDE_KINDS[storage][1], count=count)
        side[name] = torch.from_numpy(raw.copy()).view(SIDE_KINDS[storage][2])
    codes = torch.zeros(int(np.prod(shape)), dtype=torch.int64)
    codes[torch.from_numpy(pos)] = torch.from_numpy(values)
    return info.decode(codes.reshape(shape), side, spec).reshape(-1)[torch.from_numpy(pos)].float()


# ---- public API --------------------------------------------------------------------------------

def export(cm: CompressedModel, path: str | os.PathLike, source: dict) -> int:
    """Write `cm` to `path` as a packed file whose size agrees with size_report(cm).

    Args:
        cm: the compressed model.
        path: destination file (replaced atomically).
        source: how to rebuild the architecture, as in models.build_architecture (stored in the header).

    Returns:
        The number of bytes written.
    """
    state = cm.model.state_dict()
    report = size_report(cm, state)
    index_bits = cm.config.index_bits
    chunks: list[bytes] = []
    offset = 0

    def add(data: bytes) -> list[int]:
        nonlocal offset
        chunks.append(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    layers = []
    for lc, ls in zip(cm.layers.values(), report.layers):
        uniform = scale_kind(lc) == "scale"
        entry = {"name": lc.name, "shape": list(lc.shape), "format": ls.index_format, "kind": value_kind(lc),
                 "value_bits": ls.value_bits, "entries": ls.entries, "nnz": ls.nnz, "index_bits": index_bits,
                 "qmin": qrange(lc.quant.bits, lc.quant.scheme)[0] if uniform else 0, "skipped": lc.skipped,
                 "quant": quant_to_dict(lc.quant)}
        sections = _layer_sections(lc, ls, index_bits)
        entry["sections"] = {key: add(data) for key, data in sections.items()}
        layers.append(entry)
    tensors = []
    for key, t in other_tensors(cm, state).items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        tensors.append({"name": key, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "section": add(raw)})
    payload = b"".join(chunks)
    header = {"format": "compression-explorer", "version": VERSION, "source": source,
              "config": cm.config.to_dict(), "act_qparams": {k: list(v) for k, v in cm.act_qparams.items()},
              "layers": layers, "tensors": tensors, "report_bytes": report.total_bytes,
              "folded": [list(pair) for pair in cm.folded]}
    _verify(cm, state, layers, memoryview(payload))
    try:
        head = json.dumps(header, separators=(",", ":")).encode()
    except TypeError as e:
        raise ExportError(f"source must be a JSON-serialisable dict as models.build_architecture takes; {e}") from None
    return write_atomically(Path(path), pack_file(head, payload))


def write_atomically(path: Path, data: bytes) -> int:
    """Write `data` to `path` through a temp file and a rename (no half-written file); return the byte count.

    Raises:
        ExportError: the path cannot be written (one line).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {e.strerror}; choose a writable path") from None
    return len(data)


def _verify(cm: CompressedModel, state: dict, layers: list[dict], payload: memoryview) -> None:
    """Decode every layer from the payload and insist it equals the in-memory weight exactly."""
    for entry in layers:
        decoded = _decode_layer(entry, payload)
        lc = cm.layers[entry["name"]]
        model_w = state.get(f"{lc.name}.weight", lc.weight)
        if not (torch.equal(decoded, lc.weight.detach().cpu().float()) and torch.equal(decoded, model_w.cpu().float())):
            raise ExportError(f"layer {lc.name!r}: its codes / scales do not reproduce its weight exactly; "
                              "the compressed model is inconsistent, re-run compress")


def read_header(path: str | os.PathLike) -> tuple[dict, memoryview]:
    """Check the file's prefix, length, checksum and every header field; return (header, payload).

    Raises:
        ExportError: one line naming the file and what is wrong.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror}; give the path of a file written by export") from None
    return parse_file(data, path)


def load_exported(path: str | os.PathLike,
                  build: Callable[[dict], nn.Module] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the compressed model from an exported file alone.

    Args:
        path: a file written by `export`.
        build: source dict -> untrained module. Needed for a factory source; without it only `builtin` and
            `torchvision` sources are rebuilt (models.build_architecture), so nothing the file names is imported.

    Returns:
        (model in eval mode with the decoded weights and activation fake-quant re-attached, header dict).

    Raises:
        ExportError: one line — unreadable, corrupt or edited file, invalid header field, a factory source without
            `build`, names or shapes that do not match the rebuilt model, non-finite values.
    """
    header, payload = read_header(path)
    model = _rebuild(header["source"], build, path)
    refold(header, model, path)
    check_fits(header, model, path)
    state = {f"{e['name']}.weight": _decode_layer(e, payload) for e in header["layers"]}
    for t in header["tensors"]:
        off, size = t["section"]
        raw = torch.frombuffer(bytearray(payload[off:off + size]), dtype=torch.uint8)
        state[t["name"]] = raw.view(DTYPES[t["dtype"]]).reshape(t["shape"])
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{path}: tensor {bad[0]!r} holds NaN/Inf values; refusing to load it")
    model.load_state_dict(state, strict=False)  # names and shapes were checked; skipped buffers keep their value
    model.eval()
    if header["act_qparams"]:
        from .compress import attach_activation_quant
        act = header["act_qparams"]  # checked: [scale > 0, zero point, qmin <= qmax] per known layer
        attach_activation_quant(model, {k: (float(s), z, lo, hi) for k, (s, z, lo, hi) in act.items()})
    return model, {**header, "file_bytes": Path(path).stat().st_size}


def _rebuild(source: dict, build: Callable[[dict], nn.Module] | None, path: object) -> nn.Module:
    """The untrained model: the caller's `build`, or a built-in / torchvision architecture (never a factory)."""
    if build is None:
        if source["kind"] == "hf":
            raise ExportError(f"{path}: the file's model is hf:{shown(source.get('path'))}; load_exported never reads "
                              "a folder a file names: pass build=models.hf_builder(FOLDER), the model's folder")
        if source["kind"] not in ("builtin", "torchvision"):
            raise ExportError(f"{path}: the file's model source is {source['kind']} {shown(source.get('factory'))}; "
                              "load_exported never imports code a file names: pass build= (source -> nn.Module)")
        from .models import ModelLoadError, build_architecture
        try:
            model = build_architecture(source, allowed_factories=())
        except ModelLoadError as e:
            raise ExportError(f"{path}: cannot rebuild the file's model: {e}") from None
    else:
        model = build(source)
    if not isinstance(model, nn.Module):
        raise ExportError(f"{path}: build returned a {type(model).__name__}, not a torch.nn.Module")
    return model
