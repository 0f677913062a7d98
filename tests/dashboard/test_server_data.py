"""Data on the server from the sidebar: read only inside the operator's shared folders and only after
**Use this data**; a built-in model on its own test images scores what it scores in memory."""
import numpy as np
import pytest
import torch
from PIL import Image

from compression_core.datasets import MNIST_MEAN, MNIST_STD, load_dataset, stratified_indices
from dashboard.server_paths import DATA_ROOTS_ENV

N = 200


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory):
    """N MNIST test images as PNG files in class folders, under a folder to share; and their labels."""
    root = tmp_path_factory.mktemp("shared")
    x, y = load_dataset("mnist").split("test")
    keep = stratified_indices(y, N, seed=3)
    pixels = (x[keep, 0] * MNIST_STD + MNIST_MEAN).mul(255).round().to(torch.uint8).numpy()
    for i, (image, label) in enumerate(zip(pixels, y[keep].tolist())):
        (root / "mnist" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image), "L").save(root / "mnist" / str(label) / f"{i:04d}.png")
    return root


def _use(at, path: str):
    at.text_input(key="data_path").input(path).run()
    at.button(key="use_data").click().run()
    return at


def test_a_shared_image_folder_is_evaluated_with_the_models_own_transform(make_app, no_exception, mnist_pngs,
                                                                          monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, str(mnist_pngs))
    at = make_app(model="lenet5", dataset="mnist", limit="1000")
    reference = at.session_state["selection"]
    at = _use(at, f"imagefolder:{mnist_pngs}/mnist/../mnist")
    no_exception(at)
    chosen = at.session_state["selection"]
    assert chosen["dataset"] == f"imagefolder:{mnist_pngs.resolve()}/mnist" and chosen["transform"] == "auto"
    assert reference["dataset"] == "mnist"
    (summary,) = [c.value for c in at.sidebar.caption if c.value.startswith("fp32 accuracy:")]
    assert f"on {N} test samples from image folder" in summary, summary


def test_a_path_from_the_url_is_not_read_before_use(make_app, no_exception, mnist_pngs, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, str(mnist_pngs))
    at = make_app(model="lenet5", dataset="mnist", data_path=f"imagefolder:{mnist_pngs}/mnist")
    no_exception(at)
    assert at.session_state["selection"]["dataset"] == "mnist"
    assert any("Press **Use this data**" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("roots, path, message", [
    (None, "imagefolder:/etc", "shares no data folders"),
    ("shared", "imagefolder:/etc", "outside the folders this server shares"),
    ("shared", "imagefolder:../x", "relative path"),
    ("shared", "python:os.system", "not a path spec"),
])
def test_a_refused_path_is_one_error_and_the_built_in_data_stays(make_app, no_exception, mnist_pngs, monkeypatch,
                                                                 roots, path, message):
    if roots:
        monkeypatch.setenv(DATA_ROOTS_ENV, str(mnist_pngs))
    else:
        monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    at = _use(make_app(model="lenet5", dataset="mnist"), path)
    no_exception(at)
    (error,) = at.error
    assert message in error.value and "\n" not in error.value.strip()
    assert at.session_state["selection"]["dataset"] == "mnist"  # what was computed before is still there
