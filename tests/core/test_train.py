"""Training: a short real run on digits, determinism for a seed, the checkpoint + manifest it writes."""
import json

import pytest
import torch
from safetensors import safe_open

from compression_core.models import ModelLoadError, file_sha256, load_model, state_fingerprint
from compression_core.train import RECIPES, random_shift, save_checkpoint, train_and_save, train_model


@pytest.fixture(scope="module")
def digits_run():
    return train_model("digits-cnn", "digits", epochs=6, seed=0)


def test_short_digits_run_learns(digits_run):
    model, metrics = digits_run
    assert metrics["accuracy"] >= 0.95 and metrics["n_test"] == 297 and metrics["dataset"] == "digits"
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 7))
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["recipe"] == {**RECIPES["digits-cnn"].__dict__, "epochs": 6} and metrics["seed"] == 0
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_same_seed_same_model_other_seed_other_model(digits_run):
    rng_before = torch.get_rng_state()
    again, _ = train_model("digits-cnn", "digits", epochs=1, seed=0)
    other, _ = train_model("digits-cnn", "digits", epochs=1, seed=1)
    first, _ = train_model("digits-cnn", "digits", epochs=1, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert state_fingerprint(again.state_dict()) == state_fingerprint(first.state_dict())
    assert state_fingerprint(other.state_dict()) != state_fingerprint(first.state_dict())


def test_save_checkpoint_writes_file_and_manifest(digits_run, tmp_path):
    model, metrics = digits_run
    path = tmp_path / "ckpt" / "digits-cnn_digits.safetensors"
    entry = save_checkpoint(model, path, name="digits-cnn", dataset="digits", accuracy=metrics["accuracy"],
                            n_test=297, recipe=metrics["recipe"], seed=0)
    save_checkpoint(model, path.with_name("copy.safetensors"), name="digits-cnn", dataset="digits",
                    accuracy=metrics["accuracy"], n_test=297, recipe=metrics["recipe"], seed=0)
    manifest = json.loads((path.parent / "manifest.json").read_text())["checkpoints"]
    assert set(manifest) == {"digits-cnn_digits.safetensors", "copy.safetensors"}
    assert manifest[path.name] == entry and entry["sha256"] == file_sha256(path)
    assert entry["num_classes"] == 10 and entry["n_params"] == sum(p.numel() for p in model.parameters())
    assert entry["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6) and entry["torch"] == torch.__version__
    assert path.stat().st_mode & 0o777 == 0o644
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["compression_explorer"])["model"] == "digits-cnn"
    reloaded = load_model("digits-cnn", weights=path, dataset="digits")
    assert reloaded.fingerprint == state_fingerprint(model.state_dict())


def test_train_and_save_and_its_refusals(tmp_path):
    out = tmp_path / "m.safetensors"
    lines = []
    entry = train_and_save("mnist1d-mlp", None, epochs=1, seed=0, device="cpu", out=out, progress=lines.append)
    assert entry["dataset"] == "mnist1d" and entry["sha256"] == file_sha256(out) and len(lines) == 1
    assert "epoch 1/1" in lines[0]
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        train_and_save("digits-cnn", "digits", epochs=1, seed=0, device="cpu", out=tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="built-in architecture.*'resnet'"):
        train_model("resnet", "digits", epochs=1, seed=0)
    with pytest.raises(ValueError, match="lenet5 cannot take inputs of shape \\(1, 8, 8\\) \\(dataset digits\\)"):
        train_model("lenet5", "digits", epochs=1, seed=0)


@pytest.mark.parametrize("shape", [(6, 1, 9, 7), (6, 2, 11)])
def test_random_shift_moves_each_sample_within_range(shape):
    x = torch.zeros(shape)
    centre = tuple(s // 2 for s in shape[2:])
    x[(slice(None), slice(None)) + centre] = 1.0  # one bright pixel per sample and channel
    fill = torch.full((1, shape[1]) + (1,) * (len(shape) - 2), -0.5)
    x = x + torch.where(x > 0, 0.0, -0.5)  # background at the fill value
    out = random_shift(x, 2, torch.Generator().manual_seed(0), fill)
    assert out.shape == x.shape
    moved = 0
    for sample in out:
        bright = torch.nonzero(sample[0] > 0)
        assert len(bright) == 1  # still exactly one bright pixel, never wrapped around
        offset = bright[0] - torch.tensor(centre)
        assert offset.abs().max() <= 2
        moved += int(offset.abs().sum() > 0)
        assert torch.equal(sample[0], sample[-1])  # channels move together
        assert set(sample.unique().tolist()) == {-0.5, 1.0}  # border filled with the background
    assert moved >= 3
