"""Exported files are data, never code: crafted and fuzzed headers raise ExportError only, nothing a file names runs.

Most files here are re-signed after the edit (a hostile author computes the sha256 too), so the header checks, not
the checksum, must catch them; the tampering tests leave the digest alone and expect the checksum to refuse.
"""
import json
import os
import struct
import sys
import tempfile
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression_core.config import QuantSpec
from compression_core.export import PREFIX, ExportError, export, load_exported
from compression_core.export_format import PREFIX_V1, pack_file
from compression_core.models import build_architecture
from tests.core.test_export import SOURCE, SmallCNN, compress_by_hand, trained_like

BUILTIN = {"kind": "builtin", "name": "lenet5", "num_classes": 10}
FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(min_value=-2, max_value=2**70)
                    | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def split(data: bytes) -> tuple[dict, bytes]:
    """(header, payload) of a version-2 file, without any check."""
    head_len = PREFIX.unpack_from(data)[2]
    return json.loads(data[PREFIX.size:PREFIX.size + head_len]), data[PREFIX.size + head_len:]


def resign(header: dict | bytes, payload: bytes) -> bytes:
    """A version-2 file with a correct sha256 over whatever header and payload it is given."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return pack_file(raw, payload)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good exports: a SmallCNN (4-bit, half pruned, batch norm tensors) and a built-in LeNet-5 (2-bit kmeans)."""
    folder = tmp_path_factory.mktemp("exports")
    cnn = compress_by_hand(trained_like(SmallCNN), QuantSpec(bits=4, scheme="asym"), 0.5)
    export(cnn, folder / "cnn.cmpx", SOURCE)
    lenet = compress_by_hand(build_architecture(BUILTIN), QuantSpec(bits=2, quantizer="kmeans"), 0.9)
    export(lenet, folder / "lenet5.cmpx", BUILTIN)
    return {"folder": folder, "cnn": (folder / "cnn.cmpx").read_bytes(),
            "lenet5": (folder / "lenet5.cmpx").read_bytes(), "lenet5_model": lenet.model}


def load_bytes(files, data: bytes, build=lambda source: SmallCNN()):
    path = files["folder"] / "probe.cmpx"
    path.write_bytes(data)
    return load_exported(path, build=build)


def only_export_error(files, data: bytes, build=lambda source: SmallCNN()) -> None:
    """Loading `data` succeeds or raises a one-line ExportError; any other exception fails the test."""
    try:
        load_bytes(files, data, build)
    except ExportError as e:
        assert "\n" not in str(e)


# ---- property-based: mutated, random and tampered files ----------------------------------------------------

def _mutate(data, node, depth=0):
    """Walk into a random key / index of `node` and replace, delete or keep-and-descend (returns the new node)."""
    if isinstance(node, (dict, list)) and node and depth < 6 and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if data.draw(st.integers(0, 4)) == 0:
            del node[key]
        else:
            node[key] = _mutate(data, node[key], depth + 1)
        return node
    return data.draw(JSON)


@FUZZ
@given(st.data())
def test_mutated_headers_raise_export_error_only(files, data):
    header, payload = split(files["cnn"])
    mutated = _mutate(data, header)
    only_export_error(files, resign(mutated, payload))
    only_export_error(files, resign(mutated, payload), build=None)  # nothing a mutated source names is imported


@FUZZ
@given(st.data())
def test_mutated_builtin_headers_without_build(files, data):
    header, payload = split(files["lenet5"])
    only_export_error(files, resign(_mutate(data, header), payload), build=None)


@FUZZ
@given(header=JSON)
def test_random_json_headers_are_refused(files, header):
    with pytest.raises(ExportError):
        load_bytes(files, resign(json.dumps(header).encode(), b"\x00" * 64))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_header_bytes_are_refused(files, raw):
    with pytest.raises(ExportError):
        load_bytes(files, resign(raw, split(files["cnn"])[1]))


@FUZZ
@given(blob=st.binary(max_size=400))
def test_random_files_are_refused(files, blob):
    with pytest.raises(ExportError):
        load_bytes(files, blob)
    with pytest.raises(ExportError):
        load_bytes(files, b"CMPX" + blob)


@FUZZ
@given(st.data())
def test_any_tampered_byte_is_refused_by_the_checksum_or_the_prefix(files, data):
    good = files["cnn"]
    index = data.draw(st.integers(0, len(good) - 1))
    tampered = bytearray(good)
    tampered[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ExportError, match="checksum|magic|version|truncated|padded"):
        load_bytes(files, bytes(tampered))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_re_signed_payload_garbage_raises_export_error_only(files, data):
    header, payload = split(files["lenet5"])
    garbage = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 8))):
        garbage[data.draw(st.integers(0, len(garbage) - 1))] = data.draw(st.integers(0, 255))
    only_export_error(files, resign(header, bytes(garbage)), build=None)


# ---- hand-made hostile headers -----------------------------------------------------------------------------

@pytest.fixture
def tripwires(monkeypatch, tmp_path):
    """Record any call of os.abort / os.fork / tempfile.mkdtemp, and point the temp dir at an empty folder."""
    calls = []
    for module, name in ((os, "abort"), (os, "fork"), (tempfile, "mkdtemp")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield calls
    assert [p for p in temp.iterdir() if p.name.startswith("tmp")] == []  # mkdtemp's names (torch caches aside)


@pytest.mark.parametrize("factory", ["tempfile:mkdtemp", "os:abort", "os:fork", "builtins:exit",
                                     "tests.core.byo_model:tiny_mlp"])
def test_factory_sources_in_a_file_are_never_imported_or_called(files, tripwires, factory):
    header, payload = split(files["cnn"])
    header["source"] = {"kind": "factory", "factory": factory, "num_classes": None}
    sys.modules.pop("tests.core.byo_model", None)
    with pytest.raises(ExportError, match="never imports code a file names: pass build=") as err:
        load_bytes(files, resign(header, payload), build=None)
    assert factory in str(err.value) and "\n" not in str(err.value)
    assert tripwires == [] and "tests.core.byo_model" not in sys.modules


def test_a_factory_source_loads_when_the_caller_builds_it(files):
    model, meta = load_bytes(files, files["cnn"])
    assert isinstance(model, SmallCNN) and meta["source"] == SOURCE and meta["version"] == 2


def test_builtin_sources_are_rebuilt_without_build(files):
    model, meta = load_bytes(files, files["lenet5"], build=None)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), files["lenet5_model"](x))


def _edit(files, how):
    header, payload = split(files["cnn"])
    how(header)
    return resign(header, payload)


def _set(path, value):
    def apply(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


CRAFTED = {
    "dtype Tensor": (_set(["tensors", 0, "dtype"], "Tensor"), "dtype must be one of float32"),
    "dtype load": (_set(["tensors", 0, "dtype"], "load"), "dtype must be one of"),
    "dtype dunder": (_set(["tensors", 0, "dtype"], "__class__"), "dtype must be one of"),
    "dtype list": (_set(["tensors", 0, "dtype"], ["float32"]), "dtype must be one of"),
    "huge shape": (_set(["layers", 0, "shape"], [2**40, 2**40]), "must be an integer in"),
    "huge product": (_set(["layers", 0, "shape"], [2**20, 2**20]), "more than"),
    "negative dim": (_set(["layers", 0, "shape"], [-6, 1, 3, 3]), "must be an integer in"),
    "shape string": (_set(["layers", 0, "shape"], "6x1x3x3"), "must be a list"),
    "too many dims": (_set(["tensors", 0, "shape"], [1] * 9), "dimensions"),
    "section past payload": (_set(["tensors", 0, "section"], [10**9, 24]), "must be an integer in"),
    "section overrun": (lambda h: h["tensors"][0]["section"].__setitem__(0, h["tensors"][0]["section"][0] + 10**6),
                        "must be an integer in|runs past"),
    "section size": (lambda h: h["tensors"][0]["section"].__setitem__(1, 4), "holds 4 bytes"),
    "section triple": (_set(["tensors", 0, "section"], [0, 1, 2]), r"must be \[offset, size\]"),
    "missing layers": (lambda h: h.pop("layers"), "missing keys \\['layers'\\]"),
    "unknown key": (_set(["exec"], "os.abort()"), "unknown keys \\['exec'\\]"),
    "layer name int": (_set(["layers", 0, "name"], 5), "name must be a printable name"),
    "layer name newline": (_set(["layers", 0, "name"], "conv\nx"), "printable name"),
    "bad format": (_set(["layers", 0, "format"], "zip"), "format/kind must be one of"),
    "bad kind": (_set(["layers", 0, "kind"], "pickle"), "format/kind must be one of"),
    "value bits 99": (_set(["layers", 0, "value_bits"], 99), "value_bits must be an integer"),
    "entries bool": (_set(["layers", 0, "entries"], True), "entries must be an integer"),
    "quant unknown": (_set(["layers", 0, "quant", "bits"], 3.5), "not a valid quantizer spec"),
    "extra section": (_set(["layers", 0, "sections", "codebook"], [0, 4]), "unknown keys"),
    "act unknown layer": (_set(["act_qparams"], {"nowhere": [0.1, 0, 0, 255]}), "unknown layers \\['nowhere'\\]"),
    "act nan": (_set(["act_qparams"], {"conv": [float("nan"), 0, 0, 255]}), "NaN"),
    "act qmin>qmax": (_set(["act_qparams"], {"conv": [0.1, 0, 9, 1]}), "qmin 9 > qmax 1"),
    "config junk": (_set(["config"], {"quant": {"bits": 99}}), "not a valid compression config"),
    "config list": (_set(["config"], [1, 2]), "not a valid compression config"),
    "version field": (_set(["version"], 1), "format/version"),
    "source string": (_set(["source"], "os:abort"), "source must be an object"),
    "builtin huge head": (_set(["source"], {"kind": "builtin", "name": "lenet5", "num_classes": 10**9}),
                          "num_classes must be an integer"),
    "builtin unknown": (_set(["source"], {"kind": "builtin", "name": "os"}), "unknown built-in model"),
    "torchvision mismatch": (_set(["source"], {"kind": "torchvision", "name": "squeezenet1_1", "num_classes": 10}),
                             "do not fit the rebuilt SqueezeNet"),
    "duplicate tensor": (lambda h: h["tensors"].append(dict(h["tensors"][0])), "appears twice"),
    "renamed tensor": (_set(["tensors", 0, "name"], "bn.secret"), "'bn.secret' has shape"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_are_refused_with_one_line(files, tripwires, case):
    how, says = CRAFTED[case]
    build = None if case.startswith(("builtin", "torchvision")) else (lambda source: SmallCNN())
    with pytest.raises(ExportError, match=says) as err:
        load_bytes(files, _edit(files, how), build=build)
    assert "\n" not in str(err.value) and "probe.cmpx" in str(err.value)
    assert tripwires == []


def test_deeply_nested_and_non_json_headers(files):
    payload = split(files["cnn"])[1]
    for raw, says in ((b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"\xff\xfe", "not valid JSON"),
                      (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"), (b"NaN", "not a number")):
        with pytest.raises(ExportError, match=says):
            load_bytes(files, resign(raw, payload))


def test_nan_weights_in_a_re_signed_file_are_refused(files):
    header, payload = split(files["cnn"])
    t = next(t for t in header["tensors"] if t["dtype"] == "float32")
    off = t["section"][0]
    poisoned = payload[:off] + struct.pack("<f", float("nan")) + payload[off + 4:]
    with pytest.raises(ExportError, match=f"tensor '{t['name']}' holds NaN/Inf"):
        load_bytes(files, resign(header, poisoned))


def test_a_tampered_header_byte_is_refused_by_the_checksum(files):
    data = bytearray(files["cnn"])
    at = data.index(b'"conv"', PREFIX.size)
    data[at + 1:at + 5] = b"fc00"  # still valid JSON: only the checksum can tell
    with pytest.raises(ExportError, match="checksum mismatch"):
        load_bytes(files, bytes(data))


def test_newer_and_older_versions(files):
    data = files["cnn"]
    newer = data[:4] + struct.pack("<H", 3) + data[6:]
    with pytest.raises(ExportError, match="version 3 is newer than this build reads \\(1 to 2\\); update"):
        load_bytes(files, newer)
    with pytest.raises(ExportError, match="version 0 is not supported"):
        load_bytes(files, data[:4] + struct.pack("<H", 0) + data[6:])


def _version_1(header: dict, payload: bytes) -> bytes:
    raw = json.dumps({**header, "version": 1}).encode()
    return PREFIX_V1.pack(b"CMPX", 1, len(raw), len(payload), zlib.crc32(payload)) + raw + payload


def test_version_1_files_stay_readable_under_the_same_rules(files, tripwires):
    header, payload = split(files["lenet5"])
    model, meta = load_bytes(files, _version_1(header, payload), build=None)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), files["lenet5_model"](x)) and meta["version"] == 1
    header["source"] = {"kind": "factory", "factory": "tempfile:mkdtemp", "num_classes": None}
    with pytest.raises(ExportError, match="never imports code"):
        load_bytes(files, _version_1(header, payload), build=None)
    flipped = bytearray(_version_1(*split(files["lenet5"])))
    flipped[-3] ^= 1
    with pytest.raises(ExportError, match="checksum"):
        load_bytes(files, bytes(flipped), build=None)
    assert tripwires == []
