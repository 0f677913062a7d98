"""Image folders in torchvision's ImageFolder layout, decoded with a transform preset into uint8 arrays.

A folder of class folders is one evaluation split ("test"), as ImageNet's val is; `train/` and `val/` or `test/`
subfolders are the splits when present. Images of any size and mode (RGB, L, RGBA, P ...) are decoded with PIL
and brought to one shape by the transform preset; a corrupt image is skipped and counted, never a crash.

Presets (`TRANSFORMS`): imagenet = shorter side 256, centre crop 224, RGB, ImageNet constants; cifar = shorter side
32, centre crop 32, RGB, CIFAR-10 constants; gray28 = greyscale resized to 28x28, MNIST constants; gray28-fashion =
the same with the Fashion-MNIST constants; none = pixels as stored (all images must share one size), normalised
with the mean/std of the train split (of the one split when there is no train/).
`auto` (`resolve_transform`) is, for a built-in model, the transform it was trained with (gray28 or
gray28-fashion for the 28x28 built-ins, none for the others), and imagenet for any other model.
Each folder is decoded once per preset, in DataLoader workers: the uint8 arrays are written to .npy files on disk
(`datasets_cache`) and read back memory-mapped or in batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets_cache import Entry, cache_key, read_cache
from .datasets_files import FASHION_MEAN, FASHION_STD, MNIST_MEAN, MNIST_STD, DatasetUnavailable

GREY_MODES = ("1", "L", "LA", "I", "I;16")
WORKERS = min(2, os.cpu_count() or 1)  # DataLoader workers that decode a split
MIN_FILES_FOR_WORKERS = 64  # below this, starting workers costs more than they save
DECODE_BATCH = 32  # images per worker hand-over


@dataclass(frozen=True)
class Transform:
    """A transform preset. resize: shorter side (int) or exact (W, H); mode None keeps grey grey, else RGB."""

    name: str
    mode: str | None
    resize: int | tuple[int, int] | None
    crop: int | None
    mean: tuple[float, ...] | None  # None: the train split's own statistics
    std: tuple[float, ...] | None


TRANSFORMS: dict[str, Transform] = {
    "imagenet": Transform("imagenet", "RGB", 256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": Transform("cifar", "RGB", 32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "gray28": Transform("gray28", "L", (28, 28), None, (MNIST_MEAN,), (MNIST_STD,)),
    "gray28-fashion": Transform("gray28-fashion", "L", (28, 28), None, (FASHION_MEAN,), (FASHION_STD,)),
    "none": Transform("none", None, None, None, None, None),
}
TRANSFORM_CHOICES = ("auto", *TRANSFORMS)
_AUTO_BY_DATASET = {"mnist": "gray28", "fashion-mnist": "gray28-fashion"}


def resolve_transform(name: str, model: str | None) -> str:
    """The preset `--transform NAME` means for `model` (a model spec): `auto` resolved, others checked.

    Raises:
        DatasetUnavailable: an unknown preset name.
    """
    if name not in TRANSFORM_CHOICES:
        raise DatasetUnavailable(f"unknown transform {name!r}; use one of {', '.join(TRANSFORM_CHOICES)}")
    if name != "auto":
        return name
    from .models.architectures import ARCHITECTURES

    if model in ARCHITECTURES:
        return _AUTO_BY_DATASET.get(ARCHITECTURES[model].dataset, "none")
    return "imagenet"


def _apply(image, transform: Transform, mode: str):
    """Convert / resize / centre-crop one PIL image as the preset says (torchvision's Resize + CenterCrop rules)."""
    from PIL import Image

    image = image.convert(mode)
    if isinstance(transform.resize, tuple):
        image = image.resize(transform.resize, Image.BILINEAR)
    elif transform.resize is not None:
        w, h = image.size
        short, long = min(w, h), max(w, h)
        size = (transform.resize, int(transform.resize * long / short))
        image = image.resize(size if w <= h else size[::-1], Image.BILINEAR)
    if transform.crop is not None:
        w, h = image.size
        left, top = int(round((w - transform.crop) / 2.0)), int(round((h - transform.crop) / 2.0))
        image = image.crop((left, top, left + transform.crop, top + transform.crop))
    return np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)


def _split_roots(folder: Path) -> dict[str, Path]:
    """{split: folder of class folders}: train/ and test/ (or val/) when present, else the folder itself as test."""
    test = folder / "test" if (folder / "test").is_dir() else folder / "val"
    roots = {split: root for split, root in (("train", folder / "train"), ("test", test)) if root.is_dir()}
    return roots or {"test": folder}


def _list_split(root: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(image file, class index) of one split, in ImageFolder's order (class, then file name)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return [(path, label) for label, cls in enumerate(classes)
            for path in (sorted((root / cls).iterdir()) if (root / cls).is_dir() else [])
            if path.suffix.lower() in IMG_EXTENSIONS]


class _Decoder:
    """A map-style dataset over one split's files for a torch DataLoader: item i = (pixels or None, label)."""

    def __init__(self, files: list[tuple[Path, int]], transform: Transform, mode: str | None):
        self.files, self.transform, self.mode = files, transform, mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        try:
            with Image.open(path) as image:
                mode = self.transform.mode or self.mode or ("L" if image.mode in GREY_MODES else "RGB")
                return _apply(image, self.transform, mode), label
        except (OSError, ValueError, Image.DecompressionBombError):  # truncated, not an image, too large
            return None, label


def _as_list(items):
    return items


def _decoded(files: list[tuple[Path, int]], transform: Transform, state: dict):
    """Yield (path, pixels or None, label) in file order. Presets with a fixed mode decode in DataLoader workers
    (WORKERS of them, once the split has MIN_FILES_FOR_WORKERS files: decoding is the slow part); `none` takes
    its mode from the first image, so it decodes in order, in this process."""
    decoder = _Decoder(files, transform, state["mode"])
    workers = WORKERS if transform.mode is not None and len(files) >= MIN_FILES_FOR_WORKERS else 0
    if workers == 0:
        for i, (path, _) in enumerate(files):
            decoder.mode = state["mode"]
            pixels, label = decoder[i]
            if pixels is not None and state["mode"] is None:
                state["mode"] = "L" if pixels.ndim == 2 else "RGB"
            yield path, pixels, label
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(decoder, batch_size=DECODE_BATCH, num_workers=workers, collate_fn=_as_list)
    paths = iter(files)
    for chunk in loader:
        for pixels, label in chunk:
            yield next(paths)[0], pixels, label


def _decode_split(files: list[tuple[Path, int]], transform: Transform, state: dict, entry: Entry, split: str,
                  root: Path) -> None:
    """Decode one split's images into `entry` row by row; `state` carries the mode and size the first image fixed
    and the skip count."""
    writer, labels = None, []
    try:
        for path, pixels, label in _decoded(files, transform, state):
            if pixels is None:
                state["skipped"] += 1
                continue
            state["size"] = state["size"] or pixels.shape
            if pixels.shape != state["size"]:
                raise DatasetUnavailable(
                    f"image {path} has shape {pixels.shape}, the first image {state['size']}; with --transform none "
                    "resize all images to one size, or pick --transform imagenet, cifar or gray28")
            if writer is None:
                chw = (1, *pixels.shape) if pixels.ndim == 2 else (pixels.shape[2], *pixels.shape[:2])
                writer = entry.writer(split, chw, len(files))
            writer.write(pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
            labels.append(label)
    finally:
        if writer is not None:
            writer.close()
    if not labels:
        raise DatasetUnavailable(
            f"image folder {root} has no readable images in class folders ({state['skipped']} could "
            "not be decoded); give a folder of class folders of .png/.jpg/... images")
    entry.save_labels(split, np.asarray(labels))


def read_image_folder(folder: Path, transform: str = "none", cache_dir: Path | None = None
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...], int]:
    """Decode an ImageFolder layout with a transform preset into uint8 arrays on disk, once: later reads hit the cache.

    Args:
        folder: a folder of class folders (one split, "test"), or one with train/ and test/ or val/ in it.
        transform: a name in `TRANSFORMS`.
        cache_dir: where decoded arrays are cached (default `datasets_cache.default_cache_dir()`).

    Returns:
        ({split: (x (N, C, H, W) uint8, memory-mapped read-only from its .npy file, y (N,))}, class names sorted
        as ImageFolder does, images skipped as corrupt).

    Raises:
        DatasetUnavailable: no class folders or no readable images, classes a split has that the first lacks,
            images of different sizes under `none`.
    """
    roots = _split_roots(folder)
    first = next(iter(roots.values()))
    classes = tuple(sorted(d.name for d in first.iterdir() if d.is_dir()))
    files = {}
    for split, root in roots.items():
        unknown = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in classes)
        if unknown:
            raise DatasetUnavailable(f"image folder {root} has classes {unknown} that {first} does not have")
        files[split] = _list_split(root, classes)
    key = cache_key(folder, files, transform)
    cached = read_cache(key, cache_dir)
    if cached is not None:
        return cached[0], classes, cached[1]
    state, entry = {"mode": None, "size": None, "skipped": 0}, Entry(key, cache_dir)
    try:
        for split, listed in files.items():
            _decode_split(listed, TRANSFORMS[transform], state, entry, split, roots[split])
        return entry.commit(state["skipped"]), classes, state["skipped"]
    except BaseException:
        entry.abort()
        raise
