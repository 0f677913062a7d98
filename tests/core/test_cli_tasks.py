"""CLI: --task and what it prints; a built-in on an image folder brings its own shipped checkpoint (#8)."""
import json

import torch

from compression_core.datasets import load_dataset, stratified_indices
from compression_core.datasets_files import MNIST_MEAN, MNIST_STD
from compression_core.models import load_model
from tests.core.test_cli import cli


def test_task_fidelity_on_a_labelled_set_prints_the_fidelity_metrics(tmp_path):
    args = ("evaluate", "--model", "digits-cnn", "--dataset", "digits", "--bits", "3", "--granularity", "tensor",
            "--task", "fidelity")
    r = cli(*args, "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert (rec["task"], rec["metric"], rec["accuracy"], rec["loss"]) == ("fidelity", "cosine", None, None)
    assert 0.5 < rec["cosine"] < 1.0 and rec["kl"] > 0 and rec["metric_value"] == rec["cosine"]
    assert abs(rec["baseline_metric_value"] - 1.0) < 1e-6 and rec["recall_at_10"] is None  # logits: no neighbour search
    r = cli(*args, store=tmp_path / "s.sqlite")  # the stored record, printed as a text row
    assert r.returncode == 0 and f"cosine {rec['cosine']:.4g} (fp32 1)" in r.stdout
    classify = json.loads(cli(*args[:-2], "--json", store=tmp_path / "s.sqlite").stdout)
    assert classify["task"] == "classify" and classify["cosine"] is None and classify["accuracy"] > 0.5


def test_bad_task_is_one_line():
    r = cli("evaluate", "--model", "digits-cnn", "--task", "rank")
    assert r.returncode == 2 and "--task: invalid choice: 'rank'" in r.stderr and len(r.stderr.splitlines()) == 1


def test_builtin_on_an_image_folder_without_weights_uses_its_own_checkpoint(tmp_path):
    from PIL import Image

    x, y = load_dataset("mnist").split("test")
    keep = stratified_indices(y, 30)  # every class: the folder has the model's 10 classes
    pixels = (x[keep, 0] * MNIST_STD + MNIST_MEAN).mul(255).round().to(torch.uint8).numpy()
    for i, (image, label) in enumerate(zip(pixels, y[keep].tolist())):
        (tmp_path / "imgs" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(tmp_path / "imgs" / str(label) / f"{i:03d}.png")
    r = cli("evaluate", "--model", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'imgs'}", "--json",
            store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["fingerprint"] == load_model("lenet5").fingerprint and rec["n_samples"] == 30
    assert rec["accuracy"] >= 28 / 30
