"""A small transformer written the usual way: token ids + attention mask in, pooled logits or an embedding out."""
import torch
from torch import nn


class TinyTextClassifier(nn.Module):
    """Embedding + one TransformerEncoderLayer + masked mean pooling + a Linear head (`num_classes` 0: embeddings)."""

    def __init__(self, vocab: int = 50, dim: int = 32, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.encoder = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, input_ids, attention_mask):
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)  # (N, L, D)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (N, D)
        return self.head(pooled)
