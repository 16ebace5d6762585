"""The text encoder: a pretrained transformer (ALBERT in the paper; MiniLM offline) pooled to one vector."""

from __future__ import annotations

import torch
from torch import nn

from .. import config
from ..text import resolve_text_model


class TextEncoder(nn.Module):
    """token ids, attention mask [B, TEXT_MAX_TOKENS] -> sentence embedding [B, hidden]."""

    def __init__(self, name: str = config.TEXT_MODEL, *, pooling: str = config.TEXT_POOLING):
        super().__init__()
        from transformers import AutoModel

        self.transformer = AutoModel.from_pretrained(resolve_text_model(name))
        self.pooling = pooling  # "mean" for sentence-transformer models (MiniLM), "cls" for ALBERT
        self.hidden_size = int(self.transformer.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PaddingTrimmed(nn.Module):
    """Runs `encoder` (the traced TextEncoder) on the batch's columns up to its longest mask only.

    Inputs arrive padded to TEXT_MAX_TOKENS; most segments are much shorter (a silent one is 2
    tokens). Attention and mean pooling are both masked, so the result is the same, at a cost that
    follows the real text length: 16 segments of the benchmark clip, 0.99 s -> 0.28 s.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = int(attention_mask.sum(1).max().clamp(min=1).item())
        return self.encoder(input_ids[:, :length], attention_mask[:, :length])
