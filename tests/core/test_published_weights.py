"""--weights DEFAULT: torchvision's published weights, fetched only with --allow-download and read with
weights_only=True and a checked hash (the network itself is replaced here: tests never download)."""
import urllib.error

import pytest
import torch
import torchvision

from compression_core.models import ModelLoadError, load_model
from compression_core.models.weights import state_fingerprint


@pytest.fixture
def fetched(monkeypatch):
    """torch.hub's fetch replaced by a recorder that returns a seeded ResNet-18 state dict (1,000 classes)."""
    calls = []
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()

    def fetch(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    return calls, state


def test_published_weights_are_fetched_as_data_with_a_checked_hash(fetched):
    calls, state = fetched
    loaded = load_model("torchvision:resnet18", weights="DEFAULT", allow_download=True)
    (url, kwargs), = calls
    assert url == torchvision.models.ResNet18_Weights.DEFAULT.url
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True
    assert loaded.fingerprint == state_fingerprint(state) and loaded.source["num_classes"] == 1000
    assert loaded.dataset == "ResNet18_Weights.IMAGENET1K_V1" and not loaded.model.training
    assert torch.equal(loaded.model.fc.weight, state["fc.weight"])


def test_without_allow_download_nothing_is_fetched(fetched):
    with pytest.raises(ModelLoadError, match="add --allow-download, or pass a weights file"):
        load_model("torchvision:resnet18", weights="DEFAULT")
    assert fetched[0] == []


@pytest.mark.parametrize("name, num_classes, error, says", [
    ("resnet18", 10, None, "have 1000 classes, not 10"),
    ("resnet18", None, urllib.error.URLError("no route to host"), "could not be fetched from https://"),
    ("resnet18", None, RuntimeError("invalid hash value"), "RuntimeError: invalid hash value"),
    ("not_a_net", None, None, "no published weights for 'not_a_net'"),
])
def test_refusals_are_one_line(monkeypatch, name, num_classes, error, says):
    def fetch(url, **kwargs):
        raise error

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    with pytest.raises(ModelLoadError, match=says) as err:
        load_model(f"torchvision:{name}", weights="DEFAULT", num_classes=num_classes, allow_download=True)
    assert "\n" not in str(err.value)
