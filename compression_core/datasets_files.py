"""User datasets from files: a folder of IDX files (the MNIST format) or an ImageFolder layout of images.

`datasets.load_dataset("idx:PATH")` / `("imagefolder:PATH")` read the folder here (images: `datasets_images`)
into raw uint8 arrays; `datasets` normalises them (the Fashion-MNIST package's IDX files are read here too).
Files carry data only; every problem is one `DatasetUnavailable` line naming the file and what was expected.
"""
from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np


class DatasetUnavailable(Exception):
    """A dataset cannot be loaded; the one-line message says which and how to get it."""


IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# e.g. train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte, emnist-digits-test-images-idx3-ubyte, train-images.idx3-ubyte
IDX_NAME = re.compile(r"(?:.*[-_.])?(train|t10k|test)[-_.](images|labels)[-_.]idx[13][-_.]ubyte(?:\.gz)?$")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared dtype and shape."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetUnavailable(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_DTYPES:
        raise DatasetUnavailable(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim, dtype = data[3], np.dtype(IDX_DTYPES[data[2]])
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    if len(body) != math.prod(dims) * dtype.itemsize:
        raise DatasetUnavailable(f"IDX file {path} is truncated or corrupt: header says {dims}, "
                                 f"got {len(body)} data bytes")
    return np.frombuffer(body, dtype).reshape(dims)


def find_idx_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Map split ("train" / "test") -> (images file, labels file) for the IDX files in a folder."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = IDX_NAME.match(path.name)
        if match:
            split = "train" if match.group(1) == "train" else "test"
            found.setdefault((split, match.group(2)), path)
    return {s: (found[s, "images"], found[s, "labels"]) for s in ("train", "test")
            if (s, "images") in found and (s, "labels") in found}


def read_user_dataset(name: str, transform: str = "none"
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, tuple[str, ...] | None, int]:
    """Read `idx:PATH` or `imagefolder:PATH` into raw uint8 arrays (pixels in [0, 255]).

    Args:
        name: the dataset spec.
        transform: the image folder's preset (`datasets_images.TRANSFORMS`); IDX files are read as stored.

    Returns:
        ({split: (x (N, C, H, W) uint8, y (N,))}, the source description, the class names (ImageFolder) or None
        (IDX: the labels' numbers), the number of images skipped as corrupt).

    Raises:
        DatasetUnavailable: a missing folder, missing or corrupt files, images of different sizes, ...
    """
    kind, _, path = name.partition(":")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(f"dataset {name}: folder {folder} does not exist; pass {kind}:PATH to a folder")
    if kind == "imagefolder":
        from .datasets_images import read_image_folder

        raw, classes, skipped = read_image_folder(folder, transform)
        return raw, f"image folder: {folder} (transform {transform})", classes, skipped
    files = find_idx_files(folder)
    if set(files) != {"train", "test"}:
        raise DatasetUnavailable(
            f"dataset {name}: need train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (optionally .gz) in {folder}; found splits {sorted(files) or 'none'}")
    raw = {}
    for split, (images, labels) in files.items():
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y) or (y < 0).any():
            raise DatasetUnavailable(f"dataset {name}: {images.name} must be uint8 (N, H, W) and {labels.name} "
                                     f"(N,) labels >= 0 with the same N; got {x.dtype} {x.shape} and {y.shape}")
        raw[split] = (x[:, None], y)
    return raw, f"idx files: {folder}", None, 0
