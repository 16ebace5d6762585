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
