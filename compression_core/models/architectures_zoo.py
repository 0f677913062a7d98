"""Built-ins that look like real networks, sized for (N, 1, 28, 28): a CIFAR-style ResNet-20 with BatchNorm and
residual additions, a depthwise-separable MobileNet-style net, and a small pre-norm Vision Transformer.

Every weight the engine may compress is an `nn.Linear` or `nn.Conv2d` (the ViT's attention too: one qkv Linear
and one output Linear, never `nn.MultiheadAttention`, whose packed `in_proj_weight` is not a Linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or a strided 1x1 conv + BN where the block changes width or resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 after He et al. 2016 (CIFAR): conv 16@3x3 + BN, three stages of three basic blocks at 16, 32 and
    64 channels (the last two start with stride 2), global average pool, fc.

    For 28x28 input the stem conv has stride 2, so the stages run at 14, 7 and 4 pixels (CIFAR's at 32, 16, 8):
    a quarter of the compute, which is what lets it train on a laptop CPU.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            layers = [BasicBlock(channels if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(blocks)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))             # (N, 16, 14, 14)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 4, 4)
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """MobileNet-v1 block: depthwise 3x3 conv (groups = channels) + BN + ReLU6, pointwise 1x1 conv + BN + ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
                                   bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.depthwise(x)))
        return F.relu6(self.bn2(self.pointwise(x)))


class MobileNetS(nn.Module):
    """A small MobileNet-v1 (Howard et al. 2017): conv 32@3x3 stride 2 + BN + ReLU6, then depthwise-separable blocks
    (out channels, stride) 64/1, 128/2, 128/1, 256/2, 256/1 (28 -> 14 -> 7 -> 4 pixels), global average pool, fc."""

    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 1, stem: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, channels = [], stem
        for width, stride in self.BLOCKS:
            blocks.append(DepthwiseSeparable(channels, width, stride))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.bn1(self.conv1(x))))  # (N, 256, 4, 4)
        return self.fc(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention with one qkv Linear (dim -> 3 * dim) and an output Linear (dim -> dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, tokens, dim / heads)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of width mlp."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): patch embedding by a Conv2d with kernel = stride =
    patch, a class token, learned position embeddings, pre-norm blocks, a final LayerNorm and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image: int = 28, patch: int = 7, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp: int = 128):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim): one token per patch
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
