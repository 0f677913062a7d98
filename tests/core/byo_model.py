"""A bring-your-own model factory used by the CLI tests (`tests.core.byo_model:tiny_mlp`)."""
from torch import nn


def tiny_mlp(num_classes: int = 10) -> nn.Module:
    """8x8 digits -> 32 hidden -> classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))


def tiny_mlp_rgb32(num_classes: int = 10) -> nn.Module:
    """3x32x32 images (the cifar transform) -> 16 hidden -> classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes))


def strided_cnn_rgb(num_classes: int = 10) -> nn.Module:
    """3x224x224 images (the imagenet transform): a strided conv, global average pooling, a linear head."""
    return nn.Sequential(nn.Conv2d(3, 8, 7, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
