"""Joint training of the whole V2EM model on a video corpus in the FE2E layout (IEMOCAP, CMU-MOSEI).

The paper's setting: every utterance brings its frames, its audio and its transcript; the three
branches and the fusion train together on the fused output (cross-entropy, or BCE with logits for
MOSEI's multi-hot labels). Frames go through the server's face detector and crop, audio through
its decoder and the audio encoder's input (Whisper states or mel chunks), text through its
tokenizer. The result is saved as the same four weight files as the per-corpus training, so
`make build` exports it unchanged (with LABEL_SET set to match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch import nn

from fv2es import config, models
from fv2es.faces import FaceDetector, main_faces, make_face_detector, video_faces
from fv2es.media import demux
from fv2es.models.branches import create_branch
from fv2es.text import load_tokenizer, tokenize

from . import data
from .. import settings
from .fe2e import Fe2eSample, load_fe2e
from .loop import Batch, Task
from .speech import AudioRows


class V2EM(nn.Module):
    """Audio, visual and text branches over one label set, fused as the server fuses them."""

    def __init__(self, labels: tuple[str, ...], multi_label: bool):
        super().__init__()
        self.audio = create_branch("audio", len(labels))
        self.visual = create_branch("visual", len(labels))
        self.text = create_branch("text", len(labels))
        # An FE2E corpus brings these three modalities (fe2e.py reads them); each branch predicts its label set.
        self.fusion = models.create("fusion", labels=labels, classes=dict.fromkeys(("audio", "visual", "text"), labels),
                                    multi_label=multi_label)

    def forward(self, chunks, chunk_mask, faces, face_mask, ids, mask) -> torch.Tensor:
        """Fused logits [B, C]."""
        scores = self.fusion.to_labels([self.audio(chunks, chunk_mask), self.visual(faces, face_mask), self.text(ids, mask)])
        present = torch.stack([~chunk_mask.all(1), ~face_mask.all(1), mask.any(1)], dim=1)
        return self.fusion.fuse(scores, present)

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("text.")}
        state.update({f"text.{k}": v for k, v in self.text.trained_state_dict().items()})
        return state


def sample_faces(sample: Fe2eSample, detector: FaceDetector) -> torch.Tensor:
    """Face crops of up to TRAIN_MAX_FRAMES frames spread over the utterance, as face_crop makes them."""
    paths = sample.frame_paths
    if len(paths) > settings.TRAIN_MAX_FRAMES:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, settings.TRAIN_MAX_FRAMES).round().astype(int)]
    frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths) if f is not None]
    # The server's face step (the largest face of each frame, as the segment scores use): frames without a face drop out.
    crops, _ = main_faces(video_faces(enumerate(frames), detector))
    return torch.from_numpy(crops)


def multimodal_task(root: Path, dataset: str, quick: bool) -> Task:
    labels = config.LABEL_SETS[dataset]
    multi_label = dataset in config.MULTI_LABEL_SETS
    detector, tokenizer = make_face_detector(), load_tokenizer()

    def prepare(split: str) -> dict:
        samples = load_fe2e(root, dataset, split)
        if quick:
            samples = samples[: settings.QUICK_EXAMPLES]
        if not samples:
            raise ValueError(f"{root}: the {split} split of {dataset} is empty")
        ids, mask = tokenize(tokenizer, [s.text for s in samples])
        waves = [torch.from_numpy(demux(s.audio_path.read_bytes()).audio) for s in samples]
        return {
            "audio": AudioRows(f"fe2e-{dataset}-{split}{'-quick' if quick else ''}", waves),
            "faces": [sample_faces(s, detector) for s in samples],
            "ids": ids,
            "mask": mask,
            "targets": torch.from_numpy(np.stack([s.target for s in samples])),
        }

    train, val = prepare("train"), prepare("valid")
    val_chunks = [val["audio"](i) for i in range(len(val["targets"]))]  # fixed: computed once

    def batches(split: dict, generator: torch.Generator | None, batch_size: int) -> Iterator[Batch]:
        n = len(split["targets"])
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size].numpy()
            chunks = [val_chunks[i] if generator is None else split["audio"](i, generator) for i in index]
            faces = [split["faces"][i] for i in index]
            if generator is not None:
                faces = [data.augment_faces(f, generator) if len(f) else f for f in faces]
            chunks, chunk_mask = data.pad_sequences(chunks)
            faces, face_mask = pad_faces(faces)
            width = max(1, int(split["mask"][index].sum(1).max()))
            ids = torch.from_numpy(split["ids"][index, :width])
            mask = torch.from_numpy(split["mask"][index, :width])
            targets = split["targets"][index]
            yield (chunks, chunk_mask, faces, face_mask, ids, mask), (targets if multi_label else targets.argmax(1))

    return Task(
        f"multimodal-{dataset}",
        V2EM(labels, multi_label),
        labels,
        len(train["targets"]),
        len(val["targets"]),
        lambda generator, bs: batches(train, generator, bs),
        lambda bs: batches(val, None, bs),
        select_by="wacc",
        multi_label=multi_label,
    )


def pad_faces(faces: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Like pad_sequences, with at least one (padding) row so that a batch without any face has a shape."""
    if max(len(f) for f in faces) == 0:
        return torch.zeros(len(faces), 1, 1, config.FACE_SIZE, config.FACE_SIZE), torch.ones(len(faces), 1, dtype=torch.bool)
    return data.pad_sequences(faces)
