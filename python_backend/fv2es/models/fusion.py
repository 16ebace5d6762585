"""Per-segment fusion: sequence encoders per modality and the weighted late fusion of their logits.

Rows of audio chunks and face crops arrive flat, each with the index of its segment (-1 = padding
row, ignored). They are grouped into padded per-segment sequences, encoded by a small transformer
with a CLS token, classified per modality, and the logits are combined with learned modality weights
that are re-normalised over the modalities present in each segment.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import config
from .layers import SequenceEncoder


def group_by_segment(features: torch.Tensor, segment: torch.Tensor, n_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat rows [N, D] with segment ids [N] -> padded [S, L, D] and padding mask [S, L] (True = pad)."""
    keep = segment >= 0
    features, segment = features[keep], segment[keep]
    counts = torch.bincount(segment, minlength=n_segments)[:n_segments]
    longest = int(counts.max()) if counts.numel() > 0 and segment.numel() > 0 else 0
    longest = max(longest, 1)
    order = torch.argsort(segment, stable=True)
    features, segment = features[order], segment[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(segment.numel(), device=features.device) - starts[segment]
    padded = torch.zeros(n_segments, longest, features.shape[1], dtype=features.dtype, device=features.device)
    padded[segment, position] = features
    mask = torch.ones(n_segments, longest, dtype=torch.bool, device=features.device)
    mask[segment, position] = False
    return padded, mask


class Fv2esFusion(nn.Module):
    def __init__(
        self,
        *,
        n_classes: int = len(config.LABELS),
        feature_dim: int = config.FEATURE_DIM,
        text_dim: int = config.TEXT_FEATURE_DIM,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.audio_sequence = SequenceEncoder(feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.visual_sequence = SequenceEncoder(feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.audio_head = nn.Linear(feature_dim, n_classes)
        self.visual_head = nn.Linear(feature_dim, n_classes)
        self.text_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(text_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, n_classes))
        # The reference's Linear(3, 1) without bias over stacked (audio, visual, text) logits, here as
        # softmax-normalised weights so that a missing modality can be left out of the sum.
        self.modality_weights = nn.Parameter(torch.zeros(3))

    def modality_logits(
        self,
        audio_features: torch.Tensor,
        audio_segment: torch.Tensor,
        visual_features: torch.Tensor,
        visual_segment: torch.Tensor,
        text_features: torch.Tensor,
        text_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality logits [S, 3, C] and presence [S, 3] (audio, visual, text)."""
        n_segments = text_features.shape[0]
        audio_seq, audio_mask = group_by_segment(audio_features, audio_segment, n_segments)
        visual_seq, visual_mask = group_by_segment(visual_features, visual_segment, n_segments)
        logits = torch.stack(
            [
                self.audio_head(self.audio_sequence(audio_seq, audio_mask)),
                self.visual_head(self.visual_sequence(visual_seq, visual_mask)),
                self.text_head(text_features),
            ],
            dim=1,
        )
        present = torch.stack([~audio_mask.all(1), ~visual_mask.all(1), text_present.to(torch.bool)], dim=1)
        return logits, present

    def fuse(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Fused logits [S, C]: modality weights softmax-normalised over the modalities present.

        A segment with no modality at all gets all-zero logits (uniform scores).
        """
        raw = self.modality_weights.unsqueeze(0).expand(present.shape[0], -1)
        weights = torch.softmax(raw.masked_fill(~present, -1e9), dim=1) * present.to(raw.dtype)
        return (weights.unsqueeze(-1) * logits).sum(1)

    def forward(
        self,
        audio_features: torch.Tensor,
        audio_segment: torch.Tensor,
        visual_features: torch.Tensor,
        visual_segment: torch.Tensor,
        text_features: torch.Tensor,
        text_present: torch.Tensor,
    ) -> torch.Tensor:
        """Segment emotion probabilities [S, C] (softmax of the fused logits)."""
        logits, present = self.modality_logits(
            audio_features, audio_segment, visual_features, visual_segment, text_features, text_present
        )
        return torch.softmax(self.fuse(logits, present), dim=-1)
