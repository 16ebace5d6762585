"""The audio, visual and text branches as training tasks on their corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fv2es.text import load_tokenizer, tokenize
from fv2es.models.branches import create_branch

from . import data
from .loop import Batch, Task


def _order(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)


def audio_task(data_dir: Path, quick: bool) -> Task:
    train = data.load_ravdess(data_dir, validation=False, quick=quick)
    val = data.load_ravdess(data_dir, validation=True, quick=quick)
    chunker = data.MelChunker()
    val_chunks = [chunker(w) for w in val.inputs]  # fixed: computed once

    def batches(split: data.Split, chunks_of, generator: torch.Generator | None, batch_size: int) -> Iterator[Batch]:
        order = _order(len(split), generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            padded, mask = data.pad_sequences([chunks_of(int(i), generator) for i in index])
            yield (padded, mask), split.targets[index]

    return Task(
        "audio",
        create_branch("audio", len(train.classes)),
        train.classes,
        len(train),
        len(val),
        lambda generator, bs: batches(train, lambda i, g: chunker(train.inputs[i], g), generator, bs),
        lambda bs: batches(val, lambda i, g: val_chunks[i], None, bs),
    )


def visual_task(data_dir: Path, quick: bool, augment: str = "basic") -> Task:
    """FER2013; `augment` "strong" adds data.augment_faces's stronger set (the fine-tuning run's)."""
    train = data.load_fer2013(data_dir, validation=False, quick=quick)
    val = data.load_fer2013(data_dir, validation=True, quick=quick)
    no_padding = torch.zeros(1, 1, dtype=torch.bool)
    strong = augment == "strong"

    def batches(split: data.Split, generator: torch.Generator | None, batch_size: int) -> Iterator[Batch]:
        order = _order(len(split), generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            faces = split.inputs[index]
            if generator is not None:
                faces = data.augment_faces(faces, generator, strong=strong)
            # A still image is a sequence of one frame for the visual sequence encoder.
            yield (faces.unsqueeze(1), no_padding.expand(len(index), 1)), split.targets[index]

    branch = create_branch("visual", len(train.classes))
    # channels-last convolutions train about 1.5x faster on CPU; the hook leaves the weights' names alone.
    branch.encoder.to(memory_format=torch.channels_last)
    branch.encoder.register_forward_pre_hook(lambda module, args: (args[0].contiguous(memory_format=torch.channels_last),))
    return Task(
        "visual",
        branch,
        train.classes,
        len(train),
        len(val),
        lambda generator, bs: batches(train, generator, bs),
        lambda bs: batches(val, None, bs),
    )


def text_task(data_dir: Path, quick: bool, context: int = 0) -> Task:
    """MELD; with `context` > 0 each utterance is paired with the ones before it in its dialogue."""
    train = data.load_meld(data_dir, validation=False, quick=quick, context=context)
    val = data.load_meld(data_dir, validation=True, quick=quick, context=context)
    tokenizer = load_tokenizer()

    def encode(split: data.Split) -> tuple[np.ndarray, np.ndarray]:
        if not context:
            return tokenize(tokenizer, split.inputs)
        return tokenize(tokenizer, [text for text, _ in split.inputs], [before for _, before in split.inputs])

    tokens = {id(split): encode(split) for split in (train, val)}

    def batches(split: data.Split, generator: torch.Generator | None, batch_size: int) -> Iterator[Batch]:
        ids, mask = tokens[id(split)]
        order = _order(len(split), generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size].numpy()
            # Columns past the batch's longest text are all padding: dropped, the result is the same.
            width = int(mask[index].sum(1).max())
            yield (torch.from_numpy(ids[index, :width]), torch.from_numpy(mask[index, :width])), split.targets[index]

    return Task(
        "text",
        create_branch("text", len(train.classes)),
        train.classes,
        len(train),
        len(val),
        lambda generator, bs: batches(train, generator, bs),
        lambda bs: batches(val, None, bs),
        # MELD is mostly neutral: picking by weighted F1 alone favours an epoch that ignores fear and disgust.
        select_by="mean_weighted_macro_f1",
        class_counts=tuple(torch.bincount(train.targets, minlength=len(train.classes)).tolist()),
    )
