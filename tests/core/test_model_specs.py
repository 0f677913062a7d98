"""Factory specs are a trust boundary: stdlib, malformed and not-allowed specs are refused before any import, and
whatever user code raises (SyntaxError, SystemExit, KeyboardInterrupt) becomes one ModelLoadError line."""
import builtins
import os
import sys
import tempfile
import textwrap

import pytest
import torch
from torch import nn

from compression_core.models import ModelLoadError, build_architecture, load_model, resolve_factory

TARGETS = [(os, "abort"), (os, "fork"), (os, "system"), (tempfile, "mkdtemp"), (builtins, "exit")]
STDLIB_SPECS = ["os:abort", "builtins:exit", "tempfile:mkdtemp", "os:fork", "this:x", "os.path:join",
                "subprocess:call", "shutil:rmtree", "importlib:import_module", "pdb:set_trace",
                "antigravity:geohash", "code:interact", "multiprocessing:Process"]
MALFORMED = [".rel:x", "", ":", "pkg:", ":fn", "pkg..mod:fn", "pkg.mod.:fn", "pkg mod:fn", "pkg.mod:fn\n",
             "pkg.mod:fn x", "\tpkg:fn", "pkg:1fn", "pkg:fn.attr", "a:b:c", "class:fn", "pkg:f\u00f1", "pkg;rm:fn",
             "../etc:passwd", "x" * 300 + ":f", "pkg.__init__:fn", "__main__:main", "pkg:fn()", "pkg:lambda",
             "pkg/mod:fn"]
DUNDER = ["pkg:__class__", "pkg:__init__", "torch.nn:__getattr__"]


@pytest.fixture
def calls(monkeypatch):
    """Replace the dangerous stdlib callables with recorders: any call would show up in the returned list."""
    seen = []
    for module, name in TARGETS:
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: seen.append(_n))
    return seen


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`user_module(name, source)`: a module of ours written into tmp_path, importable as `name` for this test."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    yield write
    for path in tmp_path.glob("*.py"):
        sys.modules.pop(path.stem, None)


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("spec", STDLIB_SPECS)
def test_standard_library_is_refused_before_import(spec, calls, capsys):
    module = spec.partition(":")[0]
    imported_before = module in sys.modules
    with pytest.raises(ModelLoadError, match="standard library") as err:
        resolve_factory(spec)
    assert "a class subclassing torch.nn.Module or a function defined in your own module" in _one_line(err)
    with pytest.raises(ModelLoadError, match="standard library"):
        load_model(spec, num_classes=10)  # the CLI's way in
    assert calls == [] and capsys.readouterr().out == ""  # `this` would print the Zen of Python on import
    assert (module in sys.modules) == imported_before


@pytest.mark.parametrize("spec", MALFORMED + [None, 5, b"os:abort"])
def test_malformed_specs_are_refused(spec, calls):
    with pytest.raises(ModelLoadError, match="must look like package.module:function") as err:
        resolve_factory(spec)
    _one_line(err)
    assert calls == []


@pytest.mark.parametrize("spec", DUNDER)
def test_dunder_attributes_are_refused(spec):
    with pytest.raises(ModelLoadError, match="special attribute") as err:
        resolve_factory(spec)
    _one_line(err)


def test_a_module_class_from_a_library_is_allowed():
    assert resolve_factory("torch.nn:Identity") is nn.Identity
    loaded = load_model("torch.nn:Identity")
    assert isinstance(loaded.model, nn.Identity) and loaded.source["kind"] == "factory"
    assert resolve_factory("tests.core.byo_model:tiny_mlp").__name__ == "tiny_mlp"


@pytest.mark.parametrize("prefixes, allowed", [
    (None, True), (["tests"], True), (["tests.core"], True), (["tests.core.byo_model"], True),
    (["other", "tests.core"], True), ([], False), (["tests.cor"], False), (["tests.core.byo"], False),
    (["tests.core.byo_model.x"], False), (["mypkg"], False),
])
def test_allowed_prefixes_match_whole_components(prefixes, allowed):
    spec = "tests.core.byo_model:tiny_mlp"
    if allowed:
        assert resolve_factory(spec, allowed_prefixes=prefixes).__name__ == "tiny_mlp"
        return
    with pytest.raises(ModelLoadError, match="not from an allowed module; allowed module prefixes: ") as err:
        resolve_factory(spec, allowed_prefixes=prefixes)
    assert (", ".join(prefixes) or "none (built-in models and torchvision:NAME only)") in _one_line(err)
    with pytest.raises(ModelLoadError, match="not from an allowed module"):
        load_model(spec, allowed_factories=prefixes)


def test_stdlib_is_refused_even_when_an_operator_allows_it(calls):
    with pytest.raises(ModelLoadError, match="standard library"):
        load_model("os:abort", allowed_factories=["os"])
    assert calls == []


@pytest.mark.parametrize("source, says", [
    ("def build(:\n", "SyntaxError"),
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
])
def test_user_module_failing_at_import_is_one_line(user_module, source, says):
    name = user_module("byo_broken_import", source + "def build(num_classes=10):\n    return None\n")
    with pytest.raises(ModelLoadError, match="cannot import 'byo_broken_import'") as err:
        load_model(f"{name}:build")
    assert says in _one_line(err)


@pytest.mark.parametrize("body, says", [
    ("raise SystemExit('bye')", "failed: SystemExit: bye"),
    ("raise KeyboardInterrupt()", "failed: KeyboardInterrupt"),
    ("raise ValueError('bad size')", "failed: ValueError: bad size"),
    ("return 'a model'", "must return a torch.nn.Module; got str"),
])
def test_user_factory_failing_when_called_is_one_line(user_module, body, says):
    name = user_module("byo_failing_call", f"def build(num_classes=10):\n    {body}\n")
    with pytest.raises(ModelLoadError, match=says) as err:
        load_model(f"{name}:build", num_classes=4)
    assert "byo_failing_call:build(num_classes=4)" in _one_line(err) or "must return" in str(err.value)


@pytest.mark.parametrize("attr, says", [
    ("mkdtemp", "function from tempfile"),  # a stdlib function re-exported by a user module
    ("abort", "builtin_function_or_method from posix"),
    ("partial_net", "partial"),
    ("NotAModule", "type from byo_reexports"),
    ("LIMIT", "int"),
    ("torch", "module"),
])
def test_re_exports_and_non_factories_are_refused_without_a_call(user_module, tmp_path, monkeypatch, attr, says):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where a call of the re-exported mkdtemp would write
    name = user_module("byo_reexports", """
        import functools
        from os import abort
        from tempfile import mkdtemp
        import torch
        from torch import nn

        LIMIT = 5
        partial_net = functools.partial(nn.Linear, 4)

        class NotAModule:
            pass
    """)
    with pytest.raises(ModelLoadError, match=f"is a {says}.*a factory must be") as err:
        resolve_factory(f"{name}:{attr}")
    _one_line(err)
    with pytest.raises(ModelLoadError, match="a factory must be"):
        load_model(f"{name}:{attr}", num_classes=10)
    assert list(temp.iterdir()) == []


def test_missing_attribute(user_module):
    name = user_module("byo_empty", "X = 1\n")
    with pytest.raises(ModelLoadError, match="module 'byo_empty' has no factory 'nope'"):
        resolve_factory(f"{name}:nope")


@pytest.mark.parametrize("num_classes", [0, -1, True, "10", 10**9, 2.5])
def test_bad_class_counts_are_refused(num_classes):
    with pytest.raises(ModelLoadError, match=r"num_classes must be an integer in \[1, 100000\]"):
        build_architecture({"kind": "factory", "factory": "tests.core.byo_model:tiny_mlp",
                            "num_classes": num_classes})


@pytest.mark.parametrize("source, says", [
    ({"kind": "pickle"}, "kind must be one of builtin, factory, torchvision"), ("lenet5", "kind must be one of"),
    ({"kind": "builtin", "name": ["lenet5"]}, "unknown built-in model"),
    ({"kind": "torchvision", "name": "resnet18; rm"}, "torchvision model name must be a name"),
    ({"kind": "factory", "factory": "os:abort"}, "standard library"),
])
def test_bad_sources_are_refused(source, says, calls):
    with pytest.raises(ModelLoadError, match=says):
        build_architecture(source)
    assert calls == []


def test_build_architecture_honours_allowed_factories():
    source = {"kind": "factory", "factory": "tests.core.byo_model:tiny_mlp", "num_classes": 3}
    assert build_architecture(source, allowed_factories=["tests"])(torch.zeros(1, 64)).shape == (1, 3)
    with pytest.raises(ModelLoadError, match="not from an allowed module"):
        build_architecture(source, allowed_factories=())
