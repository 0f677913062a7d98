"""Models written the way people write them, whose forward depends on the memory layout (for the tuning tests)."""
import torch
import torch.nn.functional as F
from torch import nn


class ViewFlattenCNN(nn.Module):
    """A plain MNIST CNN that flattens with `.view` after its convolutions (fails on a channels_last tensor)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class TransposeViewCNN(ViewFlattenCNN):
    """Swaps H and W, makes the tensor contiguous, then views: runs in both layouts and must give the same logits."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.transpose(2, 3).contiguous().view(x.size(0), -1)
        return self.fc(x)


class MemoryOrderCNN(ViewFlattenCNN):
    """Reads its activations' memory as if it were (N, C*H*W): silently different features under channels_last."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        n = x.size(0)
        x = torch.as_strided(x, (n, x[0].numel()), (x[0].numel(), 1))
        return self.fc(x)


class OutOfMemoryAbove(ViewFlattenCNN):
    """Raises the CUDA out-of-memory error for batches larger than `limit` (a GPU without enough memory, on a CPU)."""

    limit = 300

    def forward(self, x):
        if x.size(0) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, batch {x.size(0)} > {self.limit})")
        return super().forward(x)
