"""torchvision dataset classes over a local root: `torchvision:CLASS:ROOT`, e.g. `torchvision:CIFAR10:/data/cifar`.

Only the classes in `ALLOWED` (their data are plain arrays torchvision reads itself); torchvision downloads into
ROOT only when the caller allows it (`--allow-download`). The split arrays are read from the dataset objects'
`data` and labels as uint8 (N, C, H, W); `datasets` normalises them with the class's standard constants where it
has them (MNIST, Fashion-MNIST, CIFAR-10), else with the train split's own mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets_files import FASHION_MEAN, FASHION_STD, MNIST_MEAN, MNIST_STD, DatasetUnavailable


@dataclass(frozen=True)
class TorchvisionSet:
    """How to open one class: `split_arg` False = train=True/False, True = split="train"/"test"; labels attribute."""

    split_arg: bool
    labels: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


_MNIST_LIKE = TorchvisionSet(False, "targets")
ALLOWED: dict[str, TorchvisionSet] = {
    "MNIST": TorchvisionSet(False, "targets", (MNIST_MEAN,), (MNIST_STD,)),
    "FashionMNIST": TorchvisionSet(False, "targets", (FASHION_MEAN,), (FASHION_STD,)),
    "KMNIST": _MNIST_LIKE,
    "CIFAR10": TorchvisionSet(False, "targets", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "CIFAR100": TorchvisionSet(False, "targets"),
    "SVHN": TorchvisionSet(True, "labels"),
    "STL10": TorchvisionSet(True, "labels"),
}


def parse_spec(name: str) -> tuple[str, Path]:
    """(class name, root) of `torchvision:CLASS:ROOT`.

    Raises:
        DatasetUnavailable: a malformed spec or a class outside `ALLOWED`.
    """
    _, _, rest = name.partition(":")
    cls, sep, root = rest.partition(":")
    if not sep or not root:
        raise DatasetUnavailable(f"dataset {name!r}: use torchvision:CLASS:ROOT, e.g. torchvision:CIFAR10:/data/cifar")
    if cls not in ALLOWED:
        raise DatasetUnavailable(f"torchvision dataset {cls!r} is not supported; use one of {', '.join(ALLOWED)}")
    return cls, Path(root).expanduser()


def _arrays(dataset, spec: TorchvisionSet) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) images and int labels of one torchvision dataset object."""
    x = np.asarray(dataset.data, dtype=np.uint8)
    if x.ndim == 3:  # MNIST-like (N, H, W)
        x = x[:, None]
    elif x.shape[-1] == 3:  # CIFAR (N, H, W, 3); SVHN and STL10 are already (N, 3, H, W)
        x = x.transpose(0, 3, 1, 2)
    return x, np.asarray(getattr(dataset, spec.labels), dtype=np.int64)


def read_torchvision(name: str, allow_download: bool
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, tuple[str, ...] | None, TorchvisionSet]:
    """Open both splits of `torchvision:CLASS:ROOT`.

    Returns:
        ({split: (x (N, C, H, W) uint8, y (N,))}, the source description, the class names or None, the class's
        `TorchvisionSet`).

    Raises:
        DatasetUnavailable: unknown class, no data under ROOT (the line names --allow-download), a failed download.
    """
    from torchvision import datasets as tvd

    cls, root = parse_spec(name)
    spec = ALLOWED[cls]
    raw = {}
    for split in ("train", "test"):
        kwargs = {"split": split} if spec.split_arg else {"train": split == "train"}
        try:
            dataset = getattr(tvd, cls)(str(root), download=allow_download, **kwargs)
        except RuntimeError as err:
            if allow_download:
                raise DatasetUnavailable(f"torchvision {cls} could not be downloaded into {root}: {err}") from None
            raise DatasetUnavailable(f"no torchvision {cls} data under {root}; point ROOT at the folder that holds "
                                     f"it, or pass --allow-download to let torchvision download it") from None
        except OSError as err:  # a network failure, a read-only root
            raise DatasetUnavailable(f"torchvision {cls} under {root} cannot be read or fetched: {err}") from None
        raw[split] = _arrays(dataset, spec)
    classes = getattr(dataset, "classes", None)
    return raw, f"torchvision {cls}: {root}", tuple(str(c) for c in classes) if classes else None, spec
