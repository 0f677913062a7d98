"""Compression Explorer's engine: quantize and prune PyTorch models out-of-place and measure them honestly.

No Streamlit here; the dashboard and the CLI (`compression-explorer`, `python -m compression_core`) both sit on
top of this package. Everything a notebook needs is importable from the top:

- models and data: `load_model`, `load_dataset` (built-ins ship inside the package; bring your own too);
- what to do: `CompressionConfig`, `QuantSpec`, `PruneSpec`, `LayerOverride` (frozen, validated, hashable);
- doing it: `compress` (one model, out-of-place), `evaluate` (metrics of a model on tensors), `Experiment`
  (compress + evaluate + size for one model and split, returning a record dict);
- many configs: `expand_grid`, `sweep` (resumable through a `Store`), `pareto_front`, `layer_sensitivity`;
- sizes and files: `size_report` (honest bits per layer), `export` / `load_exported` (the packed file);
- what comes back: `Record` / `LayerRow` (typed dicts) and `RECORD_FIELDS` (each field's type, unit and meaning);
- the method tables: `quantizers`, `prune_methods`, `quantizer_info`, `prune_method_info`, and
  `register_quantizer` / `register_prune_method` to add one (docs/REGISTRIES.md).

Example (the digits set and its small CNN ship with the package and run in about a second on a CPU):
    >>> from compression_core import (CompressionConfig, Experiment, PruneSpec, QuantSpec, compress, evaluate,
    ...                               export, load_dataset, load_exported, load_model, size_report)
    >>> loaded = load_model("digits-cnn")
    >>> exp = Experiment(loaded, load_dataset("digits"), device="cpu")
    >>> config = CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5))
    >>> record = exp.run(config)
    >>> record["label"], record["n_samples"], record["size_bytes"], record["realized_sparsity"]
    ('int4 channel sym minmax · magnitude layer 50%', 297, 15286, 0.5)
    >>> record["accuracy"] > 0.9 and record["compression_ratio"] > 10
    True

    `compress` returns a new model (the one you pass is never changed); `size_report` counts its bits, and the
    file `export` writes has that size give or take its JSON header:
    >>> import tempfile, pathlib
    >>> cm = compress(loaded.model, config)
    >>> size_report(cm).total_bytes
    15286
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "digits-cnn.cex"
    >>> abs(export(cm, path, loaded.source) - 15286) < 0.02 * 15286 + 4096
    True
    >>> model, header = load_exported(path)           # rebuilt from the file alone
    >>> x, y = load_dataset("digits").split("test")
    >>> evaluate(model, x, y)["correct"] == evaluate(cm.model, x, y)["correct"] == record["correct"]
    True

    The method tables say what each name means; every record field has a unit:
    >>> quantizer_info("kmeans").kind, prune_method_info("taylor").needs_calibration
    ('codebook', True)
    >>> {f.name: f.unit for f in RECORD_FIELDS}["size_bytes"]
    'bytes'
"""
from ._version import __version__
from .compress import compress
from .compressed import CompressedModel
from .config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec
from .datasets import Dataset, DatasetUnavailable, load_dataset
from .evaluate import evaluate
from .experiment import Experiment
from .methods import prune_method_info, prune_methods, quantizer_info, quantizers, register_prune_method, \
    register_quantizer
from .export import ExportError, export, load_exported
from .models import LoadedModel, ModelLoadError, load_model
from .pareto import pareto_front
from .record import RECORD_FIELDS, LayerRow, Record
from .sensitivity import layer_sensitivity
from .size import SizeReport, size_report
from .store import Store
from .grid import expand_grid
from .sweep import sweep

__all__ = [
    "RECORD_FIELDS", "CompressedModel", "CompressionConfig", "ConfigError", "Dataset", "DatasetUnavailable",
    "Experiment", "ExportError", "LayerOverride", "LayerRow", "LoadedModel", "ModelLoadError", "PruneSpec",
    "QuantSpec", "Record", "SizeReport", "Store", "__version__", "compress", "evaluate", "expand_grid", "export",
    "layer_sensitivity", "load_dataset", "load_exported", "load_model", "pareto_front", "prune_method_info",
    "prune_methods", "quantizer_info", "quantizers", "register_prune_method", "register_quantizer", "size_report",
    "sweep",
]
