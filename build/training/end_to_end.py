"""End-to-end fine-tuning (FE2E's setting, Dai et al. 2021): the visual encoder (RepVGG in its
training form), the audio encoder and both branches' sequence encoders and heads, and the fusion's
modality weights, trained together with one loss at the fused output, starting from the shipped
weights (trained two-phase: each branch on its corpus, then the fusion on composed clips).

No audio-visual emotion corpus is here, so a clip is composed, as for the fusion fit: a served
label that FER2013 and the speech corpora both have; CLIP_FACES FER2013 faces of that label (a
segment's frames) and one speech clip whose class maps to it (its audio-encoder rows); no words
(the text branch is frozen, its input marked absent). Training:
FER2013's training split and the speech corpora's training speakers; validation: FER2013's
validation split and the validation speakers, in a fixed set of clips that scores the shipped
(two-phase) model and the fine-tuned one alike. The result goes to its own weights folder
(default build/out/end_to_end/weights), a complete one that `fv2es_build.repository --weights`
exports (RepVGG re-parameterised to its single-branch form for serving, as always).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fv2es import config, modalities
from fv2es.faces import normalise_faces

from .. import settings
from ..export import trained_models
from . import data
from .group import speech_clips
from .loop import fit_steps
from .metrics import classification_metrics
from .weights import load_branch, load_weights, save_weights, weights_path

CLIP_FACES = 4
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "out" / "end_to_end" / "weights"  # the default: the shipped weights stay as they are


def served_label(name: str) -> int:
    return config.LABELS.index(config.CLASS_TO_LABEL.get(name, name))


class Clips:
    """Composes labelled audio-visual clips from FER2013 faces and speech clips of one split."""

    def __init__(self, data_dir: Path, *, validation: bool, faces_per_label: int, clips_per_valence: int, quick: bool):
        path = data_dir / "fer2013" / ("validation.npz" if validation else "train.npz")
        with np.load(path) as npz:
            images, labels = npz["images"], np.array([served_label(config.FER2013_CLASSES[c]) for c in npz["labels"]])
        keep = np.sort(np.concatenate([np.random.default_rng(settings.TRAIN_SEED).permutation(np.flatnonzero(labels == y))[:faces_per_label]
                                       for y in range(len(config.LABELS))]))
        self.faces = torch.from_numpy(normalise_faces(images[keep]))
        face_labels = labels[keep]
        speech = speech_clips(data_dir, validation=validation, per_valence=clips_per_valence, quick=quick)
        self.rows = [rows for rows, _ in speech]
        speech_labels = np.array([served_label(c) for _, c in speech])
        self.labels = [y for y in range(len(config.LABELS)) if (face_labels == y).any() and (speech_labels == y).any()]
        if not self.labels:
            raise ValueError(f"no served label has both faces and speech in the {'validation' if validation else 'training'} split")
        self.face_pools = {y: np.flatnonzero(face_labels == y) for y in self.labels}
        self.speech_pools = {y: np.flatnonzero(speech_labels == y) for y in self.labels}

    def batch(self, n: int, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """n clips as one request's tensors for the encoders and the fusion: faces and audio rows with
        their clip (segment) index, no words; and their served labels."""
        labels = rng.choice(self.labels, size=n)
        faces = torch.cat([self.faces[rng.choice(self.face_pools[y], size=CLIP_FACES)] for y in labels])
        rows = [self.rows[rng.choice(self.speech_pools[y])] for y in labels]
        audio, visual, text = (modalities.by_name(m) for m in ("audio", "visual", "text"))
        return {
            "FACES": faces,
            visual.index: torch.arange(n).repeat_interleave(CLIP_FACES),
            "AUDIO_ROWS": torch.cat(rows),
            audio.index: torch.cat([torch.full((len(r),), i) for i, r in enumerate(rows)]),
            text.features: torch.zeros(n, text.feature_dim),
            text.index: torch.zeros(n, dtype=torch.bool),
        }, torch.from_numpy(labels)


class EndToEnd(torch.nn.Module):
    """The served visual and audio encoders feeding the fusion, as one module: one loss at the fused output."""

    def __init__(self, served: dict[str, torch.nn.Module]):
        super().__init__()
        self.visual_encoder, self.audio_encoder, self.fusion = served["visual_encoder"], served["audio_encoder"], served["fusion"]

    def forward(self, tensors: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        faces = tensors["FACES"]
        if generator is not None:
            faces = data.augment_faces(faces, generator)
        inputs = {k: v for k, v in tensors.items() if k not in ("FACES", "AUDIO_ROWS")}
        inputs[modalities.by_name("visual").features] = self.visual_encoder(faces)
        inputs[modalities.by_name("audio").features] = self.audio_encoder(tensors["AUDIO_ROWS"])
        scores, present = self.fusion.modality_logits(inputs)
        return self.fusion.fuse(scores, present)


def evaluate(model: EndToEnd, clips: list) -> dict:
    model.eval()
    with torch.no_grad():
        predicted = np.concatenate([model(inputs).argmax(1).numpy() for inputs, _ in clips])
    truth = np.concatenate([labels.numpy() for _, labels in clips])
    return classification_metrics(truth, predicted, config.LABELS)


def visual_alone(encoder: torch.nn.Module, fusion: torch.nn.Module, data_dir: Path, quick: bool) -> dict:
    """The visual path alone (encoder, its fusion branch) on FER2013's validation split, in its classes:
    what joint training does to a branch on its own task."""
    split = data.load_fer2013(data_dir, validation=True, quick=quick)
    branch = fusion.branches["visual"]
    with torch.no_grad():
        logits = torch.cat([branch({branch.features_name: encoder(split.inputs[i : i + 256]),
                                    branch.index_name: torch.arange(len(split.inputs[i : i + 256]))}, len(split.inputs[i : i + 256]))[0]
                            for i in range(0, len(split), 256)])
    return classification_metrics(split.targets.numpy(), logits.argmax(1).numpy(), split.classes)


def save(model: EndToEnd, source: Path, out: Path, record: dict) -> None:
    """A complete weights folder: the fine-tuned visual and audio branches (encoder, sequence encoder
    and head) and fusion weights, and the source's text branch, group model and face selection."""
    out.mkdir(parents=True, exist_ok=True)
    for part in ("text", settings.GROUP_PART, settings.SPARSE_PART):
        if weights_path(source, part).exists():
            shutil.copy(weights_path(source, part), weights_path(out, part))
    for name in ("visual", "audio"):
        branch = load_branch(name, source)
        branch.encoder = getattr(model, f"{name}_encoder")
        branch.sequence, branch.head = model.fusion.branches[name].sequence, model.fusion.branches[name].head
        kept = {k: v for k, v in load_weights(weights_path(source, name)).items() if k not in ("state_dict", "metrics", "epoch")}
        save_weights(weights_path(out, name), branch, **{**kept, **record})
    fusion = model.fusion
    fitted = torch.nn.ParameterDict({"modality_weights": fusion.modality_weights, "log_scale": fusion.log_scale,
                                     "branch_temperature": torch.nn.Parameter(fusion.branch_temperature.clone(), requires_grad=False)})
    save_weights(weights_path(out, "fusion"), fitted, **record)


def train_end_to_end(args: argparse.Namespace) -> dict:
    hp = dict(settings.TRAINING["end_to_end"])
    if args.quick:
        hp.update(steps=2, faces_per_label=4, clips_per_valence=2, validation_clips=16, evaluate_every=1)
    if args.epochs:
        hp["steps"] = args.epochs
    torch.manual_seed(args.seed)
    started = time.time()
    source, out = ROOT / settings.WEIGHTS_DIR, args.weights
    training = Clips(args.data, validation=False, faces_per_label=hp["faces_per_label"], clips_per_valence=hp["clips_per_valence"],
                     quick=args.quick)
    validation = Clips(args.data, validation=True, faces_per_label=hp["faces_per_label"], clips_per_valence=max(1, int(hp["clips_per_valence"] * 0.3)),
                       quick=args.quick)
    rng = np.random.default_rng(args.seed + 1)
    held_out = [validation.batch(hp["batch_size"], rng) for _ in range(max(1, hp["validation_clips"] // hp["batch_size"]))]
    model = EndToEnd(trained_models(source))
    two_phase = evaluate(model, held_out)
    two_phase_visual = visual_alone(model.visual_encoder, model.fusion, args.data, args.quick)
    print(f"end to end: the two-phase model on {sum(len(y) for _, y in held_out)} validation clips: "
          f"accuracy {two_phase['accuracy']:.3f}, macro-F1 {two_phase['macro_f1']:.3f}", flush=True)
    for p in model.fusion.branches["text"].parameters():
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=hp["lr"], weight_decay=hp["weight_decay"])
    generator = torch.Generator().manual_seed(args.seed)

    def batch_loss() -> torch.Tensor:
        inputs, labels = training.batch(hp["batch_size"], rng)
        return torch.nn.functional.cross_entropy(model(inputs, generator), labels)

    best = fit_steps(model, optimiser, hp["steps"], hp["evaluate_every"], batch_loss, lambda: evaluate(model, held_out),
                     "end to end", start=two_phase)
    model.eval()
    visual = {"two-phase": two_phase_visual, "end to end": visual_alone(model.visual_encoder, model.fusion, args.data, args.quick)}
    print("end to end: the visual path alone on FER2013 validation: " + ", ".join(
        f"{name} accuracy {m['accuracy']:.3f} (macro-F1 {m['macro_f1']:.3f})" for name, m in visual.items()), flush=True)
    best["two_phase"] = two_phase
    minutes = (time.time() - started) / 60
    save(model.eval(), source, out, {
        "metrics": best["metrics"], "two_phase_metrics": two_phase, "visual_alone": visual, "epoch": best["step"], "hyperparameters": hp, "seed": args.seed,
        "data": f"end-to-end fine-tuning of {source} on clips composed from FER2013 and RAVDESS / EmoDB / TurEV-DB "
                "(build/training/end_to_end.py)" + (" (quick: a few examples)" if args.quick else ""),
        "command": "fv2es-train " + " ".join(sys.argv[1:]), "minutes": round(minutes, 1)})
    print(f"end to end: fine-tuned {best['metrics']['accuracy']:.3f} (macro-F1 {best['metrics']['macro_f1']:.3f}) against "
          f"two-phase {two_phase['accuracy']:.3f} ({two_phase['macro_f1']:.3f}); step {best['step']} kept; saved in {out} "
          f"after {minutes:.1f} min")
    return best
