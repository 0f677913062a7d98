"""Weights files: read a state dict safely (.safetensors, or .pt/.pth as tensors only), check it, fingerprint it.

A `.pt`/`.pth` file is read with `torch.load(weights_only=True)`, so a pickle can never run code; NaN/Inf values
and state dicts that do not fit the architecture exactly are refused with one line naming the keys.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import error_line

TORCH_SUFFIXES = (".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
STATE_KEYS = ("state_dict", "model_state_dict", "model")  # common wrappers around a saved state dict


class ModelLoadError(Exception):
    """A model cannot be built or its weights cannot be used; the one-line message says why and what to do."""


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, each with its dtype, shape and raw bytes; the first 16 hex digits."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or .pt/.pth (tensors only; pickled objects are refused).

    Raises:
        ModelLoadError: missing file, unknown suffix, corrupt file, unsafe pickle, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises several types for a bad header or truncated data
            raise ModelLoadError(f"weights file {path} is not a valid safetensors file "
                                 f"({error_line(err, first_line=True)})") from None
    if suffix not in TORCH_SUFFIXES:
        raise ModelLoadError(f"weights file {path} must end in {', '.join(WEIGHT_SUFFIXES)}; got {suffix or 'none'}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        unsafe = re.search(r"GLOBAL (\S+)", str(err))
        if unsafe:
            raise ModelLoadError(f"refusing to load {path}: it pickles Python objects ({unsafe.group(1)}), which "
                                 "could run code; save model.state_dict() with torch.save or use .safetensors") from None
        # torch's own text here advises weights_only=False, which is exactly what we must not do: name the cause
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n|$)", str(err))
        cause = found.group(1) if found else error_line(err, first_line=True)
        raise ModelLoadError(f"weights file {path} is corrupt or not a torch state dict ({cause}); "
                             "save model.state_dict() with torch.save, or use .safetensors") from None
    if isinstance(obj, dict):
        inner = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), dict)), obj)
        if inner and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()):
            return dict(inner)
    raise ModelLoadError(f"weights file {path} holds a {type(obj).__name__}, not a state dict of tensors; "
                         "save model.state_dict()")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy `state` into a model you just built, refusing NaN/Inf values and anything that does not fit exactly.

    Args:
        model: a freshly built model (it is modified).
        state: the state dict to load.
        what: names the weights in messages, e.g. the file path.
    """
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"weights {what} contain NaN/Inf values in {len(bad)} tensor(s) ({_few(bad)}); "
                             "refusing to load them")
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if keys:
            problems.append(f"{label}: {_few(keys)}")
    if problems:
        raise ModelLoadError(f"weights {what} do not fit the {type(model).__name__} architecture: "
                             + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _few(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
