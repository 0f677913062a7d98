"""Datasets: real counts and statistics, the user-data readers (IDX, ImageFolder) and stratified subsets."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from compression_core import datasets as ds
from compression_core.datasets import (MNIST_MEAN, MNIST_STD, Dataset, DatasetUnavailable, list_datasets, load_dataset,
                                       stratified_indices)


@pytest.fixture(autouse=True)
def _decoded_cache(tmp_path, monkeypatch):
    """Decoded image folders go to this test's own folder, not the user's cache."""
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "decoded"))

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _skip_without(name: str) -> None:
    """Skip when a Debian-packaged dataset is absent on a developer machine; in CI it must be installed."""
    reason = ds.BUILTINS[name].missing()
    if reason and not os.environ.get("CI"):
        pytest.skip(reason)


def _check_normalised(x: torch.Tensor, tol: float) -> None:
    assert abs(float(x.mean())) < tol and abs(float(x.std()) - 1) < tol


def test_mnist_counts_classes_and_normalisation():
    data = load_dataset("mnist")
    x, y = data.split("train")
    x_test, y_test = data.split("test")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_test).tolist() == MNIST_TEST_COUNTS
    assert data.info.splits == {"train": 60000, "test": 10000}
    assert (data.info.mean, data.info.std, data.info.num_classes) == ((0.1307,), (0.3081,), 10)
    assert data.info.input_shape == (1, 28, 28)
    _check_normalised(x, 0.01)
    assert float(x.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-5)  # a zero pixel
    assert load_dataset("mnist") is data  # loaded once per process


def test_fashion_mnist_counts_and_normalisation():
    _skip_without("fashion-mnist")
    data = load_dataset("fashion-mnist")
    x, y = data.split("train")
    assert x.shape == (60000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(data.split("test")[1]).tolist() == [1000] * 10
    assert data.info.class_names[0] == "T-shirt/top" and data.info.mean == (0.2860,)
    _check_normalised(x, 0.01)


def test_digits_fixed_stratified_split():
    data = load_dataset("digits")
    x, y = data.split("train")
    x_test, y_test = data.split("test")
    assert x.shape == (1500, 1, 8, 8) and x_test.shape == (297, 1, 8, 8)
    _check_normalised(x, 1e-4)  # its own train statistics
    # every sample of load_digits lands in exactly one split
    from sklearn.datasets import load_digits

    assert sorted(torch.cat([y, y_test]).tolist()) == sorted(load_digits().target.tolist())
    counts = torch.bincount(y_test).tolist()
    assert sum(counts) == 297 and max(counts) - min(counts) <= 2


def test_mnist1d_shapes_and_global_rng_untouched():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    data = load_dataset("mnist1d")
    assert np.random.rand() == expected  # the generator's reseeding is contained
    x, y = data.split("train")
    assert x.shape == (4000, 1, 40) and data.split("test")[0].shape == (1000, 1, 40)
    assert set(y.tolist()) == set(range(10))
    _check_normalised(x, 0.01)


def test_unknown_names_and_splits_say_what_is_allowed():
    with pytest.raises(DatasetUnavailable, match="cifar-99.*mnist"):
        load_dataset("cifar-99")
    with pytest.raises(DatasetUnavailable, match="'val'.*train, test"):
        load_dataset("digits").split("val")
    with pytest.raises(DatasetUnavailable, match="idx:PATH"):
        load_dataset("idx:")


def test_missing_fashion_source_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_DIR", tmp_path)
    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    row = next(r for r in list_datasets() if r["name"] == "fashion-mnist")
    assert row["available"] is False and "dataset-fashion-mnist" in row["reason"]


def test_list_datasets_rows():
    rows = {r["name"]: r for r in list_datasets()}
    assert set(rows) == {"mnist", "fashion-mnist", "digits", "mnist1d"}
    assert rows["mnist1d"]["input_shape"] == (1, 40) and rows["digits"]["splits"] == {"train": 1500, "test": 297}
    assert rows["mnist"]["available"] and rows["digits"]["available"] and rows["mnist1d"]["available"]


# ---- user data ----------------------------------------------------------------------------------------

def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz, test_prefix", [(True, "t10k"), (False, "test")])
def test_idx_folder(tmp_path, gz, test_prefix):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    train_x, train_y = rng.integers(0, 256, (12, 6, 5)), np.arange(12) % 3
    test_x, test_y = rng.integers(0, 256, (4, 6, 5)), np.array([2, 1, 0, 2])
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y, gz)
    _write_idx(tmp_path / f"{test_prefix}-images-idx3-ubyte{suffix}", test_x, gz)
    _write_idx(tmp_path / f"{test_prefix}-labels-idx1-ubyte{suffix}", test_y, gz)
    data = load_dataset(f"idx:{tmp_path}")
    x, y = data.split("train")
    assert x.shape == (12, 1, 6, 5) and data.info.num_classes == 3 and data.info.splits == {"train": 12, "test": 4}
    assert data.split("test")[1].tolist() == [2, 1, 0, 2]
    mean, std = (train_x / 255).mean(), (train_x / 255).std(ddof=1)
    assert data.info.mean[0] == pytest.approx(mean, abs=1e-6) and data.info.std[0] == pytest.approx(std, abs=1e-6)
    expected = (test_x[1] / 255 - data.info.mean[0]) / data.info.std[0]
    assert np.allclose(data.split("test")[0][1, 0].numpy(), expected, atol=1e-5)


def test_idx_folder_errors(tmp_path):
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        load_dataset(f"idx:{tmp_path / 'nope'}")
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2), False)
    with pytest.raises(DatasetUnavailable, match="t10k-images-idx3-ubyte.*found splits \\['train'\\]"):
        load_dataset(f"idx:{tmp_path}")
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 3)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header + b"\0" * 5)  # 18 pixels promised, 5 given
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2), False)
    with pytest.raises(DatasetUnavailable, match="truncated or corrupt"):
        load_dataset(f"idx:{tmp_path}")


def _write_images(root, classes: dict[str, int], mode: str, size=(5, 4)) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(classes))
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{i}.png")


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_image_folder(tmp_path, mode, channels):
    _write_images(tmp_path / "train", {"cat": 3, "dog": 2}, mode)
    _write_images(tmp_path / "test", {"cat": 1, "dog": 2}, mode)
    data = load_dataset(f"imagefolder:{tmp_path}")
    x, y = data.split("train")
    assert x.shape == (5, channels, 4, 5) and y.tolist() == [0, 0, 0, 1, 1]
    assert data.split("test")[1].tolist() == [0, 1, 1]
    assert data.info.class_names == ("cat", "dog") and len(data.info.mean) == channels
    per_channel = x.transpose(0, 1).reshape(channels, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(channels), atol=1e-5)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path}")
    _write_images(tmp_path / "train", {"a": 1}, "L")
    _write_images(tmp_path / "test", {"a": 1}, "L", size=(6, 6))
    with pytest.raises(DatasetUnavailable, match="with --transform none resize all images to one size"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetUnavailable, match="unknown transform 'gray'; use one of imagenet, cifar"):
        load_dataset(f"imagefolder:{tmp_path}", transform="gray")


def _mixed_folder(root):
    """One split of class folders: sizes 5x4 .. 40x30 in modes L, RGB, RGBA and P, plus one corrupt file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (mode, size) in enumerate([("L", (5, 4)), ("RGB", (40, 30)), ("RGBA", (17, 33)), ("P", (64, 64))]):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").convert(mode).save(root / f"c{i % 2}" / f"{i}.png")
    (root / "c1" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")


@pytest.mark.parametrize("transform, shape, mean", [
    ("imagenet", (3, 224, 224), (0.485, 0.456, 0.406)), ("cifar", (3, 32, 32), (0.4914, 0.4822, 0.4465)),
    ("gray28", (1, 28, 28), (0.1307,))])
def test_image_folder_mixed_sizes_modes_and_a_corrupt_image(tmp_path, transform, shape, mean):
    _mixed_folder(tmp_path)
    data = load_dataset(f"imagefolder:{tmp_path}", transform=transform)
    x, y = data.split("test")
    assert list(data.tensors) == ["test"] and x.shape == (4,) + shape and y.tolist() == [0, 0, 1, 1]
    assert data.info.n_skipped == 1 and data.info.transform == transform and data.info.mean == mean
    assert data.info.splits == {"test": 4} and data.info.class_names == ("c0", "c1")
    with pytest.raises(DatasetUnavailable, match="split 'train' is not in dataset"):
        data.split("train")
    with pytest.raises(DatasetUnavailable, match="with --transform none resize all images to one size"):
        load_dataset(f"imagefolder:{tmp_path}", transform="none")


def test_imagenet_transform_is_torchvisions_resize_and_centre_crop(tmp_path):
    from PIL import Image
    from torchvision import transforms as T

    (tmp_path / "a").mkdir()
    pixels = np.random.default_rng(3).integers(0, 256, (300, 411, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a" / "0.png")
    x, _ = load_dataset(f"imagefolder:{tmp_path}", transform="imagenet").split("test")
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                           T.CenterCrop(224), T.PILToTensor()])(Image.open(tmp_path / "a" / "0.png"))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels_back = (x[0] * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255
    assert torch.equal(pixels_back.round().to(torch.uint8), reference)


def test_builtin_scores_the_same_on_its_test_split_written_as_png_files(tmp_path):
    """lenet5 on MNIST's test split as PNGs in class folders, --transform auto (gray28): the same correct count."""
    from PIL import Image

    from compression_core import Experiment, load_model
    from compression_core.datasets_images import resolve_transform

    mnist = load_dataset("mnist")
    x, y = mnist.split("test")
    keep = stratified_indices(y, 600, seed=1)
    pixels = (x[keep, 0] * MNIST_STD + MNIST_MEAN).mul(255).round().to(torch.uint8).numpy()
    for i, (image, label) in enumerate(zip(pixels, y[keep].tolist())):
        (tmp_path / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image, "L").save(tmp_path / str(label) / f"{i:05d}.png")
    transform = resolve_transform("auto", "lenet5")
    folder = load_dataset(f"imagefolder:{tmp_path}", transform=transform)
    assert transform == "gray28" and folder.split("test")[1].tolist() == sorted(y[keep].tolist())
    loaded = load_model("lenet5")
    in_memory = Experiment(loaded, Dataset(mnist.info, {"test": (x[keep], y[keep])}), device="cpu").baseline
    from_files = Experiment(loaded, folder, device="cpu").baseline
    assert from_files["correct"] == in_memory["correct"] and in_memory["n_samples"] == 600
    assert from_files["correct"] >= 580


def test_resolve_transform():
    from compression_core.datasets_images import resolve_transform

    assert [resolve_transform("auto", m) for m in ("lenet5", "resnet20", "digits-cnn", "torchvision:resnet18")] == [
        "gray28", "gray28-fashion", "none", "imagenet"]
    assert resolve_transform("cifar", "lenet5") == "cifar"
    with pytest.raises(DatasetUnavailable, match="unknown transform 'x'; use one of auto, imagenet, cifar, gray28"):
        resolve_transform("x", "lenet5")


# ---- stratified subsets -------------------------------------------------------------------------------

def test_stratified_indices_largest_remainder_counts():
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    idx = stratified_indices(y, 4)
    # quotas 2.0, 1.2, 0.8 -> floors 2, 1, 0; the one left goes to the largest remainder (class 2)
    assert torch.bincount(y[idx], minlength=3).tolist() == [2, 1, 1]
    assert idx.tolist() == sorted(set(idx.tolist()))


def test_stratified_indices_fixed_and_proportional():
    y = load_dataset("mnist").split("test")[1]
    a, b = stratified_indices(y, 1000), stratified_indices(y, 1000)
    assert torch.equal(a, b) and len(a) == 1000 and len(set(a.tolist())) == 1000
    counts = torch.bincount(y[a]).tolist()
    assert all(abs(c - n / 10) < 1 for c, n in zip(counts, MNIST_TEST_COUNTS))
    assert not torch.equal(stratified_indices(y, 1000, seed=1), a)
    assert torch.equal(stratified_indices(y, 10000), torch.arange(10000))
    assert torch.equal(stratified_indices(y, 50000), torch.arange(10000))
    with pytest.raises(ValueError, match="n must be >= 1"):
        stratified_indices(y, 0)


# ---- the decode cache ----------------------------------------------------------------------------------

def test_image_folder_is_decoded_once_and_a_changed_or_added_file_invalidates(tmp_path, monkeypatch):
    from PIL import Image

    from compression_core.datasets_images import read_image_folder

    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "cache"))
    _mixed_folder(tmp_path / "imgs")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    first, classes, skipped = read_image_folder(tmp_path / "imgs", "cifar")
    assert len(opened) == 5 and skipped == 1 and classes == ("c0", "c1")
    again, _, skipped_again = read_image_folder(tmp_path / "imgs", "cifar")
    assert len(opened) == 5 and skipped_again == 1  # read back, nothing decoded
    assert all(np.array_equal(first["test"][i], again["test"][i]) for i in (0, 1))
    entries = list((tmp_path / "cache").iterdir())  # one finished entry, no temporary folder left
    assert len(entries) == 1 and entries[0].is_dir() and not entries[0].name.endswith(".tmp")

    read_image_folder(tmp_path / "imgs", "gray28")  # another preset: another entry
    assert len(opened) == 10
    target = tmp_path / "imgs" / "c0" / "0.png"
    Image.fromarray(np.full((4, 5), 200, dtype=np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # a changed file, even one whose mtime goes back
    changed, _, _ = read_image_folder(tmp_path / "imgs", "cifar")
    assert len(opened) == 15 and not np.array_equal(changed["test"][0][0], first["test"][0][0])
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(tmp_path / "imgs" / "c1" / "new.png")
    added, _, _ = read_image_folder(tmp_path / "imgs", "cifar")
    assert len(opened) == 21 and len(added["test"][1]) == 5


def test_unreadable_cache_is_decoded_around(tmp_path, monkeypatch):
    from compression_core.datasets_images import read_image_folder

    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "cache"))
    _mixed_folder(tmp_path / "imgs")
    raw, _, skipped = read_image_folder(tmp_path / "imgs", "cifar")
    assert raw["test"][0].shape == (4, 3, 32, 32) and skipped == 1


# ---- torchvision dataset classes over a local root -------------------------------------------------------

def test_torchvision_mnist_over_a_local_root_equals_the_shipped_mnist(tmp_path):
    """torchvision's own MNIST reader over raw IDX files written from the shipped split gives the same tensors."""
    mnist = load_dataset("mnist")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix, n in (("train", "train", 300), ("test", "t10k", 200)):
        x, y = mnist.split(split)
        pixels = (x[:n, 0] * MNIST_STD + MNIST_MEAN).mul(255).round().to(torch.uint8).numpy()
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels, False)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y[:n].numpy(), False)
    data = load_dataset(f"torchvision:MNIST:{tmp_path}")
    assert data.info.splits == {"train": 300, "test": 200} and data.info.mean == (MNIST_MEAN,)
    assert data.info.class_names[3] == "3 - three" and data.info.name == f"torchvision:MNIST:{tmp_path.resolve()}"
    x, y = data.split("test")
    assert torch.equal(y, mnist.split("test")[1][:200])
    assert torch.allclose(x, mnist.split("test")[0][:200], atol=1e-5)


def test_torchvision_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetUnavailable, match="torchvision dataset 'ImageNet' is not supported; use one of MNIST"):
        load_dataset(f"torchvision:ImageNet:{tmp_path}")
    with pytest.raises(DatasetUnavailable, match="use torchvision:CLASS:ROOT"):
        load_dataset("torchvision:CIFAR10")
    with pytest.raises(DatasetUnavailable, match=r"no torchvision CIFAR10 data under .*--allow-download"):
        load_dataset(f"torchvision:CIFAR10:{tmp_path}/nope")
