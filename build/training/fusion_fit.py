"""Fusion weights, fitted on clips composed from the three validation sets.

There is no audio-visual-text emotion corpus here, so a "clip" is composed: pick a served label,
then one example carrying it from each validation set (an utterance of a held-out speaker of
RAVDESS, EmoDB or TurEV-DB, a FER2013 PublicTest face, a MELD dev utterance), each scored by its
trained branch. The fusion's modality weights and sharpness are fitted on clips from one half of
every validation set (RAVDESS actors 17-18, EmoDB speaker 03, TurEV speaker 1358, even FER2013
indices, even MELD dialogues) with each modality dropped 20 % of the time (as when a segment has no
face or no speech); the fused metrics come from clips composed from the other half only (actors
19-20, EmoDB 09, TurEV 6783, odd indices, odd dialogues), all modalities present.

In most real videos the words are neutral while the voice and the face carry the emotion. A share
of the clips (TRAINING["fusion"]["neutral_words"]) therefore get neutral words whatever their label:
a MELD utterance labelled neutral or one of RAVDESS's own two sentences. The fused result on clips
whose words are all neutral is reported as its own row.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fv2es import config, models
from fv2es.text import load_tokenizer, tokenize

from . import data
from .. import settings
from .loop import predict
from .calibration import fit_temperature, reliability
from .metrics import classification_metrics, format_metrics
from .speech import clip_logits, validation_parts
from .tasks import text_task, visual_task
from .weights import BRANCHES, load_branch, save_weights, weights_path

CLIPS_PER_HALF = 4000
DROP_MODALITY = 0.2
# The two sentences every RAVDESS clip speaks: neutral words, added to the neutral text examples.
RAVDESS_SENTENCES = ("Kids are talking by the door", "Dogs are sitting by the door")


@dataclass
class BranchOutputs:
    logits: torch.Tensor  # [N, corpus classes]
    targets: np.ndarray  # [N] corpus class index
    classes: tuple[str, ...]
    fit_half: np.ndarray  # [N] bool: used to fit the fusion (else: to evaluate it)
    neutral_extra: torch.Tensor | None = None  # [K, corpus classes]: more neutral examples, for both halves
    corpus: np.ndarray | None = None  # [N] the corpus of each example, where a branch has several

    def all_logits(self) -> torch.Tensor:
        """The examples' logits, then the extra neutral ones (index len(logits) + k)."""
        return self.logits if self.neutral_extra is None else torch.cat([self.logits, self.neutral_extra])


def validation_outputs(branch: str, weights_dir: Path, data_dir: Path, quick: bool) -> BranchOutputs:
    """The trained branch's logits on its whole validation split (the same batches as in training)."""
    if branch == "audio":
        return audio_validation_outputs(weights_dir, data_dir, quick)
    if branch == "visual":
        task = visual_task(data_dir, quick)
        fit_half = np.arange(task.n_val) % 2 == 0
    else:
        task = text_task(data_dir, quick)
        groups = data.load_meld(data_dir, validation=True, quick=quick).groups
        fit_half = groups % 2 == 0
    task.model = load_branch(branch, weights_dir)
    logits, targets = predict(task.model, task.val_batches(64))
    neutral_extra = None
    if branch == "text":  # RAVDESS's sentences: neutral words for the composed clips
        ids, mask = tokenize(load_tokenizer(), list(RAVDESS_SENTENCES))
        with torch.no_grad():
            neutral_extra = task.model(torch.from_numpy(ids), torch.from_numpy(mask))
    return BranchOutputs(torch.from_numpy(logits), targets, task.classes, fit_half, neutral_extra)


def audio_validation_outputs(weights_dir: Path, data_dir: Path, quick: bool) -> BranchOutputs:
    """The audio branch's logits on every speech corpus's validation speakers (each clip alone); the
    first half of each corpus's validation speakers fits the fusion."""
    parts = validation_parts(data_dir, quick)
    branch = load_branch("audio", weights_dir)
    logits = clip_logits(branch, [p.rows(i) for p in parts for i in range(len(p.split))])
    targets = torch.cat([p.split.targets for p in parts]).numpy()
    fit_half = np.concatenate([np.isin(p.split.groups, (s := data.SPEECH_CORPORA[p.corpus].validation_speakers)[: len(s) // 2])
                               for p in parts])
    corpus = np.concatenate([[p.corpus] * len(p.split) for p in parts])
    return BranchOutputs(logits, targets, config.RAVDESS_CLASSES, fit_half, corpus=corpus)


def compose_clips(
    outputs: dict[str, BranchOutputs], fit: bool, n: int, seed: int, neutral_words: float = 0.0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per composed clip: the index of its example in each branch's outputs, and its served label.
    A share `neutral_words` of the clips takes a neutral text example whatever the label."""
    rng = np.random.default_rng(seed + (0 if fit else 1))
    pools: dict[str, dict[int, np.ndarray]] = {}
    for branch, out in outputs.items():
        served = np.array([config.LABELS.index(config.CLASS_TO_LABEL.get(c, c)) for c in out.classes])[out.targets]
        half = out.fit_half if fit else ~out.fit_half
        pools[branch] = {y: np.flatnonzero(half & (served == y)) for y in range(len(config.LABELS))}
    usable = [y for y in range(len(config.LABELS)) if all(len(p[y]) for p in pools.values())]
    if not usable:
        raise ValueError("no label has examples in every validation set")
    labels = rng.choice(usable, size=n)
    index = {branch: np.array([rng.choice(pools[branch][y]) for y in labels]) for branch in outputs}
    text = outputs["text"]
    neutral_words_pool = np.concatenate([pools["text"][config.LABELS.index("neutral")],
                                         len(text.logits) + np.arange(len(text.all_logits()) - len(text.logits))])
    swap = rng.random(n) < neutral_words
    index["text"][swap] = rng.choice(neutral_words_pool, size=int(swap.sum()))
    return index, labels


def clip_scores(fusion: models.fusion.Fv2esFusion, outputs: dict[str, BranchOutputs], index: dict[str, np.ndarray]) -> torch.Tensor:
    """[n, 3, C] per-modality scores over the served labels, by the fusion model's own mapping."""
    with torch.no_grad():
        return fusion.to_labels([outputs[b].all_logits()[index[b]] for b in BRANCHES])


def fit_fusion_weights(fusion, scores: torch.Tensor, labels: np.ndarray, epochs: int, lr: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    present = torch.rand(scores.shape[:2], generator=generator) >= DROP_MODALITY
    present[~present.any(1), 0] = True  # at least one modality per clip
    target = torch.from_numpy(labels)
    optimizer = torch.optim.Adam([fusion.modality_weights, fusion.log_scale], lr=lr)
    for _ in tqdm(range(epochs), desc="fusion", unit="step", leave=False):
        loss = torch.nn.functional.cross_entropy(fusion.fuse(scores, present), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def evaluate_fusion(fusion, outputs: dict[str, BranchOutputs], seed: int, n: int = CLIPS_PER_HALF) -> dict[str, dict]:
    """Metrics over the served labels on the evaluation half's composed clips: fused and each branch
    alone with words that carry the label, and fused with neutral words."""
    result = {}
    for name, neutral_words in (("fused", 0.0), ("fused, neutral words", 1.0)):
        index, labels = compose_clips(outputs, fit=False, n=n, seed=seed, neutral_words=neutral_words)
        scores = clip_scores(fusion, outputs, index)
        present = torch.ones(scores.shape[:2], dtype=torch.bool)
        with torch.no_grad():
            fused = fusion.fuse(scores, present)
        result[name] = classification_metrics(labels, fused.argmax(1).numpy(), config.LABELS)
        result[name]["calibration"] = reliability(fusion.scores(fused).numpy(), labels)
        if not neutral_words:
            for i, branch in enumerate(BRANCHES):
                result[f"{branch} alone"] = classification_metrics(labels, scores[:, i].argmax(1).numpy(), config.LABELS)
    return result


def all_validation_outputs(weights_dir: Path, data_dir: Path, quick: bool) -> dict[str, BranchOutputs]:
    return {b: validation_outputs(b, weights_dir, data_dir, quick) for b in BRANCHES}


def fit_fusion(outputs: dict[str, BranchOutputs], hp: dict, seed: int, *, calibrate: bool = True) -> models.fusion.Fv2esFusion:
    """A fusion model fitted on the fitting half's composed clips; with `calibrate`, each branch's
    temperature is fitted first on its own fitting half."""
    fusion = models.create("fusion")
    if calibrate:
        temperatures = [fit_temperature(outputs[b].logits[torch.from_numpy(outputs[b].fit_half)], outputs[b].targets[outputs[b].fit_half])
                        for b in BRANCHES]
        with torch.no_grad():
            fusion.branch_temperature.copy_(torch.tensor(temperatures))
    index, labels = compose_clips(outputs, fit=True, n=CLIPS_PER_HALF, seed=seed, neutral_words=hp["neutral_words"])
    scores = clip_scores(fusion, outputs, index)
    fit_fusion_weights(fusion, scores, labels, hp["epochs"], hp["lr"], seed)
    if calibrate:
        # The fused scores' own temperature: the sharpness refitted, the modality weights fixed, with every
        # modality present (fitted with modalities dropped, it was a compromise between the two cases).
        with torch.no_grad():
            unscaled = fusion.fuse(scores, torch.ones(scores.shape[:2], dtype=torch.bool)) / fusion.log_scale.exp()
            fusion.log_scale.fill_(-np.log(fit_temperature(unscaled, labels)))
    return fusion


def train_fusion(args: argparse.Namespace) -> dict:
    hp = dict(settings.TRAINING["fusion"])
    if args.quick:
        hp["epochs"] = 5
    outputs = all_validation_outputs(args.weights, args.data, args.quick)
    fusion = fit_fusion(outputs, hp, args.seed)
    metrics = evaluate_fusion(fusion, outputs, args.seed)
    for name, m in metrics.items():
        print(format_metrics(f"composed clips, {name}", m) + (f"\n    expected calibration error {m['calibration']['ece']:.3f}" if "calibration" in m else ""))
    weights = torch.softmax(fusion.modality_weights.detach(), 0).tolist()
    print("fusion: modality weights " + ", ".join(f"{b} {w:.3f}" for b, w in zip(BRANCHES, weights))
          + f", sharpness {fusion.log_scale.exp().item():.3f}, branch temperatures "
          + ", ".join(f"{b} {t:.2f}" for b, t in zip(BRANCHES, fusion.branch_temperature.tolist())))
    fitted = torch.nn.ParameterDict({"modality_weights": fusion.modality_weights, "log_scale": fusion.log_scale,
                                     "branch_temperature": torch.nn.Parameter(fusion.branch_temperature.clone(), requires_grad=False)})
    save_weights(
        weights_path(args.weights, "fusion"),
        fitted,
        metrics=metrics["fused"],
        data="clips composed from the RAVDESS, EmoDB, TurEV-DB, FER2013 and MELD validation splits (build/training/fusion_fit.py)",
        hyperparameters=hp,
        seed=args.seed,
        command="fv2es-train " + " ".join(sys.argv[1:]),
    )
    return metrics
