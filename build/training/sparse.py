"""The sparse face selection (FE2E's sparse cross-modal attention; fv2es.models.sparse), fitted with
the shipped encoders and fusion frozen, and measured against encoding every face.

No audio-visual corpus is here, so a segment is composed (as for the fusion fit and the end-to-end
fine-tuning): a served label that FER2013, the speech corpora and MELD all have; CLIP_FACES FER2013
faces, of which 1 to CLIP_FACES show that label and the others a neutral face (an expression comes
and goes within a segment: the face at rest between), in random order; one speech clip of that
label (its audio-encoder features); and words: a MELD utterance of the label (half the segments),
a neutral one (a quarter: most words in a video carry no emotion) or none (a quarter).

The attention is fitted to put its weight on the faces that show the segment's emotion: its target
over a segment's faces is the softmax of each face's log-probability of the segment's label by the
visual branch alone (temperature `target_temperature`), the loss their cross-entropy. What counts is
measured on the same validation segments (FER2013's validation faces, the speech corpora's held-out
speakers, MELD dev) with the served fusion: accuracy with every face, with the faces the selection
keeps (its nucleus at config.SPARSE_VISUAL_MASS), and with as many faces picked at random; the share
of faces kept (the visual encoder's work); and the same on segments whose faces all show the label.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fv2es import config, models, modalities
from fv2es.faces import normalise_faces
from fv2es.text import load_tokenizer, tokenize

from .. import settings
from ..export import trained_models
from . import data
from .end_to_end import served_label
from .group import balanced, speech_clips
from .loop import fit_steps
from .metrics import classification_metrics
from .weights import save_weights, weights_path

CLIP_FACES = 8
NEUTRAL = config.LABELS.index("neutral")
TEXT_SHARES = (0.5, 0.25, 0.25)  # words of the label, neutral words, no words


class Pools:
    """One split's encoded examples by served label: faces (pixels, visual features, each face's
    log-probability of every served label by the visual branch), voices and words (features)."""

    def __init__(self, served: dict[str, torch.nn.Module], data_dir: Path, *, validation: bool, hp: dict, quick: bool):
        rng = np.random.default_rng(settings.TRAIN_SEED)
        scale = 0.3 if validation else 1.0
        path = data_dir / "fer2013" / ("validation.npz" if validation else "train.npz")
        with np.load(path) as npz:
            images, labels = npz["images"], np.array([served_label(config.FER2013_CLASSES[c]) for c in npz["labels"]])
        per_label = max(4, int(hp["faces_per_label"] * scale))
        keep = balanced(labels, per_label, rng, len(config.LABELS))
        self.faces = torch.from_numpy(normalise_faces(images[keep]))
        face_labels = labels[keep]
        fusion = served["fusion"]
        visual = fusion.branches["visual"]
        with torch.no_grad():
            self.visual = torch.cat([served["visual_encoder"](self.faces[i : i + 256]) for i in range(0, len(self.faces), 256)])
            # each face alone through the visual branch, mapped onto the served labels as the fusion maps it
            logits = visual({visual.features_name: self.visual, visual.index_name: torch.arange(len(self.visual))}, len(self.visual))[0]
            temperature = fusion.branch_temperature[list(fusion.branches).index("visual")]
            self.face_log_prob = torch.log((torch.softmax(logits / temperature, -1) @ visual.class_map).clamp(min=1e-8))
        speech = speech_clips(data_dir, validation=validation, per_valence=max(1, int(hp["clips_per_valence"] * scale)), quick=quick)
        with torch.no_grad():
            self.voices = [served["audio_encoder"](rows) for rows, _ in speech]
        voice_labels = np.array([served_label(c) for _, c in speech])
        meld = data.load_meld(data_dir, validation=validation, quick=quick)
        meld_labels = np.array([served_label(config.MELD_CLASSES[t]) for t in meld.targets.tolist()])
        per_label = max(2, int(hp["texts_per_label"] * scale))
        chosen = balanced(meld_labels, per_label, rng, len(config.LABELS))
        ids, mask = tokenize(load_tokenizer(), [meld.inputs[i] for i in chosen])
        with torch.no_grad():
            self.words = torch.cat([served["text_encoder"](torch.from_numpy(ids[i : i + 64]), torch.from_numpy(mask[i : i + 64]))
                                    for i in range(0, len(ids), 64)])
        word_labels = meld_labels[chosen]
        self.labels = [y for y in range(len(config.LABELS))
                       if (face_labels == y).any() and (voice_labels == y).any() and (word_labels == y).any()]
        if NEUTRAL not in self.labels:
            raise ValueError("composed segments need neutral faces, voices and words")
        self.face_pool = {y: np.flatnonzero(face_labels == y) for y in self.labels}
        self.voice_pool = {y: np.flatnonzero(voice_labels == y) for y in self.labels}
        self.word_pool = {y: np.flatnonzero(word_labels == y) for y in self.labels}


def compose(pools: Pools, n: int, rng: np.random.Generator, *, mixed: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """n one-segment clips: the selection's and the fusion's inputs by name (the faces' features as
    VISUAL_FEATURES), their labels, and the index of each face row in the pool (for its log-probabilities)."""
    audio, visual, text = (modalities.by_name(m) for m in ("audio", "visual", "text"))
    labels = rng.choice(pools.labels, size=n)
    faces, voices, words, present = [], [], [], []
    for y in labels:
        showing = int(rng.integers(1, CLIP_FACES + 1)) if mixed else CLIP_FACES
        chosen = np.concatenate([rng.choice(pools.face_pool[y], showing), rng.choice(pools.face_pool[NEUTRAL], CLIP_FACES - showing)])
        faces.append(rng.permutation(chosen))
        voices.append(pools.voices[rng.choice(pools.voice_pool[y])])
        kind = rng.choice(3, p=TEXT_SHARES)
        words.append(pools.words[rng.choice(pools.word_pool[y if kind == 0 else NEUTRAL])])
        present.append(kind < 2)
    rows = torch.from_numpy(np.concatenate(faces))
    segment = torch.arange(n).repeat_interleave(CLIP_FACES)
    clip_s = CLIP_FACES * config.FRAME_INTERVAL_S  # each clip one segment, its faces 0.5 s apart
    inputs = {
        "SEGMENT_TIMES": torch.stack([torch.arange(n) * clip_s, (torch.arange(n) + 1) * clip_s], 1),
        "FACES": pools.faces[rows], visual.features: pools.visual[rows], visual.index: segment,
        "FACE_TIMES": torch.arange(len(rows), dtype=torch.float32) * config.FRAME_INTERVAL_S,
        "FACE_PERSON": torch.zeros(len(rows), dtype=torch.int64),
        audio.features: torch.cat(voices), audio.index: torch.cat([torch.full((len(v),), i) for i, v in enumerate(voices)]),
        text.features: torch.stack(words), text.index: torch.tensor(present),
    }
    return inputs, torch.from_numpy(labels), rows


def attention_loss(select: torch.nn.Module, pools: Pools, inputs: dict, labels: torch.Tensor, rows: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Cross-entropy of the attention against the faces' log-probability of their segment's label (softmax per segment)."""
    segment = inputs[modalities.by_name("visual").index]
    target = (pools.face_log_prob[rows, labels[segment]] / temperature).view(-1, CLIP_FACES).softmax(1)
    attention = select.attention(inputs).view(-1, CLIP_FACES)
    return -(target * torch.log(attention.clamp(min=1e-8))).sum(1).mean()


def fused_predictions(fusion: torch.nn.Module, inputs: dict, kept: torch.Tensor) -> np.ndarray:
    """The served fusion's labels with only the `kept` face rows."""
    visual = modalities.by_name("visual")
    thinned = {**inputs, visual.features: inputs[visual.features][kept], visual.index: inputs[visual.index][kept]}
    with torch.no_grad():
        return fusion(thinned).argmax(1).numpy()


def compare(select: torch.nn.Module, fusion: torch.nn.Module, batches: list, seed: int) -> dict:
    """On the same segments: accuracy with every face, with the kept faces, with as many random faces; share kept."""
    rng = np.random.default_rng(seed)
    visual = modalities.by_name("visual")
    select.eval()
    truth, every, sparse, random, kept_share = [], [], [], [], []
    for inputs, labels, _ in batches:
        with torch.no_grad():
            kept = select.keep(select.attention(inputs), select.face_segments(inputs), inputs["FACE_PERSON"], inputs[visual.index] >= 0)
        counts = kept.view(-1, CLIP_FACES).sum(1).numpy()
        chance = torch.zeros_like(kept).view(-1, CLIP_FACES)
        for i, c in enumerate(counts):
            chance[i, torch.from_numpy(rng.permutation(CLIP_FACES)[:c])] = True
        truth.append(labels.numpy())
        every.append(fused_predictions(fusion, inputs, torch.ones_like(kept)))
        sparse.append(fused_predictions(fusion, inputs, kept))
        random.append(fused_predictions(fusion, inputs, chance.view(-1)))
        kept_share.append(kept.float().mean().item())
    truth = np.concatenate(truth)
    result = {name: classification_metrics(truth, np.concatenate(p), config.LABELS)
              for name, p in (("every face", every), ("sparse", sparse), ("random, as many", random))}
    result["faces kept"] = float(np.mean(kept_share))
    result["segments"] = int(len(truth))
    return result


def train_sparse(args: argparse.Namespace) -> dict:
    hp = dict(settings.TRAINING["sparse"])
    if args.quick:
        hp.update(steps=4, evaluate_every=2, validation_clips=16, faces_per_label=8, clips_per_valence=2, texts_per_label=4)
    torch.manual_seed(args.seed)
    started = time.time()
    source = args.weights if (args.weights / "visual.pt").exists() else Path(settings.WEIGHTS_DIR)
    served = trained_models(source)
    fusion = served["fusion"]
    training, validation = (Pools(served, args.data, validation=v, hp=hp, quick=args.quick) for v in (False, True))
    rng = np.random.default_rng(args.seed + 1)
    n_batches = max(1, hp["validation_clips"] // hp["batch_size"])
    held_out = [compose(validation, hp["batch_size"], rng) for _ in range(n_batches)]
    uniform = [compose(validation, hp["batch_size"], rng, mixed=False) for _ in range(n_batches)]
    select = models.create(models.SPARSE_MODEL)
    optimiser = torch.optim.AdamW(select.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    train_rng = np.random.default_rng(args.seed)

    def batch_loss() -> torch.Tensor:
        inputs, labels, rows = compose(training, hp["batch_size"], train_rng)
        return attention_loss(select, training, inputs, labels, rows, hp["target_temperature"])

    def validate() -> dict:
        return compare(select, fusion, held_out, args.seed)["sparse"]

    best = fit_steps(select, optimiser, hp["steps"], hp["evaluate_every"], batch_loss, validate, "sparse")
    select.eval()
    results = {"mixed": compare(select, fusion, held_out, args.seed), "uniform": compare(select, fusion, uniform, args.seed)}
    for name, r in results.items():
        print(f"sparse: {name} segments (n={r['segments']}): every face {r['every face']['accuracy']:.3f}, sparse "
              f"{r['sparse']['accuracy']:.3f} with {r['faces kept']:.0%} of the faces, random as many {r['random, as many']['accuracy']:.3f}")
    minutes = (time.time() - started) / 60
    path = weights_path(args.weights, settings.SPARSE_PART)
    save_weights(path, select, metrics=best["metrics"], comparison=results, epoch=best["step"], hyperparameters=hp,
                 seed=args.seed, mass=config.SPARSE_VISUAL_MASS,
                 data="segments composed from FER2013 faces, RAVDESS / EmoDB / TurEV-DB speech and MELD words "
                      "(build/training/sparse.py)" + (" (quick: a few examples)" if args.quick else ""),
                 command="fv2es-train " + " ".join(sys.argv[1:]), minutes=round(minutes, 1))
    print(f"sparse: saved {path} after {minutes:.1f} min")
    return {**best, "comparison": results}
