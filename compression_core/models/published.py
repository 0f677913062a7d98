"""torchvision's published weights (`--weights DEFAULT`): fetched only when downloads are allowed, read as data.

torchvision's own loader unpickles the file it downloads (`weights_only=False`); here the state dict is fetched with
`torch.hub.load_state_dict_from_url(..., check_hash=True, weights_only=True)` — the hash in the file name is
checked and only tensors are read — and loaded into the architecture built without weights.
"""
from __future__ import annotations

from torch import nn

from ..errors import error_line
from .weights import ModelLoadError, load_weights

PUBLISHED = "DEFAULT"  # the --weights value that asks for torchvision's published weights


def published_torchvision(name: str, num_classes: int | None, allow_download: bool) -> tuple[nn.Module, int, str]:
    """The torchvision architecture `name` with its published default weights.

    Args:
        name: a torchvision model name, e.g. "resnet18".
        num_classes: must be None or the published head's class count.
        allow_download: the user allowed network access (`--allow-download`).

    Returns:
        (model in eval mode, its class count, the weights' name, e.g. "ResNet18_Weights.IMAGENET1K_V1").

    Raises:
        ModelLoadError: downloads not allowed, no published weights for `name`, a class count that differs, or a
            fetch that failed — one line each.
    """
    import torch.hub
    import torchvision

    if not allow_download:
        raise ModelLoadError(f"--weights {PUBLISHED} fetches torchvision's published {name} weights over the network: "
                             "add --allow-download, or pass a weights file")
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ModelLoadError(f"torchvision has no published weights for {name!r}; pass a weights file") from None
    classes = len(weights.meta["categories"])
    if num_classes is not None and num_classes != classes:
        raise ModelLoadError(f"torchvision's published {name} weights have {classes} classes, not {num_classes}; drop "
                             "--num-classes or pass your own weights file")
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - network, hash and unpickling refusals all end as one line
        raise ModelLoadError(f"torchvision's published {name} weights could not be fetched from {weights.url} "
                             f"({type(err).__name__}: {error_line(err, first_line=True)}); check the network or pass "
                             "a weights file") from None
    model = torchvision.models.get_model(name, weights=None, num_classes=classes)
    load_weights(model, state, f"torchvision {weights}")
    return model.eval(), classes, str(weights)
