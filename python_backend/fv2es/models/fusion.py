"""Per-segment fusion: sequence encoders per modality and the weighted late fusion of their logits.

Rows of audio chunks and face crops arrive flat, each with the index of its segment (-1 = padding
row, ignored). They are grouped into padded per-segment sequences, encoded by a small transformer
with a CLS token and classified per modality, each branch in the classes of the corpus it was
trained on. Those class probabilities are mapped onto the served labels (e.g. RAVDESS calm + neutral
-> neutral), and the per-modality log-probabilities are combined with learned modality weights,
re-normalised over the modalities present in each segment, and a learned sharpness.
For a multi-label set (MOSEI) the heads give per-label logits, combined the same way, and the
scores are sigmoids, as in the reference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import config
from .branches import SequenceBranch, TextBranch, text_head
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


def class_map(classes: tuple[str, ...], labels: tuple[str, ...]) -> torch.Tensor:
    """[len(classes), len(labels)] 0/1 matrix sending each corpus class to its served label."""
    if tuple(classes) == tuple(labels):
        return torch.eye(len(labels))
    matrix = torch.zeros(len(classes), len(labels))
    for i, name in enumerate(classes):
        label = config.CLASS_TO_LABEL.get(name, name)
        if label not in labels:
            raise ValueError(f"class {name!r} has no label in {labels}; extend config.CLASS_TO_LABEL")
        matrix[i, labels.index(label)] = 1.0
    missing = [label for j, label in enumerate(labels) if matrix[:, j].sum() == 0]
    if missing:
        raise ValueError(f"no class of {classes} maps to the labels {missing}")
    return matrix


class Fv2esFusion(nn.Module):
    def __init__(
        self,
        *,
        labels: tuple[str, ...] = config.LABELS,
        audio_classes: tuple[str, ...] = config.RAVDESS_CLASSES,
        visual_classes: tuple[str, ...] = config.FER2013_CLASSES,
        text_classes: tuple[str, ...] = config.MELD_CLASSES,
        multi_label: bool = config.LABEL_SET in config.MULTI_LABEL_SETS,
        feature_dim: int = config.FEATURE_DIM,
        text_dim: int = config.TEXT_FEATURE_DIM,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        if multi_label and not (audio_classes == visual_classes == text_classes == labels):
            raise ValueError("a multi-label model's branches must all predict the served labels")
        self.multi_label = multi_label
        self.audio_sequence = SequenceEncoder(feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.visual_sequence = SequenceEncoder(feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.audio_head = nn.Linear(feature_dim, len(audio_classes))
        self.visual_head = nn.Linear(feature_dim, len(visual_classes))
        self.text_head = text_head(text_dim, len(text_classes), dropout)
        self.register_buffer("audio_map", class_map(audio_classes, labels), persistent=False)
        self.register_buffer("visual_map", class_map(visual_classes, labels), persistent=False)
        self.register_buffer("text_map", class_map(text_classes, labels), persistent=False)
        # The reference's Linear(3, 1) without bias over stacked (audio, visual, text) logits, here as
        # softmax-normalised weights (so that a missing modality can be left out of the sum) times a
        # learned sharpness exp(log_scale). Fitted after the branches (build/train.py fusion).
        self.modality_weights = nn.Parameter(torch.zeros(3))
        self.log_scale = nn.Parameter(torch.zeros(()))
        # Each branch's temperature (audio, visual, text), fitted on validation data before the modality
        # weights, so that its probabilities mean what they say before they are mapped and fused
        # (build/training/calibration.py). A buffer: joint training leaves it at 1.
        self.register_buffer("branch_temperature", torch.ones(3))

    def load_branches(self, audio: SequenceBranch, visual: SequenceBranch, text: TextBranch) -> None:
        """Takes the sequence encoders and heads of trained branches (their encoders export separately).
        The sequence encoders are taken whole: their depth differs between branches and audio inputs."""
        self.audio_sequence = copy.deepcopy(audio.sequence)
        self.audio_head.load_state_dict(audio.head.state_dict())
        self.visual_sequence = copy.deepcopy(visual.sequence)
        self.visual_head.load_state_dict(visual.head.state_dict())
        self.text_head.load_state_dict(text.head.state_dict())

    def modality_logits(
        self,
        audio_features: torch.Tensor,
        audio_segment: torch.Tensor,
        visual_features: torch.Tensor,
        visual_segment: torch.Tensor,
        text_features: torch.Tensor,
        text_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality scores over the served labels [S, 3, C] (log-probabilities, or logits when
        multi-label) and presence [S, 3] (audio, visual, text)."""
        n_segments = text_features.shape[0]
        audio_seq, audio_mask = group_by_segment(audio_features, audio_segment, n_segments)
        visual_seq, visual_mask = group_by_segment(visual_features, visual_segment, n_segments)
        branch_logits = [
            self.audio_head(self.audio_sequence(audio_seq, audio_mask)),
            self.visual_head(self.visual_sequence(visual_seq, visual_mask)),
            self.text_head(text_features),
        ]
        present = torch.stack([~audio_mask.all(1), ~visual_mask.all(1), text_present.to(torch.bool)], dim=1)
        return self.to_labels(branch_logits[0], branch_logits[1], branch_logits[2]), present

    def to_labels(self, audio_logits: torch.Tensor, visual_logits: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
        """Branch logits in their corpus classes -> [S, 3, C] scores over the served labels."""
        audio_logits = audio_logits / self.branch_temperature[0]
        visual_logits = visual_logits / self.branch_temperature[1]
        text_logits = text_logits / self.branch_temperature[2]
        if self.multi_label:
            return torch.stack([audio_logits, visual_logits, text_logits], dim=1)
        mapped = [
            torch.softmax(audio_logits, -1) @ self.audio_map,
            torch.softmax(visual_logits, -1) @ self.visual_map,
            torch.softmax(text_logits, -1) @ self.text_map,
        ]
        return torch.log(torch.stack(mapped, dim=1).clamp(min=1e-8))

    def fuse(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Fused logits [S, C]: modality weights softmax-normalised over the modalities present.

        A segment with no modality at all gets all-zero logits (uniform scores).
        """
        raw = self.modality_weights.unsqueeze(0).expand(present.shape[0], -1)
        weights = torch.softmax(raw.masked_fill(~present, -1e9), dim=1) * present.to(raw.dtype)
        return torch.exp(self.log_scale) * (weights.unsqueeze(-1) * scores).sum(1)

    def scores(self, fused: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(fused) if self.multi_label else torch.softmax(fused, dim=-1)

    def forward(
        self,
        audio_features: torch.Tensor,
        audio_segment: torch.Tensor,
        visual_features: torch.Tensor,
        visual_segment: torch.Tensor,
        text_features: torch.Tensor,
        text_present: torch.Tensor,
    ) -> torch.Tensor:
        """Segment emotion scores [S, C]: probabilities (softmax), or per-label sigmoids when multi-label."""
        scores, present = self.modality_logits(
            audio_features, audio_segment, visual_features, visual_segment, text_features, text_present
        )
        return self.scores(self.fuse(scores, present))
