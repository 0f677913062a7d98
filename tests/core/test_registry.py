"""The method tables: the only place a method name is spelled, and what drives config, compress, size and export.

The toy methods are the worked examples of docs/REGISTRIES.md: the test executes that file's code blocks, so
the documented example is exactly what runs here.
"""
import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import squeezenet1_1

from compression_core import methods
from compression_core import prune as P
from compression_core.compress import compress
from compression_core.config import CompressionConfig, ConfigError, PruneSpec, QuantSpec
from compression_core.export import ExportError, export, load_exported
from compression_core.size import size_report

ROOT = Path(__file__).resolve().parents[2]
# the registry itself and each family's own module may spell its names
OWN_MODULES = {"compression_core/methods.py", "compression_core/quantize.py", "compression_core/prune.py",
               "compression_core/quantize_formats.py", "compression_core/quantize_nf4.py"}
# (file, literal): uses of a method-name string that mean something else
NOT_METHOD_NAMES = {("compression_core/cli.py", "nm"): "the sweep grid field of the N:M pattern (--nm)",
                    ("compression_core/quantize_blocks.py", "fp16"): "the storage type of a scale (--scale-dtype)",
                    ("compression_core/config.py", "taylor"): "the structured-pruning importance (PruneSpec.importance)",
                    ("compression_core/prune_structured.py", "taylor"): "the structured-pruning importance",
                    **{("dashboard/lessons.py", q): "lesson content: the 4-bit formats its text asks a class to "
                                                    "compare" for q in ("nf4", "mxfp4", "fp4_e2m1", "uniform")}}


def stray_method_names(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of method names compared against (`== "x"`, `in ("x", ...)`) or listed in a hand-kept
    tuple / list / set of two or more names."""
    found = []

    def literals(node):
        if isinstance(node, ast.Constant) and node.value in names:
            return [node]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
        return []

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                found += [(c.lineno, c.value) for c in literals(operand)]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            hits = literals(node)
            if len(hits) >= 2:
                found += [(c.lineno, c.value) for c in hits]
    return sorted(set(found))


def test_the_detector_finds_what_it_should():
    names = {"kmeans", "pow2", "nm"}
    source = ('if q == "kmeans": pass\nok = m in ("nm",)\nLIST = ["kmeans", "pow2"]\nx = {"nm": 1}\n'
              'label = "kmeans"\n')
    assert stray_method_names(source, names) == [(1, "kmeans"), (2, "nm"), (3, "kmeans"), (3, "pow2")]


def test_no_method_name_outside_the_registry():
    names = set(methods.quantizers()) | set(methods.prune_methods())
    stray = []
    for folder in ("compression_core", "dashboard"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in OWN_MODULES:
                continue
            for line, name in stray_method_names(path.read_text(), names):
                if (rel, name) not in NOT_METHOD_NAMES:
                    stray.append(f"{rel}:{line}: {name!r}")
    assert not stray, "method names spelled outside compression_core/methods.py (read the tables instead):\n" + \
        "\n".join(stray)


def _doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "REGISTRIES.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def toy_methods():
    """Register the documented `ternary` quantizer and `colnorm` pruning method; always unregister them."""
    namespace: dict = {}
    try:
        for block in _doc_blocks():
            exec(compile(block, "docs/REGISTRIES.md", "exec"), namespace)
        yield namespace
    finally:
        methods.unregister_quantizer("ternary")
        methods.unregister_prune_method("colnorm")


def test_builtin_tables_in_display_order():
    assert list(methods.quantizers()) == ["uniform", "kmeans", "pow2", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2",
                                          "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "mxfp8", "mxfp6", "mxfp4", "mxint8",
                                          "nf4"]
    assert [n for n, q in methods.quantizers().items() if q.side_layout] == ["uniform"] + list(
        methods.quantizers())[5:]
    assert list(methods.prune_methods()) == ["magnitude", "random", "structured", "nm", "taylor"]
    assert [n for n, q in methods.quantizers().items() if q.kind == "cast"] == ["fp16", "bf16"]
    assert [n for n, p in methods.prune_methods().items() if p.ranks_globally] == ["magnitude", "random", "taylor"]
    assert [n for n, p in methods.prune_methods().items() if p.needs_calibration] == ["taylor"]


def test_bad_entries_are_refused():
    info = methods.quantizer_info("kmeans")
    with pytest.raises(ValueError, match="already registered"):
        methods.register_quantizer(info)
    with pytest.raises(ValueError, match="kind 'block'"):
        methods.QuantizerInfo(name="x", label="x", description="", kind="block", bits=(4,),
                              value_storage="code", scale_storage="scale", quantize=info.quantize)
    with pytest.raises(ValueError, match="codes need a scale or a codebook"):
        methods.QuantizerInfo(name="x", label="x", description="", kind="codebook", bits=(4,),
                              value_storage="code", scale_storage="none", quantize=info.quantize)
    with pytest.raises(ValueError, match="identifier"):
        methods.register_prune_method(methods.PruneMethodInfo(name="my method", label="", description="",
                                                              mask=lambda w, s, c, g: w != 0))


def test_toy_quantizer_is_usable_end_to_end(toy_methods, tmp_path):
    from compression_core.config import QUANTIZERS
    assert QUANTIZERS[-1] == "ternary"
    spec = QuantSpec(quantizer="ternary", bits=8, scheme="asym", granularity="tensor")
    assert (spec.bits, spec.scheme, spec.granularity) == (2, "sym", "channel")
    config = CompressionConfig(quant=spec, prune=PruneSpec(sparsity=0.5))
    assert config.config_hash == CompressionConfig(quant=QuantSpec(quantizer="ternary"),
                                                   prune=PruneSpec(sparsity=0.5)).config_hash
    assert config.label == "ternary 2b · magnitude layer 50%"

    torch.manual_seed(0)
    model = squeezenet1_1(num_classes=10).eval()  # 26 conv layers, not written by us
    cm = compress(model, config)
    for lc in cm.layers.values():
        assert torch.unique(lc.weight).numel() <= 3 and lc.codebook.numel() == 3
        assert int((lc.weight[~lc.mask] != 0).sum()) == 0
    report = size_report(cm)
    for lc, ls in zip(cm.layers.values(), report.layers):
        assert (ls.bits, ls.meta_bits) == (2, 3 * 32)
        assert ls.value_bits == 2  # the codebook holds an exact 0: no extra zero code
        assert ls.total_bits == ls.entries * 2 + ls.index_bits + 96
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "ternary.cmpx"
    written = export(cm, path, {"kind": "torchvision", "name": "squeezenet1_1", "num_classes": 10})
    assert written == path.stat().st_size
    loaded, header = load_exported(path)
    assert {e["kind"] for e in header["layers"]} == {"code"}
    state = loaded.state_dict()
    assert all(torch.equal(state[f"{name}.weight"], lc.weight) for name, lc in cm.layers.items())
    assert torch.equal(loaded(x), cm.model(x))

    methods.unregister_quantizer("ternary")
    with pytest.raises(ConfigError, match="quantizer must be one of .*; got 'ternary'"):
        QuantSpec(quantizer="ternary")
    with pytest.raises(ExportError, match="quantizer must be one of .*got 'ternary'"):
        load_exported(path)


def test_toy_prune_method_is_usable_end_to_end(toy_methods):
    colnorm = toy_methods["colnorm_scores"]
    spec = PruneSpec(method="colnorm", sparsity=0.6, scope="global", norm=2, n=1, m=8)
    assert (spec.scope, spec.norm, spec.n, spec.m) == ("global", 1, 2, 4)  # global ranks; norm / n:m do not apply
    config = CompressionConfig(prune=spec)
    assert config.label == "fp32 · colnorm global 60%"

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    cm = compress(net, config)  # no calib: the method needs no data
    weights = {name: layer.weight.detach() for name, layer in (("0", net[0]), ("3", net[3]))}
    expected = P.global_score_masks({name: colnorm(w) for name, w in weights.items()}, 0.6)
    assert all(torch.equal(cm.layers[name].mask, expected[name]) for name in weights)
    assert sum(int((~cm.layers[n].mask).sum()) for n in weights) == round(0.6 * (8 * 27 + 10 * 288))
    per_layer = compress(net, CompressionConfig(prune=PruneSpec(method="colnorm", sparsity=0.6)))
    assert torch.equal(per_layer.layers["3"].mask, P.score_mask(colnorm(weights["3"]), 0.6))


def test_docstring_examples():
    import doctest
    result = doctest.testmod(methods)
    assert result.attempted >= 2 and result.failed == 0
