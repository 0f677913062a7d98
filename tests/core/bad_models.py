"""Model factories written the way careless or hostile users write them, for the bad-input matrix."""
import torch
from torch import nn


class _Pair(nn.Module):
    """Returns (logits, features): a common research-code habit the engine cannot score."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


def tuple_output(num_classes: int = 10) -> nn.Module:
    return _Pair()


def wants_784_features(num_classes: int = 10) -> nn.Module:
    """An MNIST MLP: fed 8x8 digits it fails inside forward."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))


def wants_3_channels(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))  # 8x8 RGB


def one_output(num_classes: int = 10) -> nn.Module:
    """A regression head: one number per sample."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))


def not_a_module(num_classes: int = 10):
    return 42


def raises(num_classes: int = 10) -> nn.Module:
    raise ValueError("this factory is broken")


class _Crashes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        raise KeyError("forward crashed")


def forward_raises(num_classes: int = 10) -> nn.Module:
    return _Crashes()


def needs_an_argument(width: int) -> nn.Module:
    return nn.Linear(width, 10)


def scalar_output(num_classes: int = 10) -> nn.Module:
    class _Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return torch.sum(self.fc(x.flatten(1)))
    return _Sum()
