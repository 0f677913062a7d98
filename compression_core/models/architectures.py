"""The built-in architectures (LeNet-5, LeNet-300-100, small CNN / MLP for digits and MNIST-1D, and from
`architectures_zoo` a ResNet-20, a MobileNet and a ViT) and their registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .architectures_zoo import MobileNetS, ResNet20, ViTTiny


class LeNet5(nn.Module):
    """Caffe's LeNet-5 for (N, 1, 28, 28): conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)  # (N, 20, 12, 12)
        x = F.max_pool2d(self.conv2(x), 2)  # (N, 50, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened input: sizes[0] -> ... -> num_classes (fc1, fc2, ...)."""

    def __init__(self, sizes: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        dims = list(sizes) + [num_classes]
        self.layers = len(dims) - 1
        for i in range(self.layers):
            setattr(self, f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.layers):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.layers}")(x)


class DigitsCNN(nn.Module):
    """Small CNN for (N, 1, 8, 8): conv 16@3x3, conv 32@3x3, max-pool 2, fc 64, fc."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))                  # (N, 16, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 32, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN for (N, 1, 40): three Conv1d (25 channels, stride 2) with ReLU, then a linear layer."""

    def __init__(self, num_classes: int = 10, channels: int = 25):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels * 5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # (N, C, 19)
        x = F.relu(self.conv2(x))  # (N, C, 10)
        x = F.relu(self.conv3(x))  # (N, C, 5)
        return self.fc(x.flatten(1))


@dataclass(frozen=True)
class Architecture:
    """A built-in architecture: its constructor, the dataset it is meant for (the default checkpoint), its story."""

    build: Callable[[int], nn.Module]
    dataset: str
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    "lenet300": Architecture(lambda c: MLP((784, 300, 100), c), "mnist",
                             "LeNet-300-100: 784-300-100-10 ReLU MLP (LeCun et al. 1998; Han et al. 2015)"),
    "lenet5": Architecture(LeNet5, "mnist", "LeNet-5 as in Caffe: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10"),
    "digits-cnn": Architecture(DigitsCNN, "digits", "Small CNN for 8x8 digits: conv 16, conv 32, pool, fc 64, fc 10"),
    "mnist1d-mlp": Architecture(lambda c: MLP((40, 100, 100), c), "mnist1d", "MLP for MNIST-1D: 40-100-100-10 ReLU"),
    "mnist1d-cnn": Architecture(MNIST1DCNN, "mnist1d",
                                "CNN for MNIST-1D (Greydanus 2020): 3 Conv1d of 25 channels, stride 2, then fc 125-10"),
    "resnet20": Architecture(ResNet20, "fashion-mnist",
                             "ResNet-20 (He et al. 2016): BatchNorm, 3 stages x 3 residual blocks at 16/32/64 "
                             "channels, stride-2 stem for 28x28, global average pool, fc"),
    "mobilenet-s": Architecture(MobileNetS, "fashion-mnist",
                                "Small MobileNet-v1: stride-2 stem, 5 depthwise-separable blocks (depthwise 3x3 + "
                                "pointwise 1x1, BatchNorm, ReLU6) up to 256 channels, global average pool, fc"),
    "vit-tiny": Architecture(ViTTiny, "mnist",
                             "Small ViT: 7x7 patches (16 tokens + class token), 4 pre-norm blocks of dim 64, 4 heads "
                             "(qkv and output Linears), GELU MLP 128, LayerNorm, linear head"),
}
