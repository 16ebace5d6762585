"""Building blocks shared by the encoders."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + MLP block; FV2ES eq. (2) adds the GELU after the attention residual."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm1(x)
        attended, _ = self.attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """The per-modality sequence encoder: a learned CLS token over a padded, masked sequence."""

    def __init__(self, dim: int, *, depth: int = 4, heads: int = 4, max_len: int = 512, dropout: float = 0.1):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, max_len + 1, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList([TransformerLayer(dim, heads=heads, dropout=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], padding_mask [B, L] (True = padding) -> [B, D]. Longer sequences are subsampled."""
        length = x.shape[1]
        if length > self.max_len:
            keep = torch.linspace(0, length - 1, self.max_len, device=x.device).long()
            x, padding_mask = x[:, keep], padding_mask[:, keep]
            length = self.max_len
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position[:, : length + 1]
        mask = torch.cat([torch.zeros_like(padding_mask[:, :1]), padding_mask], dim=1)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x[:, 0])
