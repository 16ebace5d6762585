"""One branch per modality, as trained: encoder -> sequence encoder (CLS) -> classifier head.

The server runs the same modules split differently: the encoders per frame / per chunk in their own
Triton models, the sequence encoders and heads inside the fusion model (`Fv2esFusion.load_branches`).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import config, modalities
from .layers import SequenceEncoder


def vector_head(feature_dim: int, n_classes: int, dropout: float = 0.1) -> nn.Sequential:
    """One feature vector per segment (a per-segment modality: the text's sentence embedding) -> class logits."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, config.FEATURE_DIM), nn.GELU(), nn.Linear(config.FEATURE_DIM, n_classes))


def encode_rows(encoder: nn.Module, rows: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Runs a per-row encoder on the real rows of a padded batch [B, L, ...] -> features [B, L, D]."""
    keep = ~padding_mask
    features = encoder(rows[keep])
    out = features.new_zeros(*padding_mask.shape, features.shape[-1])
    out[keep] = features
    return out


class SequenceBranch(nn.Module):
    """A sequence modality's branch (audio chunks or states, face crops) over padded sequences."""

    def __init__(self, encoder: nn.Module, n_classes: int, *, depth: int = 4, heads: int = 4, dropout: float = 0.1,
                 feature_dim: int = config.FEATURE_DIM):
        super().__init__()
        self.encoder = encoder
        self.sequence = SequenceEncoder(feature_dim, depth=depth, heads=heads, dropout=dropout)
        self.head = nn.Linear(feature_dim, n_classes)
        # Training only: classifies the mean of the frame features, a short gradient path to the
        # encoder while the sequence encoder above it is still untrained (not exported).
        self.pooled_head = nn.Linear(feature_dim, n_classes)

    def forward(self, rows: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """rows [B, L, ...], padding_mask [B, L] (True = padding; each sequence has one real row) -> logits [B, C]."""
        return self.head(self.sequence(encode_rows(self.encoder, rows, padding_mask), padding_mask))

    def training_outputs(self, rows: torch.Tensor, padding_mask: torch.Tensor) -> list[torch.Tensor]:
        """The logits the training loss is applied to: the branch's own, and the pooled features'."""
        features = encode_rows(self.encoder, rows, padding_mask)
        real = (~padding_mask).unsqueeze(-1).to(features.dtype)
        pooled = (features * real).sum(1) / real.sum(1).clamp(min=1.0)
        return [self.head(self.sequence(features, padding_mask)), self.pooled_head(pooled)]


class VectorBranch(nn.Module):
    """A per-segment modality's branch: its encoder's one vector per segment under a head."""

    def __init__(self, encoder: nn.Module, n_classes: int, feature_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = vector_head(feature_dim, n_classes)

    def forward(self, *rows: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(*rows))


class TextBranch(nn.Module):
    """Pretrained text encoder, its top TEXT_TRAINABLE_LAYERS fine-tuned, and the text head."""

    def __init__(self, encoder: nn.Module, n_classes: int, text_dim: int = config.TEXT_FEATURE_DIM):
        super().__init__()
        self.encoder = encoder
        self.head = vector_head(text_dim, n_classes)
        for name, parameter in self.encoder.named_parameters():
            parameter.requires_grad_(is_trainable_text_parameter(name, self.encoder))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changed: the head and the fine-tuned layers (the rest ships in its package)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable or k.startswith("head.")}


def is_trainable_text_parameter(name: str, encoder: nn.Module) -> bool:
    """BERT-like models (MiniLM): the top TEXT_TRAINABLE_LAYERS layers. Models that share one layer's
    weights across depth (ALBERT) have no per-layer parameters: all of them train."""
    n_layers = int(getattr(encoder.transformer.config, "num_hidden_layers", 0))
    marker = ".encoder.layer."
    if marker not in "." + name:
        has_layers = any(marker in "." + n for n, _ in encoder.named_parameters())
        return not has_layers
    index = int(("." + name).split(marker)[1].split(".")[0])
    return index >= n_layers - config.TEXT_TRAINABLE_LAYERS


def create_branch(modality: str, n_classes: int) -> nn.Module:
    """A fresh branch (training form) for a modality of fv2es.modalities: its encoder (models.create)
    under a sequence encoder and head, or under a head alone for a per-segment modality."""
    from . import create

    entry = modalities.by_name(modality)
    if entry.sequence:
        return SequenceBranch(create(entry.encoder), n_classes, depth=entry.sequence_depth, feature_dim=entry.feature_dim)
    if entry.name == "text":  # a pretrained language model, its top layers fine-tuned
        return TextBranch(create(entry.encoder), n_classes, entry.feature_dim)
    return VectorBranch(create(entry.encoder), n_classes, entry.feature_dim)
