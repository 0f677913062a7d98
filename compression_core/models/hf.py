"""Hugging Face `transformers` models (`hf:PATH_OR_ID`) as plain nn.Modules that take token tensors.

A local folder holds `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`); a hub
id is fetched only when the caller allows downloads. Weights are read from safetensors only and
`trust_remote_code` is always False: a folder carries data, never code. The kind of model comes from the
config's `architectures`: a causal LM (`*ForCausalLM`, `*LMHeadModel`) returns logits (N, L, V), a sequence
classifier (`*ForSequenceClassification`) logits (N, C), any other model is an encoder whose last hidden state is
mean-pooled over the attention mask and L2-normalised into embeddings (N, D), as sentence-transformers does.

GPT-2-style `transformers.pytorch_utils.Conv1D` layers (weight (in, out), y = x W + b) are replaced by the
equivalent `nn.Linear` (weight transposed), so the engine finds and compresses them like any Linear. The wrapper
holds the transformers model as its submodule `hf`, so layer names read `hf.encoder.layer.0.attention.self.query`
(BERT) or `hf.transformer.h.0.attn.c_attn` (GPT-2).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import error_line, shown
from .weights import ModelLoadError

KINDS = ("classifier", "embedding", "causal-lm")
INSTALL = "pip install 'compression-explorer[hf]'"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # `gpt2`, `org/name`: what the hub accepts as a repo id


class HFModel(nn.Module):
    """A transformers model behind one forward: token tensors in, one Tensor out.

    Args:
        hf: the transformers model (held as the submodule `hf`).
        kind: "causal-lm" (logits (N, L, V)), "classifier" (logits (N, C)) or "embedding" (mean-pooled,
            L2-normalised last hidden state (N, D)).
    """

    def __init__(self, hf: nn.Module, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        self.hf = hf
        self.kind = kind

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (N, L) int64, attention_mask (N, L) 1 for tokens and 0 for padding (None: all tokens)."""
        if self.kind == "causal-lm":
            return self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        if self.kind == "classifier":
            return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, L, D)
        return mean_pool(hidden, attention_mask)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token vectors over the attention mask, then L2-normalised (sentence-transformers' pooling).

    Args:
        hidden: (N, L, D) token vectors.
        attention_mask: (N, L), 1 where a token counts; None counts every token.

    Returns:
        (N, D) unit-length embeddings.
    """
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    summed = (hidden * mask).sum(dim=1)
    return F.normalize(summed / mask.sum(dim=1).clamp(min=1e-9), p=2, dim=1)


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every `transformers.pytorch_utils.Conv1D` of a model we own by the equal `nn.Linear`, in place.

    Returns:
        How many layers were replaced.
    """
    from transformers.pytorch_utils import Conv1D

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, m in found:
        n_in, n_out = m.weight.shape  # Conv1D stores (in, out); Linear wants (out, in)
        linear = nn.Linear(n_in, n_out, bias=m.bias is not None, device="meta")  # no init, no RNG draw
        linear.weight = nn.Parameter(m.weight.detach().t().contiguous(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            linear.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=m.bias.requires_grad)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, linear)
    return len(found)


def import_transformers():
    """The transformers module, or one ModelLoadError line saying how to install it.

    transformers imports torchao when it is installed, and torchao's registrations make torch log deprecation
    warnings nobody using this tool can act on; that one logger is quiet while transformers imports and loads.
    """
    try:
        with _torch_pytree_quiet():
            import transformers
    except ImportError:
        raise ModelLoadError(f"hf: models need the transformers package: {INSTALL}") from None
    return transformers


@contextlib.contextmanager
def _torch_pytree_quiet() -> Iterator[None]:
    """torch's pytree logger at ERROR for a while (torchao, imported by transformers lazily, triggers it)."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Silence transformers' progress bars and warnings for one load (the user sees our one line instead)."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with _torch_pytree_quiet():
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def resolve(spec: str, allow_download: bool) -> str:
    """The folder (absolute) or hub id an `hf:` spec names, checked before transformers is imported.

    Raises:
        ModelLoadError: an empty spec, a folder without config.json or without safetensors weights, a path that
            is not a folder, or a hub id without `allow_download`.
    """
    where = spec.partition(":")[2].strip()
    if not where:
        raise ModelLoadError("hf: needs a folder or a hub id: hf:PATH (config.json + model.safetensors) or hf:ORG/NAME")
    path = Path(where).expanduser()
    try:
        if path.is_dir():
            check_folder(path, spec)
            return str(path.resolve())
        exists = path.exists()
    except (OSError, RuntimeError) as err:  # a name too long for the file system, a symlink loop
        raise ModelLoadError(f"{shown(spec)} cannot be used as a folder ({error_line(err)})") from None
    if exists:
        raise ModelLoadError(f"{shown(spec)} is a file; pass the folder holding config.json and model.safetensors")
    if not HUB_ID.fullmatch(where):
        raise ModelLoadError(f"{shown(spec)} is neither a folder nor a hub id like ORG/NAME")
    if not allow_download:
        raise ModelLoadError(f"{spec} is not a local folder; pass a folder or --allow-download")
    return where


def check_folder(path: Path, spec: str) -> None:
    """Refuse a folder that is not a transformers model saved with safetensors weights, reading only its names."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{shown(spec)} is not a Hugging Face model folder: no config.json in it; save the "
                             "model with save_pretrained(folder)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        pickled = " (pytorch_model.bin pickles are refused)" if (path / "pytorch_model.bin").exists() else ""
        raise ModelLoadError(f"{shown(spec)} has no weights: no model.safetensors{pickled}; save the model with "
                             "save_pretrained(folder, safe_serialization=True)")


def model_kind(config) -> str:
    """"causal-lm", "classifier" or "embedding" from a transformers config's `architectures` and `model_type`."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and any(a.endswith(("ForCausalLM", "LMHeadModel"))
                                                              for a in archs):
        return "causal-lm"
    if model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and any(
            a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    return "embedding"


def _auto_class(transformers, kind: str):
    return {"causal-lm": transformers.AutoModelForCausalLM, "embedding": transformers.AutoModel,
            "classifier": transformers.AutoModelForSequenceClassification}[kind]


def _config(transformers, where: str, local_only: bool, spec: str):
    try:
        return transformers.AutoConfig.from_pretrained(where, local_files_only=local_only, trust_remote_code=False)
    except (Exception, SystemExit) as err:  # bad JSON, unknown model_type, remote code asked for, network
        raise ModelLoadError(f"{shown(spec)}: config.json cannot be used ({error_line(err, first_line=True)}); "
                             "only model types built into transformers load (no remote code)") from None


def load_hf(spec: str, *, allow_download: bool = False, kind: str | None = None) -> tuple[HFModel, object, str]:
    """Load a transformers model and its tokenizer from a folder (or the hub, when allowed).

    Args:
        spec: `hf:PATH_OR_ID`.
        allow_download: let transformers fetch a hub id (otherwise only local files are read).
        kind: force the model kind; None reads it from the config (`model_kind`).

    Returns:
        (HFModel in eval mode, float32, cpu; the tokenizer or None when the folder has none; the resolved folder
        or hub id).

    Raises:
        ModelLoadError: one line (see `resolve`; transformers missing; weights that do not fit the config;
            NaN/Inf weights; anything transformers refuses).
    """
    where = resolve(spec, allow_download)
    transformers = import_transformers()
    local_only = not allow_download
    with _quiet(transformers):
        config = _config(transformers, where, local_only, spec)
        kind = kind or model_kind(config)
        try:
            hf, info = _auto_class(transformers, kind).from_pretrained(
                where, config=config, use_safetensors=True, trust_remote_code=False, local_files_only=local_only,
                output_loading_info=True, dtype=torch.float32)
        except (Exception, SystemExit) as err:  # corrupt safetensors, network, an architecture it cannot build
            raise ModelLoadError(f"{shown(spec)}: transformers cannot load it as a {kind} model "
                                 f"({error_line(err, first_line=True)})") from None
        tokenizer = _tokenizer(transformers, where, local_only)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        raise ModelLoadError(f"{shown(spec)}: the weights do not fit its config.json ({kind}); missing keys: "
                             f"{', '.join(missing[:4])}{more}")
    bad = [n for n, p in hf.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ModelLoadError(f"{shown(spec)}: weights contain NaN/Inf values ({', '.join(bad[:4])}); refusing them")
    conv1d_to_linear(hf)
    return HFModel(hf, kind).float().eval(), tokenizer, where


def _tokenizer(transformers, where: str, local_only: bool):
    """The folder's tokenizer, or None when it has none (a text dataset then says the model needs one)."""
    try:
        return transformers.AutoTokenizer.from_pretrained(where, local_files_only=local_only, trust_remote_code=False)
    except (Exception, SystemExit):  # no tokenizer files: the model still evaluates on token tensors
        return None


def build_hf(source: dict) -> HFModel:
    """An untrained HFModel from a source {"kind": "hf", "path": FOLDER_OR_ID, "model_kind": KIND}.

    Only local files are read (a hub id needs its config in the local transformers cache). The caller seeds the
    RNG; the wrapper's layer names and shapes equal those `load_hf` gives for the same folder.
    """
    where, kind = source.get("path"), source.get("model_kind")
    if not isinstance(where, str) or kind not in KINDS:
        raise ModelLoadError(f"an hf source needs 'path' (a folder or hub id) and 'model_kind' (one of "
                             f"{', '.join(KINDS)}); got {shown(source)}")
    transformers = import_transformers()
    with _quiet(transformers):
        config = _config(transformers, where, True, f"hf:{where}")
        try:
            hf = _auto_class(transformers, kind).from_config(config, trust_remote_code=False, dtype=torch.float32)
        except (Exception, SystemExit) as err:
            raise ModelLoadError(f"hf:{where}: cannot build a {kind} model from its config "
                                 f"({error_line(err, first_line=True)})") from None
    conv1d_to_linear(hf)
    return HFModel(hf, kind).float().eval()


def hf_builder(folder: str | os.PathLike) -> Callable[[dict], nn.Module]:
    """`build=` for `export.load_exported` of a file whose model source is an hf: model: rebuilds the
    architecture from `folder`, the model's folder you give again (the path written in the file is not used).

    Examples:
        >>> from compression_core.export import load_exported              # doctest: +SKIP
        >>> model, header = load_exported("m.cexp", build=hf_builder("/models/my-gpt2"))  # doctest: +SKIP
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"hf_builder needs the model's folder; {shown(str(folder))} is not a folder")
    check_folder(path, f"hf:{folder}")

    def build(source: dict) -> nn.Module:
        if not isinstance(source, dict) or source.get("kind") != "hf":
            raise ModelLoadError(f"hf_builder rebuilds hf: models only; the file's source is {shown(source)}")
        return build_hf({**source, "path": str(path.resolve())})
    return build

