"""Group emotion of a scene (Evtodienko 2021, "Multimodal End-to-End Group Emotion Recognition using
Cross-Modal Attention"): per segment, scores over GROUP_LABELS (positive / neutral / negative) for
everyone in view at once, not per person.

Per segment, two streams of tokens:
- visual: every face of every person in the segment (the visual encoder's features) and every
  sampled frame at low resolution (fv2es.scene, through a small CNN);
- audio: the segment's rows of the audio encoder's features.
Each stream starts with a learned summary token (a stream with no rows in a segment is that token
alone: "no faces", "no speech"), runs one self-attention layer, then attends to the other stream
(cross-modal attention, both directions at once), and the two summary tokens are classified. Faces
and frames are placed in segments by their times ([start, end), as fv2es.segments.frame_segments),
so a segment's answer depends on its own rows only: a live stream gets the whole file's answers.

The model takes its inputs by name (one Dict[str, Tensor], as the fusion does).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .. import config
from .fusion import group_by_segment
from .layers import TransformerLayer


def segment_of(times: torch.Tensor, segment_times: torch.Tensor) -> torch.Tensor:
    """Index of the segment [start, end) each time falls in, or -1 (fv2es.segments.frame_segments)."""
    if segment_times.shape[0] == 0:
        return torch.full_like(times, -1, dtype=torch.long)
    index = torch.searchsorted(segment_times[:, 0].contiguous(), times.contiguous(), right=True) - 1
    inside = (index >= 0) & (times < segment_times[index.clamp(min=0), 1])
    return torch.where(inside, index, torch.full_like(index, -1))


class SceneEncoder(nn.Module):
    """A grey SCENE_SIZE x SCENE_SIZE frame -> one feature vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, dim),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.layers(frames)


class CrossModalLayer(nn.Module):
    """One stream's tokens attend to the other stream's (pre-norm), then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_other = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor, other_padding: torch.Tensor) -> torch.Tensor:
        kv = self.norm_other(other)
        attended, _ = self.attn(self.norm_query(x), kv, kv, key_padding_mask=other_padding, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class GroupEmotion(nn.Module):
    def __init__(
        self,
        *,
        audio_features: str = "AUDIO_FEATURES",
        audio_index: str = "AUDIO_SEGMENT",
        feature_dim: int = config.FEATURE_DIM,
        dim: int = 64,
        heads: int = 4,
        dropout: float = 0.1,
        labels: tuple[str, ...] = config.GROUP_LABELS,
    ):
        super().__init__()
        self.audio_features = audio_features
        self.audio_index = audio_index
        self.face_in = nn.Linear(feature_dim, dim)
        self.audio_in = nn.Linear(feature_dim, dim)
        self.scene_in = SceneEncoder(dim)
        # What each visual token is (a face, a whole frame); the summary tokens of both streams.
        self.visual_kind = nn.Parameter(torch.zeros(2, dim))
        self.visual_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.audio_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.visual_kind, std=0.02)
        nn.init.trunc_normal_(self.visual_token, std=0.02)
        nn.init.trunc_normal_(self.audio_token, std=0.02)
        self.visual_self = TransformerLayer(dim, heads=heads, dropout=dropout)
        self.audio_self = TransformerLayer(dim, heads=heads, dropout=dropout)
        self.visual_from_audio = CrossModalLayer(dim, heads, dropout)
        self.audio_from_visual = CrossModalLayer(dim, heads, dropout)
        self.head = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(dim, len(labels)))

    def logits(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        segment_times = inputs["SEGMENT_TIMES"]
        n_segments = segment_times.shape[0]
        faces = self.face_in(inputs["VISUAL_FEATURES"]) + self.visual_kind[0]
        frames = self.scene_in(inputs["SCENE"]) + self.visual_kind[1]
        visual_owner = torch.cat([segment_of(inputs["FACE_TIMES"], segment_times), segment_of(inputs["SCENE_TIMES"], segment_times)])
        visual, visual_padding = self.with_token(torch.cat([faces, frames]), visual_owner, n_segments, self.visual_token)
        audio, audio_padding = self.with_token(self.audio_in(inputs[self.audio_features]), inputs[self.audio_index],
                                               n_segments, self.audio_token)
        visual = self.visual_self(visual, visual_padding)
        audio = self.audio_self(audio, audio_padding)
        visual, audio = (self.visual_from_audio(visual, audio, audio_padding),
                         self.audio_from_visual(audio, visual, visual_padding))
        return self.head(torch.cat([visual[:, 0], audio[:, 0]], dim=1))

    @staticmethod
    def with_token(rows: torch.Tensor, owner: torch.Tensor, n_segments: int, token: torch.Tensor):
        """Rows [N, D] of segments `owner` -> [S, 1 + L, D] each segment's rows after the summary
        token, and the padding mask (the token is never padding)."""
        padded, padding = group_by_segment(rows, owner, n_segments)
        tokens = token.expand(n_segments, -1, -1)
        return torch.cat([tokens, padded], 1), torch.cat([torch.zeros_like(padding[:, :1]), padding], 1)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Group scores [S, len(GROUP_LABELS)] (probabilities) of each SEGMENT_TIMES row, and the whole
        video's [len(GROUP_LABELS)]: their mean weighted by segment duration (as
        fv2es.segments.aggregate_scores, which a live stream uses)."""
        scores = torch.softmax(self.logits(inputs), dim=-1)
        times = inputs["SEGMENT_TIMES"]
        weights = (times[:, 1] - times[:, 0]).clamp(min=0)
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        return scores, (scores * weights.unsqueeze(1)).sum(0) / weights.sum()
