"""The hierarchical-attention spectrum encoder (FV2ES sec. III-A, after Nested Transformers).

A log-mel chunk [N_MELS, CHUNK_FRAMES] = [128, 32] is reshaped to a 64 x 64 square and embedded as a
16 x 16 grid of tokens. Level 1 runs a transformer inside each of the 16 patches (4 x 4 tokens each);
a 3x3 conv, LayerNorm and 3x3 max-pool (stride 2) merge every 4 neighbouring patches into one of 4
blocks; level 2 runs a transformer inside each block; the same aggregation combines them, and level 3
runs a transformer over the whole map. Mean pooling and a linear layer give one feature per chunk.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import config
from .layers import TransformerLayer


class Aggregate(nn.Module):
    """conv 3x3 -> LayerNorm (over channels) -> max-pool 3x3 stride 2: halves the grid, merges patches."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.LayerNorm(dim_out)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.pool(x)


class NestLevel(nn.Module):
    """Transformer layers applied inside each of `blocks_per_side`^2 blocks of a token grid."""

    def __init__(self, dim: int, *, blocks_per_side: int, tokens_per_side: int, depth: int, heads: int, dropout: float):
        super().__init__()
        self.n = blocks_per_side
        self.t = tokens_per_side
        self.position = nn.Parameter(torch.zeros(1, self.n * self.n, self.t * self.t, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList([TransformerLayer(dim, heads=heads, dropout=dropout) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        n, t = self.n, self.t
        blocks = x.reshape(b, c, n, t, n, t).permute(0, 2, 4, 3, 5, 1).reshape(b, n * n, t * t, c)
        blocks = (blocks + self.position).reshape(b * n * n, t * t, c)
        for layer in self.layers:
            blocks = layer(blocks)
        return blocks.reshape(b, n, n, t, t, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, n * t, n * t)


class HierarchicalSpectrumEncoder(nn.Module):
    def __init__(
        self,
        *,
        dims: tuple[int, int, int] = (32, 64, 128),
        heads: tuple[int, int, int] = (2, 4, 4),
        depth: int = 1,
        feature_dim: int = config.FEATURE_DIM,
        dropout: float = 0.1,
    ):
        super().__init__()
        side = int(math.isqrt(config.N_MELS * config.CHUNK_FRAMES))
        assert side * side == config.N_MELS * config.CHUNK_FRAMES, "a mel chunk must reshape to a square"
        self.side = side
        grid = 16  # tokens per side at level 1: 16 patches of 4 x 4 tokens
        self.embed = nn.Conv2d(1, dims[0], side // grid, stride=side // grid)
        self.level1 = NestLevel(dims[0], blocks_per_side=4, tokens_per_side=grid // 4, depth=depth, heads=heads[0], dropout=dropout)
        self.merge1 = Aggregate(dims[0], dims[1])
        self.level2 = NestLevel(dims[1], blocks_per_side=2, tokens_per_side=grid // 4, depth=depth, heads=heads[1], dropout=dropout)
        self.merge2 = Aggregate(dims[1], dims[2])
        self.level3 = NestLevel(dims[2], blocks_per_side=1, tokens_per_side=grid // 4, depth=depth, heads=heads[2], dropout=dropout)
        self.norm = nn.LayerNorm(dims[2])
        self.head = nn.Linear(dims[2], feature_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, N_MELS, CHUNK_FRAMES] -> features [B, feature_dim]."""
        x = mel.reshape(mel.shape[0], 1, self.side, self.side)
        x = self.level1(self.embed(x))
        x = self.level2(self.merge1(x))
        x = self.level3(self.merge2(x))
        return self.head(self.norm(x.flatten(2).mean(-1)))


class SpeechStateEncoder(nn.Module):
    """The audio encoder on Whisper input (config.AUDIO_INPUT "whisper"): one row per 0.4 s of speech,
    the mean and standard deviation of the Whisper encoder states in it ([2 x SPEECH_STATE_DIM]), ->
    one feature per row. The states are already a contextual, pretrained representation (four
    transformer layers over 30 s of audio): what is left to learn is a projection, kept small
    because RAVDESS has 960 training clips; attention across the rows of a segment is the branch's
    sequence encoder, as on Mel input."""

    def __init__(self, *, state_dim: int | None = None, hidden: int = 256, feature_dim: int = config.FEATURE_DIM, dropout: float = 0.3):
        super().__init__()
        state_dim = state_dim or config.SPEECH_STATE_DIM  # read when built: another ASR model, another width
        self.net = nn.Sequential(
            nn.LayerNorm(2 * state_dim),
            nn.Dropout(dropout),
            nn.Linear(2 * state_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, feature_dim),
        )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [B, 2 x SPEECH_STATE_DIM] -> features [B, feature_dim]."""
        return self.net(rows)
