"""User datasets from files: a folder of IDX files (the MNIST format) or an ImageFolder layout of images.

`datasets.load_dataset("idx:PATH")` / `("imagefolder:PATH")` read the folder here into raw uint8 arrays and
normalise them with the train split's own mean and std (the Fashion-MNIST package's IDX files are read here too).
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
GREY_MODES = ("1", "L", "LA", "I", "I;16")


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


def read_image_folder(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Read an ImageFolder layout (train/ and test/ or val/, one subfolder per class) into uint8 arrays.

    Greyscale images stay one channel, everything else becomes RGB (the first image decides); all images must
    have the same size. Returns ({split: (x (N, C, H, W) uint8, y (N,))}, class names sorted as ImageFolder does).
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS

    roots = {"train": folder / "train", "test": folder / "test" if (folder / "test").is_dir() else folder / "val"}
    if not all(root.is_dir() for root in roots.values()):
        raise DatasetUnavailable(f"image folder {folder} needs train/ and test/ (or val/) subfolders, "
                                 "each with one folder of images per class")
    classes = tuple(sorted(d.name for d in roots["train"].iterdir() if d.is_dir()))
    mode, size, raw = None, None, {}
    for split, root in roots.items():
        unknown = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in classes)
        if unknown:
            raise DatasetUnavailable(f"image folder {root} has classes {unknown} that train/ does not have")
        images, labels = [], []
        for label, cls in enumerate(classes):
            for path in sorted((root / cls).iterdir()) if (root / cls).is_dir() else []:
                if path.suffix.lower() not in IMG_EXTENSIONS:
                    continue
                try:
                    with Image.open(path) as image:
                        mode = mode or ("L" if image.mode in GREY_MODES else "RGB")
                        pixels = np.asarray(image.convert(mode), dtype=np.uint8)  # (H, W) or (H, W, 3)
                except (OSError, UnidentifiedImageError) as err:
                    raise DatasetUnavailable(f"cannot read image {path}: {err}") from None
                size = size or pixels.shape
                if pixels.shape != size:
                    raise DatasetUnavailable(f"image {path} has shape {pixels.shape}, the first image {size}; "
                                             "resize all images to one size")
                images.append(pixels)
                labels.append(label)
        if not images:
            raise DatasetUnavailable(f"image folder {root} has no images ({', '.join(IMG_EXTENSIONS)})")
        x = np.stack(images)
        raw[split] = (x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2), np.asarray(labels))
    return raw, classes


def read_user_dataset(name: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, tuple[str, ...] | None]:
    """Read `idx:PATH` or `imagefolder:PATH` into raw uint8 arrays (pixels in [0, 255]).

    Returns:
        ({split: (x (N, C, H, W) uint8, y (N,))} for train and test, the source description, the class names
        (ImageFolder) or None (IDX: the labels' numbers)).

    Raises:
        DatasetUnavailable: a missing folder, missing or corrupt files, images of different sizes, ...
    """
    kind, _, path = name.partition(":")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(f"dataset {name}: folder {folder} does not exist; pass {kind}:PATH to a folder")
    if kind == "imagefolder":
        raw, classes = read_image_folder(folder)
        return raw, f"image folder: {folder}", classes
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
    return raw, f"idx files: {folder}", None
