"""A bring-your-own model factory used by the CLI tests (`tests.core.byo_model:tiny_mlp`)."""
from torch import nn


def tiny_mlp(num_classes: int = 10) -> nn.Module:
    """8x8 digits -> 32 hidden -> classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))
