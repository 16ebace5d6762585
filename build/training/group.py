"""The group model (fv2es.models.group), trained on scenes composed from real faces and real speech.

No group-labelled video is available offline (VGAF is not here: build/training/vgaf.py reads its
layout for whoever has it). A composed scene is one segment:
- its group label, drawn uniformly from GROUP_LABELS;
- 1 to MAX_PERSONS persons, each one FER2013 face; at least half of them (rounded up) have the
  scene's valence (their FER2013 class's, fv2es.group.valence_of), the others any other valence;
- 2 to 8 sampled frames, 0.5 s apart; in each, every person (each one missing with probability
  0.1, never all) as the shipped visual encoder's features of their face plus a little noise, and
  the whole frame at low resolution: the faces side by side on a grey background, through
  fv2es.scene as served;
- with probability SPEECH_SHARE one speech clip (RAVDESS, EmoDB or TurEV-DB) whose class has the
  scene's valence, as the shipped audio encoder's features; else no speech.
Training uses FER2013's training split and the speech corpora's training speakers; validation (the
numbers in MODEL_CARD.md) a fixed set of scenes from FER2013's validation split and the validation
speakers. The baseline on the same scenes: fv2es.group.group_baseline on each person's scores from
the shipped fusion (their faces; the speech for the first person, taken as the speaker).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from fv2es import config, group, modalities, models, scene
from fv2es.faces import normalise_faces
from .. import settings
from ..export import trained_models
from . import data, speech
from .loop import fit_steps
from .metrics import classification_metrics
from .weights import save_weights, weights_path

MAX_PERSONS = 5
FRAMES = (2, 8)  # sampled frames per scene, inclusive
SPEECH_SHARE = 0.8
MISSING_FACE = 0.1
FEATURE_NOISE = 0.1  # times each feature's standard deviation
CANVAS = 96  # side of a composed frame before fusion's thumbnail
G = len(config.GROUP_LABELS)


@dataclass
class Pool:
    """Encoded examples of one source, with each one's valence (index in GROUP_LABELS)."""

    features: list[torch.Tensor]  # per example: [rows, D] (a face: one row)
    valence: np.ndarray
    images: np.ndarray | None = None  # faces: uint8 [N, 48, 48], for the composed frames

    def by_valence(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.valence == v) for v in range(G)]


def balanced(classes: np.ndarray, per_class: int, rng: np.random.Generator, n_classes: int = G) -> np.ndarray:
    """Up to `per_class` examples of each class (default: each valence), sorted."""
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(classes == c))[:per_class] for c in range(n_classes)]))


def face_pool(data_dir: Path, *, validation: bool, per_valence: int, encoder: torch.nn.Module) -> Pool:
    path = data_dir / "fer2013" / ("validation.npz" if validation else "train.npz")
    with np.load(path) as npz:
        images, labels = npz["images"], npz["labels"]
    valence = np.array([config.GROUP_LABELS.index(group.valence_of(config.FER2013_CLASSES[c])) for c in labels])
    keep = balanced(valence, per_valence, np.random.default_rng(settings.TRAIN_SEED))
    images, valence = images[keep], valence[keep]
    with torch.no_grad():
        features = torch.cat([encoder(torch.from_numpy(normalise_faces(images[i : i + 256]))) for i in range(0, len(images), 256)])
    return Pool(list(features[:, None]), valence, images)


def speech_clips(data_dir: Path, *, validation: bool, per_valence: int, quick: bool) -> list[tuple[torch.Tensor, str]]:
    """(audio-encoder rows, RAVDESS class) of clips with speech of each training corpus, up to
    `per_valence` per valence and corpus (the same clips, and so the same cached encodings, for the
    group model and the end-to-end fine-tuning)."""
    clips = []
    asr = speech.recognizer() if config.AUDIO_INPUT == "whisper" else None
    for corpus in speech.SPEECH_TRAINING_CORPORA:
        split = data.load_speech(data_dir, corpus, validation=validation, quick=quick)
        classes = [split.classes[t] for t in split.targets.tolist()]
        valences = np.array([config.GROUP_LABELS.index(group.valence_of(c)) for c in classes])
        keep = balanced(valences, per_valence, np.random.default_rng(settings.TRAIN_SEED))
        name = f"group-{corpus}-{'val' if validation else 'train'}-{per_valence}"
        rows = speech.AudioRows(name, [split.inputs[i] for i in keep], asr=asr)
        clips += [(rows(k), classes[i]) for k, i in enumerate(keep) if rows.has_speech(k)]
    return clips


def speech_pool(data_dir: Path, *, validation: bool, per_valence: int, quick: bool, encoder: torch.nn.Module) -> Pool:
    """The speech_clips, through the audio encoder, with their valences."""
    clips = speech_clips(data_dir, validation=validation, per_valence=per_valence, quick=quick)
    with torch.no_grad():
        features = [encoder(rows) for rows, _ in clips]
    return Pool(features, np.array([config.GROUP_LABELS.index(group.valence_of(c)) for _, c in clips]))


def frame_picture(images: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The persons' faces side by side on a grey background (CANVAS square), as a scene's thumbnail."""
    canvas = np.clip(rng.normal(rng.uniform(40, 200), 8, (CANVAS, CANVAS)), 0, 255).astype(np.uint8)
    cell = CANVAS // len(images)
    size = min(cell, 48)
    for i, face in enumerate(images):
        top = int(rng.integers(0, CANVAS - size + 1))
        left = i * cell + int(rng.integers(0, cell - size + 1))
        canvas[top : top + size, left : left + size] = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    return scene.thumbnail(canvas)


class Scenes:
    """Composes scenes from a face pool and a speech pool (one random stream per seed)."""

    def __init__(self, faces: Pool, voices: Pool, seed: int):
        self.faces, self.voices = faces, voices
        self.face_groups, self.voice_groups = faces.by_valence(), voices.by_valence()
        self.scale = torch.cat(faces.features).std(0)
        self.rng = np.random.default_rng(seed)

    def persons(self, label: int) -> list[int]:
        rng = self.rng
        k = int(rng.integers(1, MAX_PERSONS + 1))
        matching = math.ceil(k / 2) + int(rng.integers(0, k - math.ceil(k / 2) + 1))
        others = [v for v in range(G) if v != label]
        valences = [label] * matching + [int(rng.choice(others)) for _ in range(k - matching)]
        return [int(rng.choice(self.face_groups[v])) for v in rng.permutation(valences)]

    def batch(self, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, np.ndarray]]:
        """n scenes as one request's inputs (segment i spans [10 i, 10 i + 10) s), their labels, and
        each face row's person (for the baseline)."""
        rng = self.rng
        labels = rng.integers(0, G, n)
        face_rows, face_times, face_person, face_scene, thumbnails, scene_times = [], [], [], [], [], []
        audio_rows, audio_segment = [], []
        for i, label in enumerate(labels.tolist()):
            persons = self.persons(label)
            for j in range(int(rng.integers(FRAMES[0], FRAMES[1] + 1))):
                t = 10.0 * i + 0.5 * j
                shown = [p for p in range(len(persons)) if rng.random() > MISSING_FACE] or [int(rng.integers(len(persons)))]
                for p in shown:
                    feature = self.faces.features[persons[p]][0]
                    face_rows.append(feature + torch.from_numpy(rng.normal(0, FEATURE_NOISE, feature.shape).astype(np.float32)) * self.scale)
                    face_times.append(t)
                    face_person.append(p)
                    face_scene.append(i)
                thumbnails.append(frame_picture([self.faces.images[persons[p]] for p in shown], rng))
                scene_times.append(t)
            if rng.random() < SPEECH_SHARE:
                rows = self.voices.features[int(rng.choice(self.voice_groups[label]))]
                audio_rows.append(rows)
                audio_segment += [i] * len(rows)
        audio = modalities.by_name("audio")
        inputs = {
            "SEGMENT_TIMES": torch.tensor([[10.0 * i, 10.0 * i + 10.0] for i in range(n)]),
            "VISUAL_FEATURES": torch.stack(face_rows),
            "FACE_TIMES": torch.tensor(face_times, dtype=torch.float32),
            "SCENE": torch.from_numpy(scene.normalise(np.stack(thumbnails))),
            "SCENE_TIMES": torch.tensor(scene_times, dtype=torch.float32),
            audio.features: torch.cat(audio_rows) if audio_rows else torch.zeros(1, audio.feature_dim),
            audio.index: torch.tensor(audio_segment if audio_rows else [-1], dtype=torch.long),
        }
        rows = {"person": np.array(face_person), "scene": np.array(face_scene)}
        return inputs, torch.from_numpy(labels), rows


def baseline_scores(fusion: torch.nn.Module, inputs: dict[str, torch.Tensor], rows: dict[str, np.ndarray]) -> np.ndarray:
    """The group baseline (fv2es.group.group_baseline) of each scene: every (person, scene) pair's
    fused scores, from their faces and, for person 0, the scene's speech."""
    pairs = sorted(set(zip(rows["person"].tolist(), rows["scene"].tolist())))
    pair_index = {pair: k for k, pair in enumerate(pairs)}
    audio = modalities.by_name("audio")
    speech_owner = inputs[audio.index].numpy()
    fusion_inputs = {}
    for m in modalities.modalities():
        if m.name == "visual":
            fusion_inputs[m.features] = inputs["VISUAL_FEATURES"]
            fusion_inputs[m.index] = torch.tensor([pair_index[p] for p in zip(rows["person"].tolist(), rows["scene"].tolist())])
        elif m.name == "audio":
            fusion_inputs[m.features] = inputs[audio.features]
            fusion_inputs[m.index] = torch.tensor([pair_index.get((0, int(s)), -1) if s >= 0 else -1 for s in speech_owner])
        else:  # no words in a composed scene
            fusion_inputs[m.features] = torch.zeros(len(pairs), m.feature_dim)
            fusion_inputs[m.index] = torch.zeros(len(pairs), dtype=torch.bool)
    with torch.no_grad():
        pair_scores = fusion(fusion_inputs).numpy()
    n = len(inputs["SEGMENT_TIMES"])
    segment_scores = np.full((n, pair_scores.shape[1]), 1.0 / pair_scores.shape[1], np.float32)  # every scene shows someone
    scores, _ = group.group_baseline(np.array([[p, s] for p, s in pairs]), pair_scores, inputs["FACE_TIMES"].numpy(),
                                     rows["person"], segment_scores, inputs["SEGMENT_TIMES"].numpy())
    return scores


def evaluate(model: torch.nn.Module, batches: list) -> dict:
    model.eval()
    with torch.no_grad():
        predicted = np.concatenate([model.logits(inputs).argmax(1).numpy() for inputs, _, _ in batches])
    truth = np.concatenate([labels.numpy() for _, labels, _ in batches])
    return classification_metrics(truth, predicted, config.GROUP_LABELS)


def train_group(args: argparse.Namespace) -> dict:
    hp = dict(settings.TRAINING["group"])
    if args.quick:
        hp.update(steps=4, validation_scenes=16, faces_per_valence=8, clips_per_valence=2, evaluate_every=2)
    torch.manual_seed(args.seed)
    started = time.time()
    served = trained_models(args.weights if (args.weights / "visual.pt").exists() else Path(settings.WEIGHTS_DIR))
    visual, audio, fusion = served["visual_encoder"], served["audio_encoder"], served["fusion"]
    pools = {}
    for validation in (False, True):
        scale = 0.3 if validation else 1.0
        pools[validation] = (
            face_pool(args.data, validation=validation, per_valence=max(2, int(hp["faces_per_valence"] * scale)), encoder=visual),
            speech_pool(args.data, validation=validation, per_valence=max(1, int(hp["clips_per_valence"] * scale)),
                        quick=args.quick, encoder=audio),
        )
    validation_scenes = Scenes(*pools[True], seed=args.seed + 1)
    held_out = [validation_scenes.batch(hp["batch_size"]) for _ in range(max(1, hp["validation_scenes"] // hp["batch_size"]))]
    training_scenes = Scenes(*pools[False], seed=args.seed)
    audio_entry = modalities.by_name("audio")
    model = models.create("group", audio_features=audio_entry.features, audio_index=audio_entry.index)
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])

    def batch_loss() -> torch.Tensor:
        inputs, labels, _ = training_scenes.batch(hp["batch_size"])
        return torch.nn.functional.cross_entropy(model.logits(inputs), labels, label_smoothing=hp["label_smoothing"])

    best = fit_steps(model, optimiser, hp["steps"], hp["evaluate_every"], batch_loss, lambda: evaluate(model, held_out), "group")
    truth = np.concatenate([labels.numpy() for _, labels, _ in held_out])
    baseline = np.concatenate([baseline_scores(fusion, inputs, rows) for inputs, _, rows in held_out]).argmax(1)
    best["baseline"] = classification_metrics(truth, baseline, config.GROUP_LABELS)
    print(f"group: model accuracy {best['metrics']['accuracy']:.3f} (macro-F1 {best['metrics']['macro_f1']:.3f}) against the "
          f"baseline's {best['baseline']['accuracy']:.3f} ({best['baseline']['macro_f1']:.3f}) on {len(truth)} validation scenes")
    minutes = (time.time() - started) / 60
    save_weights(weights_path(args.weights, "group"), model, classes=config.GROUP_LABELS, metrics=best["metrics"],
                 baseline=best["baseline"], epoch=best["step"], hyperparameters=hp, seed=args.seed,
                 data="scenes composed from FER2013 faces and RAVDESS / EmoDB / TurEV-DB speech (build/training/group.py)"
                 + (" (quick: a few examples)" if args.quick else ""),
                 command="fv2es-train " + " ".join(sys.argv[1:]), minutes=round(minutes, 1))
    print(f"group: saved {weights_path(args.weights, 'group')} after {minutes:.1f} min")
    return best
