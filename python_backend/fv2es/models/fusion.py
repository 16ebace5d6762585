"""Per-segment fusion: one branch per modality (fv2es.modalities) and the weighted late fusion of their logits.

The model takes a dictionary of its input tensors by name (Triton's PyTorch backend passes a model
whose forward takes one Dict[str, Tensor] its inputs that way), so its interface follows the
modalities. Rows of a sequence modality (audio chunks or Whisper states, face crops) arrive flat,
each with the index of its segment (-1 = padding row, ignored). They are grouped into padded
per-segment sequences, encoded by a small transformer with a CLS token and classified; a
per-segment modality (text) is classified row by row. Each branch predicts the classes of the
corpus it was trained on. Those class probabilities are mapped onto the served labels (e.g. RAVDESS calm + neutral
-> neutral), and the per-modality log-probabilities are combined with learned modality weights,
re-normalised over the modalities present in each segment, and a learned sharpness.
For a multi-label set (MOSEI) the heads give per-label logits, combined the same way, and the
scores are sigmoids, as in the reference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from typing import Dict, List, Tuple

from .. import config, modalities as modality_registry
from ..modalities import Modality
from .branches import vector_head
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


class SequenceFusionBranch(nn.Module):
    """A sequence modality's rows -> per-segment logits and presence (the segment has a row)."""

    def __init__(self, modality: Modality, classes: tuple[str, ...], labels: tuple[str, ...], depth: int, heads: int, dropout: float):
        super().__init__()
        self.features_name = modality.features
        self.index_name = modality.index
        self.sequence = SequenceEncoder(modality.feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.head = nn.Linear(modality.feature_dim, len(classes))
        self.register_buffer("class_map", class_map(classes, labels), persistent=False)

    def load_trained(self, branch: nn.Module) -> None:
        """The sequence encoder (whole: its depth differs between branches and audio inputs) and head of a trained branch."""
        self.sequence = copy.deepcopy(branch.sequence)
        self.head.load_state_dict(branch.head.state_dict())

    def forward(self, inputs: Dict[str, torch.Tensor], n_segments: int) -> Tuple[torch.Tensor, torch.Tensor]:
        padded, mask = group_by_segment(inputs[self.features_name], inputs[self.index_name], n_segments)
        return self.head(self.sequence(padded, mask)), ~mask.all(1)


class SegmentFusionBranch(nn.Module):
    """A per-segment modality's rows (one per segment) and flags -> logits and presence."""

    def __init__(self, modality: Modality, classes: tuple[str, ...], labels: tuple[str, ...], dropout: float):
        super().__init__()
        self.features_name = modality.features
        self.index_name = modality.index
        self.head = vector_head(modality.feature_dim, len(classes), dropout)
        self.register_buffer("class_map", class_map(classes, labels), persistent=False)

    def load_trained(self, branch: nn.Module) -> None:
        self.head.load_state_dict(branch.head.state_dict())

    def forward(self, inputs: Dict[str, torch.Tensor], n_segments: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.head(inputs[self.features_name]), inputs[self.index_name].to(torch.bool)


class Fv2esFusion(nn.Module):
    def __init__(
        self,
        *,
        modalities: tuple[Modality, ...] | None = None,
        classes: dict[str, tuple[str, ...]] | None = None,
        labels: tuple[str, ...] = config.LABELS,
        multi_label: bool = config.LABEL_SET in config.MULTI_LABEL_SETS,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        """`classes`: each branch's classes by modality name (default: the entry's corpus classes)."""
        super().__init__()
        entries = modalities or modality_registry.modalities()
        modality_registry.check(entries)
        classes = {m.name: tuple((classes or {}).get(m.name, m.classes)) for m in entries}
        if multi_label and any(c != tuple(labels) for c in classes.values()):
            raise ValueError("a multi-label model's branches must all predict the served labels")
        self.multi_label = multi_label
        self.segment_count_input = modality_registry.segment_count_input(entries)
        self.branches = nn.ModuleDict({
            m.name: SequenceFusionBranch(m, classes[m.name], labels, m.sequence_depth, heads, dropout) if m.sequence
            else SegmentFusionBranch(m, classes[m.name], labels, dropout)
            for m in entries
        })
        n = len(entries)
        # The reference's Linear(3, 1) without bias over stacked (audio, visual, text) logits, here as
        # softmax-normalised weights (so that a missing modality can be left out of the sum) times a
        # learned sharpness exp(log_scale). Fitted after the branches (build/training/fusion_fit.py).
        self.modality_weights = nn.Parameter(torch.zeros(n))
        self.log_scale = nn.Parameter(torch.zeros(()))
        # Each branch's temperature, in modality order, fitted on validation data before the modality
        # weights, so that its probabilities mean what they say before they are mapped and fused
        # (build/training/calibration.py). A buffer: joint training leaves it at 1.
        self.register_buffer("branch_temperature", torch.ones(n))

    def load_branches(self, trained: dict[str, nn.Module]) -> None:
        """Takes the sequence encoders and heads of trained branches, by modality name (their encoders export separately)."""
        for name, branch in self.branches.items():
            branch.load_trained(trained[name])

    def modality_logits(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-modality scores over the served labels [S, M, C] (log-probabilities, or logits when
        multi-label) and presence [S, M], in modality order."""
        n_segments = inputs[self.segment_count_input].shape[0]
        logits: List[torch.Tensor] = []
        present: List[torch.Tensor] = []
        for branch in self.branches.values():
            branch_logits, branch_present = branch(inputs, n_segments)
            logits.append(branch_logits)
            present.append(branch_present)
        return self.to_labels(logits), torch.stack(present, dim=1)

    def to_labels(self, logits: List[torch.Tensor]) -> torch.Tensor:
        """Branch logits in their corpus classes, in modality order -> [S, M, C] scores over the served labels."""
        mapped: List[torch.Tensor] = []
        i = 0
        for branch in self.branches.values():
            scaled = logits[i] / self.branch_temperature[i]
            mapped.append(scaled if self.multi_label else torch.softmax(scaled, -1) @ branch.class_map)
            i += 1
        stacked = torch.stack(mapped, dim=1)
        return stacked if self.multi_label else torch.log(stacked.clamp(min=1e-8))

    def fuse(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Fused logits [S, C]: modality weights softmax-normalised over the modalities present.

        A segment with no modality at all gets all-zero logits (uniform scores).
        """
        raw = self.modality_weights.unsqueeze(0).expand(present.shape[0], -1)
        weights = torch.softmax(raw.masked_fill(~present, -1e9), dim=1) * present.to(raw.dtype)
        return torch.exp(self.log_scale) * (weights.unsqueeze(-1) * scores).sum(1)

    def scores(self, fused: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(fused) if self.multi_label else torch.softmax(fused, dim=-1)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Segment emotion scores [S, C] from the fusion's inputs by name: probabilities (softmax), or
        per-label sigmoids when multi-label."""
        scores, present = self.modality_logits(inputs)
        return self.scores(self.fuse(scores, present))
