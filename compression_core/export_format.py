"""The packed file's envelope and header: writing the prefix and checksum, reading them back, checking every field.

A file is data from anywhere, so nothing in it is trusted: the prefix, the checksum and every header field are
checked (types, ranges, shapes, dtype names from an allow-list, section ranges and sizes) before anything is built
or decoded, and every failure is one `ExportError` line. Format versions:

    1   b"CMPX" | 1 u16 | header length u32 | payload length u64 | crc32(payload) u32 | header JSON | payload
    2   b"CMPX" | 2 u16 | header length u32 | payload length u64 | sha256 32 bytes    | header JSON | payload

Version 2 (written now) hashes everything but the digest itself — the prefix fields, the header and the payload —
with sha256: any accidental change (a flipped bit, a truncated copy, an edited header) is refused with certainty
for practical purposes, where crc32 misses 1 in 2^32 random changes and covered only the payload. The digest also
names the file's content. It is not a signature: whoever writes a file can compute it, so safety against a hostile
file comes from the checks here and from `load_exported` never importing or calling anything the file names.
Version 1 files stay readable: their payload crc32 is checked, their header is unverified but passes the same
checks, and the same rule holds (only built-in and torchvision sources are rebuilt from a file).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib

import torch
from torch import nn

from .compressed import tied_keys
from .config import CompressionConfig, ConfigError, QuantSpec
from .errors import shown
from .fold import BATCHNORMS, CONVS, replace_with_identity
from .methods import quantizer_info
from .quantize_blocks import SIDE_KINDS
from .size import SKIPPED_BUFFERS

MAGIC = b"CMPX"
VERSION = 2
START = struct.Struct("<4sH")  # magic, version: enough to choose the prefix layout
PREFIX = struct.Struct("<4sHIQ32s")  # magic, version, header bytes, payload bytes, sha256 of all but itself
PREFIX_V1 = struct.Struct("<4sHIQI")  # magic, version, header bytes, payload bytes, payload crc32
SIGNED = struct.Struct("<4sHIQ").size  # the prefix bytes the sha256 covers (all before the digest)
DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
FORMATS = ("dense", "bitmask", "csr", "relative")
KINDS = {"float32": 32, "float16": 16, "bfloat16": 16, "code": None}  # kind -> its fixed value width
FORMAT_SECTIONS = {"dense": (), "bitmask": ("mask",), "csr": ("row_ptr", "cols"), "relative": ("gaps",)}
HEADER_KEYS = {"format", "version", "source", "config", "act_qparams", "layers", "tensors", "report_bytes"}
OPTIONAL_HEADER_KEYS = {"folded"}  # [conv, BatchNorm] name pairs; absent in files written before BN folding
LAYER_KEYS = {"name", "shape", "format", "kind", "value_bits", "entries", "nnz", "index_bits", "qmin", "skipped",
              "quant", "sections"}
TENSOR_KEYS = {"name", "dtype", "shape", "section"}
MAX_ELEMENTS = 1 << 31  # per tensor: a sane bound before the rebuilt model gives the exact shapes
MAX_DIMS = 8
MAX_NAME = 512
INT32 = (-(1 << 31), (1 << 31) - 1)


class ExportError(Exception):
    """The file is not a valid export, or the compressed model cannot be written faithfully (one line)."""


class _Invalid(ValueError):
    """A header field is wrong; read_header adds the path and what to do."""


def pack_file(header_bytes: bytes, payload: bytes) -> bytes:
    """The whole version-2 file: prefix with the sha256 of everything but the digest, header JSON, payload."""
    signed = struct.pack("<4sHIQ", MAGIC, VERSION, len(header_bytes), len(payload))
    digest = hashlib.sha256(signed + header_bytes + payload).digest()
    return PREFIX.pack(MAGIC, VERSION, len(header_bytes), len(payload), digest) + header_bytes + payload


def parse_file(data: bytes, path: object) -> tuple[dict, memoryview]:
    """Check a file's prefix, length, checksum and every header field; return (header, payload).

    Raises:
        ExportError: one line naming the file and what is wrong.
    """
    if len(data) < START.size or data[:4] != MAGIC:
        raise ExportError(f"{path}: not a Compression Explorer export (bad magic); export the model again")
    version = START.unpack_from(data)[1]
    if version > VERSION:
        raise ExportError(f"{path}: export format version {version} is newer than this build reads (1 to {VERSION}); "
                          "update Compression Explorer to read it")
    if version < 1:
        raise ExportError(f"{path}: export format version {version} is not supported (this build reads 1 to "
                          f"{VERSION}); export the model again")
    layout = PREFIX if version == VERSION else PREFIX_V1
    if len(data) < layout.size:
        raise ExportError(f"{path}: file is {len(data)} bytes, shorter than its prefix (truncated); export again")
    _, _, head_len, payload_len, check = layout.unpack_from(data)
    if len(data) != layout.size + head_len + payload_len:
        raise ExportError(f"{path}: file is {len(data)} bytes, its prefix says {layout.size + head_len + payload_len}"
                          " (truncated or padded); export the model again")
    view = memoryview(data)
    payload = view[layout.size + head_len:]
    if version == VERSION:
        digest = hashlib.sha256(view[:SIGNED])
        digest.update(view[layout.size:])
        intact = digest.digest() == check
    else:
        intact = zlib.crc32(payload) == check
    if not intact:
        raise ExportError(f"{path}: checksum mismatch (corrupt or edited file); export the model again")
    try:
        header = json.loads(bytes(view[layout.size:layout.size + head_len]), parse_constant=_no_constant)
        check_header(header, version, len(payload))
    except RecursionError:
        raise ExportError(f"{path}: header is nested too deeply (corrupt file); export the model again") from None
    except _Invalid as e:
        raise ExportError(f"{path}: invalid export header: {e}; export the model again") from None
    except ValueError:  # json's own errors, including too many digits in a number
        raise ExportError(f"{path}: header is not valid JSON (corrupt file); export the model again") from None
    return header, payload


def _no_constant(name: str) -> None:
    raise _Invalid(f"the header holds {name}, which is not a number")


# ---- field checks ------------------------------------------------------------------------------

def _keys(value: object, where: str, keys: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be an object; got {type(value).__name__}")
    missing, unknown = keys - value.keys(), value.keys() - keys - optional
    if missing or unknown:
        raise _Invalid(f"{where} has missing keys {sorted(missing)} / unknown keys {sorted(map(str, unknown))[:5]}")
    return value


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Invalid(f"{where} must be an integer in [{lo}, {hi}]; got {shown(value, 40)}")
    return value


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise _Invalid(f"{where} must be a printable name of 1 to {MAX_NAME} characters; got {shown(value, 40)}")
    return value


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise _Invalid(f"{where} must be a list; got {type(value).__name__}")
    return value


def _shape(value: object, where: str, min_dims: int, smallest: int) -> int:
    """Check a shape list; return its number of elements."""
    dims = _list(value, where)
    if not min_dims <= len(dims) <= MAX_DIMS:
        raise _Invalid(f"{where} must have {min_dims} to {MAX_DIMS} dimensions; got {len(dims)}")
    n = math.prod(_int(d, f"{where}[{i}]", smallest, MAX_ELEMENTS) for i, d in enumerate(dims))
    if n > MAX_ELEMENTS:
        raise _Invalid(f"{where} holds {n} elements, more than {MAX_ELEMENTS}")
    return n


def _section(value: object, where: str, payload_len: int, size: int) -> None:
    pair = _list(value, where)
    if len(pair) != 2:
        raise _Invalid(f"{where} must be [offset, size]; got {shown(pair, 40)}")
    off, got = _int(pair[0], f"{where} offset", 0, payload_len), _int(pair[1], f"{where} size", 0, payload_len)
    if off + got > payload_len:
        raise _Invalid(f"{where} [{off}, {got}] runs past the {payload_len}-byte payload")
    if got != size:
        raise _Invalid(f"{where} holds {got} bytes; its layer needs {size}")


def check_header(header: object, version: int, payload_len: int) -> None:
    """Check every field of a parsed header against the payload length (raises _Invalid)."""
    header = _keys(header, "the header", HEADER_KEYS, OPTIONAL_HEADER_KEYS)
    if header["format"] != "compression-explorer" or header["version"] != version:
        raise _Invalid(f"format/version must be 'compression-explorer'/{version}; got "
                       f"{shown(header['format'], 40)}/{shown(header['version'], 20)}")
    source = header["source"]
    if not isinstance(source, dict) or not isinstance(source.get("kind"), str):
        raise _Invalid(f"source must be an object with a 'kind'; got {shown(source, 60)}")
    try:
        CompressionConfig.from_dict(header["config"])
    except (ConfigError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise _Invalid(f"config is not a valid compression config ({shown(str(e), 100)})") from None
    _check_act_qparams(header["act_qparams"])
    _int(header["report_bytes"], "report_bytes", 0, 1 << 62)
    names = [f"{_check_layer(e, f'layers[{i}]', payload_len)}.weight"
             for i, e in enumerate(_list(header["layers"], "layers"))]
    for i, t in enumerate(_list(header["tensors"], "tensors")):
        where = f"tensors[{i}]"
        t = _keys(t, where, TENSOR_KEYS)
        names.append(_name(t["name"], f"{where}.name"))
        if not isinstance(t["dtype"], str) or t["dtype"] not in DTYPES:
            raise _Invalid(f"{where}.dtype must be one of {', '.join(DTYPES)}; got {shown(t['dtype'], 40)}")
        n = _shape(t["shape"], f"{where}.shape", 0, 0)
        _section(t["section"], f"{where}.section", payload_len, n * DTYPES[t["dtype"]].itemsize)
    if len(set(names)) != len(names):
        raise _Invalid("a tensor name appears twice")
    for i, pair in enumerate(_list(header.get("folded", []), "folded")):
        if not isinstance(pair, list) or len(pair) != 2:
            raise _Invalid(f"folded[{i}] must be a [conv, BatchNorm] pair of names; got {shown(pair, 60)}")
        for name in pair:
            _name(name, f"folded[{i}]")


def _check_act_qparams(act: object) -> None:
    if not isinstance(act, dict):
        raise _Invalid(f"act_qparams must be an object; got {type(act).__name__}")
    for name, params in act.items():
        where = f"act_qparams[{shown(name, 40)}]"
        _name(name, where)
        params = _list(params, where)
        if len(params) != 4 or isinstance(params[0], bool) or not isinstance(params[0], (int, float)) \
                or not (math.isfinite(params[0]) and params[0] > 0):
            raise _Invalid(f"{where} must be [scale > 0, zero point, qmin, qmax]; got {shown(params, 60)}")
        _, qmin, qmax = (_int(v, where, *INT32) for v in params[1:])
        if qmin > qmax:
            raise _Invalid(f"{where} has qmin {qmin} > qmax {qmax}")


def _check_layer(entry: object, where: str, payload_len: int) -> str:
    """Check one layer entry, including the exact size of each payload section; return its name."""
    e = _keys(entry, where, LAYER_KEYS)
    name = _name(e["name"], f"{where}.name")
    n = _shape(e["shape"], f"{where}.shape", 1, 1)
    if e["format"] not in FORMATS or not isinstance(e["kind"], str) or e["kind"] not in KINDS:
        raise _Invalid(f"{where} format/kind must be one of {'/'.join(FORMATS)} / {'/'.join(KINDS)}; got "
                       f"{shown(e['format'], 30)}/{shown(e['kind'], 30)}")
    fixed = KINDS[e["kind"]]
    bits = _int(e["value_bits"], f"{where}.value_bits", fixed or 0, fixed or 32)
    entries = _int(e["entries"], f"{where}.entries", n if e["format"] == "dense" else 0, n)
    nnz = _int(e["nnz"], f"{where}.nnz", 0, n)
    index_bits = _int(e["index_bits"], f"{where}.index_bits", 1, 16)
    _int(e["qmin"], f"{where}.qmin", INT32[0], 0)
    if not isinstance(e["skipped"], bool):
        raise _Invalid(f"{where}.skipped must be true or false")
    if not isinstance(e["quant"], dict):
        raise _Invalid(f"{where}.quant must be an object; got {type(e['quant']).__name__}")
    try:
        quant = QuantSpec(**e["quant"])
    except (ConfigError, TypeError, ValueError) as err:
        raise _Invalid(f"{where}.quant is not a valid quantizer spec ({shown(str(err), 80)})") from None
    rows = e["shape"][0]
    sizes = {"values": entries * bits, "mask": n, "row_ptr": (rows + 1) * nnz.bit_length(),
             "cols": nnz * (n // rows - 1).bit_length(), "gaps": entries * index_bits}
    wanted = ["values", *FORMAT_SECTIONS[e["format"]]]
    info = quantizer_info(quant.quantizer)
    side = info.side_layout(quant, tuple(e["shape"])) if e["kind"] == "code" and info.side_layout else None
    if side is not None:  # block formats: each side tensor's exact size follows from the spec and the shape
        for key, (count, storage) in side.items():
            wanted.append(f"side_{key}")
            sizes[f"side_{key}"] = count * SIDE_KINDS[storage][0]
    elif e["kind"] == "code" and info.scale_storage == "scale":  # a grid
        wanted += ["scale"] + (["zero_point"] if quant.scheme == "asym" else [])
    elif e["kind"] == "code":
        wanted.append("codebook")
    sections = _keys(e["sections"], f"{where}.sections", set(wanted))
    for key in wanted:
        if key in ("scale", "zero_point", "codebook"):  # float32 / int32 per channel, per tensor or per level
            count = _list(sections[key], f"{where}.sections.{key}")[1:2] or [0]
            allowed = (1, rows) if key != "codebook" else range(1, (1 << bits) + 1)
            if not isinstance(count[0], int) or count[0] % 4 or count[0] // 4 not in allowed:
                raise _Invalid(f"{where}.sections.{key} size {shown(count[0], 20)} is not 4 x an allowed count")
            sizes[key] = count[0] * 8
        _section(sections[key], f"{where}.sections.{key}", payload_len, -(-sizes[key] // 8))
    return name


def refold(header: dict, model: nn.Module, path: object) -> None:
    """Give the rebuilt model the folded layout the file was written from (before `check_fits`): each folded BN
    becomes an Identity and its conv gets a bias (the file's values fill it). The names come from the file, so
    each must be a conv / BatchNorm of the rebuilt model.

    Raises:
        ExportError: one line naming the pair that does not fit.
    """
    modules = dict(model.named_modules())
    for conv_name, bn_name in header.get("folded", []):  # absent in files written before folding
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if not isinstance(conv, CONVS) or not isinstance(bn, BATCHNORMS):
            raise ExportError(f"{path}: the file folds {shown(bn_name)} into {shown(conv_name)}, but the rebuilt "
                              f"{type(model).__name__} has no such conv and BatchNorm; export the model again")
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
        replace_with_identity(model, bn_name)


def check_fits(header: dict, model: nn.Module, path: object) -> None:
    """Every name and shape in a checked header is the rebuilt model's, and the header covers all of it.

    Runs before anything is decoded, so the model (not the file) bounds what decoding allocates.

    Raises:
        ExportError: one line naming the first tensor that does not fit, or what the file lacks.
    """
    expected = model.state_dict()
    given = {f"{e['name']}.weight": e["shape"] for e in header["layers"]}
    given.update({t["name"]: t["shape"] for t in header["tensors"]})
    for key, shape in given.items():
        if key not in expected or list(expected[key].shape) != shape:
            have = tuple(expected[key].shape) if key in expected else "nothing"
            raise ExportError(f"{path}: weights do not fit the rebuilt {type(model).__name__}: {shown(key)} has "
                              f"shape {tuple(shape)} in the file, {have} in the model")
    tied = tied_keys(model, {f"{e['name']}.weight" for e in header["layers"]})  # the model re-ties them
    missing = [k for k in expected if k not in given and k not in tied and k.rsplit(".", 1)[-1] not in SKIPPED_BUFFERS]
    modules = dict(model.named_modules())
    unknown = [k for k in header["act_qparams"] if k not in modules]
    if missing or unknown:
        raise ExportError(f"{path}: weights do not fit the rebuilt {type(model).__name__}: missing "
                          f"{missing[:5]}, activation qparams for unknown layers {unknown[:5]}")
