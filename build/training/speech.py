"""The audio branch on Whisper input: clips -> the ASR step's encoder states -> the audio encoder's rows.

States come from `fv2es.asr.SpeechRecognizer.listen`, the asr model's own code (VAD, blocks of
speech, the Whisper encoder), and rows from `fv2es.asr.speech_chunks`, as on the server. Encoding
is the slow part (0.4 s per 30 s window on one CPU core), so each clip's rows are computed once
and cached under build/out/speech_cache/ (keyed by the clips and the ASR and row settings).

Each training clip is seen several ways: alone (a short video: its speech padded to a 30 s window,
as the server pads it), and packed with other training clips of its corpus into windows of
continuous speech (a long video: the encoder's attention then also sees the neighbouring speech),
as recorded and through another channel (room, band, noise, loudness, speed: `data.augment_channel`).

The branch trains on several corpora (SPEECH_TRAINING_CORPORA), each with only some of RAVDESS's
eight classes: the loss of an example is over its corpus's classes (masked_cross_entropy), the
sampling draws corpora and classes equally often (balanced_order), and the metrics are each
corpus's, in its own classes (corpus_metrics).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fv2es import config, vad
from fv2es.asr import SpeechRecognizer, speech_chunks
from fv2es.models.branches import create_branch

from . import data
from .loop import Batch, Task
from .metrics import classification_metrics

CACHE = Path(__file__).resolve().parents[1] / "out" / "speech_cache"
PACK_GAP_S = 0.3  # silence between packed clips
PACK_SECONDS = 27.0  # packed clips per window: up to this much audio, below one Whisper window
PACKINGS = 2  # packed variants of every training clip (different neighbours)
AUGMENTED_PACKINGS = 2  # ... and packed variants of the augmented waveforms
ROW_NOISE = 0.2  # training: Gaussian noise on the rows, times the features' standard deviation
# The speech corpora the shipped audio branch trains on (data.SPEECH_CORPORA: each one's held-out speakers).
SPEECH_TRAINING_CORPORA = ("ravdess", "emodb", "turev")


def recognizer(compute_type: str = "default") -> SpeechRecognizer:
    """The ASR model as the server runs it on CPU (int8); compute_type "float32" to measure what int8 changes."""
    return SpeechRecognizer(config.ASR_MODEL, cpu_threads=2, compute_type=compute_type, language=config.ASR_LANGUAGE)


def _key(name: str, waves: list[torch.Tensor], extra: str = "", compute_type: str = "int8") -> Path:
    digest = hashlib.sha256()
    for w in waves:
        digest.update(w.numpy().tobytes()[:4096] + str(len(w)).encode())
    settings = (config.ASR_MODEL, config.ASR_BLOCK_S, config.SPEECH_CHUNK_STATES, config.SPEECH_MIN_STATES, extra)
    # The speech that VAD finds is what gets encoded.
    settings += (vad.MODEL_FILE, config.VAD_THRESHOLD, config.VAD_MIN_SILENCE_MS, config.VAD_SPEECH_PAD_MS, config.VAD_MAX_SPEECH_S)
    if compute_type != "int8":  # the server's CPU precision keeps the keys it always had
        settings += (compute_type,)
    digest.update(" ".join(map(str, settings)).encode())
    return CACHE / f"{name}-{digest.hexdigest()[:12]}.pt"


def _cached(path: Path, compute):
    if path.exists():
        return torch.load(path, weights_only=False)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def clip_rows(states: np.ndarray, times: np.ndarray) -> torch.Tensor:
    """All of a clip's speech as one segment -> rows [n, 2 d] (n = 0: no speech found)."""
    rows, owners = speech_chunks(states.astype(np.float32), times, np.array([[0.0, np.inf]]))
    return torch.from_numpy(rows[owners >= 0])


def alone_rows(name: str, waves: list[torch.Tensor], asr: SpeechRecognizer | None = None) -> list[torch.Tensor]:
    """Each clip encoded on its own."""

    def compute():
        model = asr or recognizer()
        out = []
        for i, wave in enumerate(waves):
            speech = model.listen(wave.numpy(), transcribe=False)
            out.append(clip_rows(speech.states, speech.times))
            if (i + 1) % 100 == 0:
                print(f"{name}: encoded {i + 1}/{len(waves)} clips", flush=True)
        return out

    return _cached(_key(name, waves, compute_type=asr.compute_type if asr else "int8"), compute)


def packed_rows(
    name: str, waves: list[torch.Tensor], seed: int, asr: SpeechRecognizer | None = None, *, augment: bool = False
) -> list[torch.Tensor]:
    """Each clip encoded inside a window of other clips of `waves` (a random order from `seed`);
    with `augment`, each waveform is augmented first (random from `seed`)."""

    def compute():
        model = asr or recognizer()
        clips = waves
        if augment:
            generator = torch.Generator().manual_seed(seed)
            clips = [data.augment_channel(w, generator) for w in waves]
        out: list[torch.Tensor] = [torch.zeros(0)] * len(waves)
        order = np.random.default_rng(seed).permutation(len(waves))
        gap = np.zeros(int(PACK_GAP_S * config.SAMPLE_RATE), np.float32)
        start = 0
        while start < len(order):
            pieces, spans, length = [], [], 0
            while start < len(order) and (not pieces or length + len(clips[order[start]]) + len(gap) <= PACK_SECONDS * config.SAMPLE_RATE):
                clip = clips[order[start]].numpy()
                spans.append((order[start], length, length + len(clip)))
                pieces += [clip, gap]
                length += len(clip) + len(gap)
                start += 1
            speech = model.listen(np.concatenate(pieces), transcribe=False)
            for index, a, b in spans:
                inside = (speech.times >= a / config.SAMPLE_RATE) & (speech.times < b / config.SAMPLE_RATE)
                out[index] = clip_rows(speech.states[inside], speech.times[inside])
        return out

    extra = f"packed {seed} {PACK_SECONDS} {PACK_GAP_S}{' channel-augmented' if augment else ''}"
    return _cached(_key(name, waves, extra, asr.compute_type if asr else "int8"), compute)


def placeholder(rows: torch.Tensor) -> torch.Tensor:
    """A clip without speech is one zero row, as the server sends it (there the fusion ignores it)."""
    return rows if len(rows) else torch.zeros(1, 2 * config.SPEECH_STATE_DIM)


def row_scale(variants: list[list[torch.Tensor]]) -> torch.Tensor:
    """Per-feature standard deviation of the rows: the scale of the training noise."""
    rows = [r for variant in variants for r in variant if len(r)]
    return torch.cat(rows).std(0) if rows else torch.ones(2 * config.SPEECH_STATE_DIM)


def augment_rows(rows: torch.Tensor, generator: torch.Generator, scale: torch.Tensor) -> torch.Tensor:
    """A contiguous 60-100 % of the rows (a segment cut elsewhere), plus a little noise."""
    keep = max(1, int(round(len(rows) * (0.6 + 0.4 * float(torch.rand((), generator=generator))))))
    first = int(torch.randint(0, len(rows) - keep + 1, (), generator=generator))
    rows = rows[first : first + keep]
    return rows + torch.randn(rows.shape, generator=generator) * scale * ROW_NOISE


class AudioRows:
    """The audio-encoder rows of a list of clips for the configured input (config.AUDIO_INPUT):
    Whisper-state rows (each clip alone, `packings` packed and `augmented_packings` packed augmented
    variants, one picked at random when training) or Mel chunks (computed, and augmented, on the fly)."""

    def __init__(self, name: str, waves: list[torch.Tensor], *, packings: int = 0, augmented_packings: int = 0,
                 asr: SpeechRecognizer | None = None):
        self.waves = waves
        self.variants: list[list[torch.Tensor]] = []
        if config.AUDIO_INPUT == "whisper":
            asr = asr or recognizer()
            self.variants = [alone_rows(name, waves, asr)] + [packed_rows(name, waves, seed, asr) for seed in range(packings)]
            self.variants += [packed_rows(name, waves, 100 + seed, asr, augment=True) for seed in range(augmented_packings)]
            self.scale = row_scale(self.variants[:1])
        else:
            self.chunker = data.MelChunker()

    def has_speech(self, i: int) -> bool:
        return not self.variants or len(self.variants[0][i]) > 0

    def __call__(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.variants:
            return self.chunker(self.waves[i], generator)
        if generator is None:
            return placeholder(self.variants[0][i])
        pick = int(torch.randint(0, len(self.variants), (), generator=generator))
        return augment_rows(placeholder(self.variants[pick][i]), generator, self.scale)


@dataclass
class CorpusPart:
    """One corpus's clips of one split with their rows and the RAVDESS classes the corpus has."""

    corpus: str
    split: data.Split
    rows: AudioRows
    classes: tuple[str, ...]


def corpus_part(data_dir: Path, corpus: str, *, validation: bool, quick: bool, asr: SpeechRecognizer,
                variants: bool = True) -> CorpusPart:
    """validation: False the training speakers (with every encoded variant unless `variants` is False:
    then each clip alone, as a held-out corpus is tested), True the validation speakers, each clip alone."""
    split = data.load_speech(data_dir, corpus, validation=validation, quick=quick)
    name = f"{corpus}-{'val' if validation else 'train'}-{'quick' if quick else 'full'}"
    variants = dict(packings=PACKINGS, augmented_packings=AUGMENTED_PACKINGS) if variants and not validation else {}
    return CorpusPart(corpus, split, AudioRows(name, split.inputs, asr=asr, **variants), data.SPEECH_CORPORA[corpus].classes(data_dir))


def class_mask(classes: tuple[str, ...]) -> torch.Tensor:
    """[8] bool: which of RAVDESS's classes a corpus has."""
    return torch.tensor([c in classes for c in config.RAVDESS_CLASSES])


def corpus_predictions(logits: torch.Tensor | np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """The class (an index into `classes`) the audio branch gives each clip of a corpus that has only
    `classes`: the most probable of them, calm counted as neutral where the corpus has no calm (as the
    fusion maps both to the served "neutral")."""
    probabilities = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), -1).clone()
    if "calm" not in classes:
        probabilities[:, config.RAVDESS_CLASSES.index("neutral")] += probabilities[:, config.RAVDESS_CLASSES.index("calm")]
    index = [config.RAVDESS_CLASSES.index(c) for c in classes]
    return probabilities[:, index].argmax(1).numpy()


def corpus_metrics(logits: torch.Tensor | np.ndarray, targets: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Metrics over a corpus's own classes (targets: RAVDESS class indices), with the share of the most
    predicted class."""
    index = [config.RAVDESS_CLASSES.index(c) for c in classes]
    truth = np.array([index.index(int(t)) for t in targets])
    predicted = corpus_predictions(logits, classes)
    metrics = classification_metrics(truth, predicted, classes)
    counts = np.bincount(predicted, minlength=len(classes))
    metrics["most_predicted"] = {"class": classes[int(counts.argmax())], "share": float(counts.max() / max(len(predicted), 1))}
    return metrics


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy over each example's corpus's classes only (targets [B, 2]: RAVDESS class, corpus
    index; masks [corpora, 8]): a 4-class corpus says nothing about the classes it lacks. Label
    smoothing spreads over the allowed classes."""
    allowed = masks[targets[:, 1]]
    log_p = torch.log_softmax(logits.masked_fill(~allowed, -1e4), -1)
    nll = -log_p.gather(1, targets[:, :1])[:, 0]
    uniform = -(log_p * allowed).sum(1) / allowed.sum(1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def balanced_order(parts: list[CorpusPart], n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """n (part, clip) picks: a corpus uniformly, then one of its classes uniformly, then a clip of it
    with speech: every corpus and every class of it weigh the same whatever their size."""
    pools = []
    for part in parts:
        usable = np.array([i for i in range(len(part.split)) if part.rows.has_speech(i)], dtype=np.int64)
        targets = part.split.targets.numpy()[usable]
        pools.append([usable[targets == c] for c in np.unique(targets)])
    picks = []
    for _ in range(n):
        k = int(torch.randint(0, len(parts), (), generator=generator))
        pool = pools[k][int(torch.randint(0, len(pools[k]), (), generator=generator))]
        picks.append((k, int(pool[int(torch.randint(0, len(pool), (), generator=generator))])))
    return picks


def speech_audio_task(data_dir: Path, quick: bool, corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA) -> Task:
    """The audio branch on Whisper input, trained on `corpora` (their training speakers) and validated
    on their validation speakers; the best epoch by the mean over corpora of macro F1."""
    asr = recognizer()
    train = [corpus_part(data_dir, c, validation=False, quick=quick, asr=asr) for c in corpora]
    val = [corpus_part(data_dir, c, validation=True, quick=quick, asr=asr) for c in corpora]
    masks = torch.stack([class_mask(p.classes) for p in train])
    n_train = sum(len(p.split) for p in train)

    def train_batches(generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        picks = balanced_order(train, n_train, generator)
        for start in range(0, len(picks), batch_size):
            chosen = picks[start : start + batch_size]
            padded, mask = data.pad_sequences([train[k].rows(i, generator) for k, i in chosen])
            yield (padded, mask), torch.tensor([[int(train[k].split.targets[i]), k] for k, i in chosen])

    def val_batches(batch_size: int) -> Iterator[Batch]:
        for k, part in enumerate(val):
            for start in range(0, len(part.split), batch_size):
                index = list(range(start, min(start + batch_size, len(part.split))))
                padded, mask = data.pad_sequences([part.rows(i) for i in index])
                yield (padded, mask), torch.stack([part.split.targets[index], torch.full((len(index),), k)], 1)

    def metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
        per_corpus = {p.corpus: corpus_metrics(logits[targets[:, 1] == k], targets[targets[:, 1] == k, 0], p.classes)
                      for k, p in enumerate(val)}
        keys = ("accuracy", "macro_f1", "weighted_f1", "mean_weighted_macro_f1", "wacc")
        mean = {key: float(np.mean([m[key] for m in per_corpus.values()])) for key in keys}
        return {"n": len(targets), **mean, "per_class_f1": {}, "per_corpus": per_corpus}

    return Task("audio", create_branch("audio", len(config.RAVDESS_CLASSES)), config.RAVDESS_CLASSES, n_train,
                sum(len(p.split) for p in val), train_batches, val_batches, select_by="macro_f1",
                criterion=lambda hp: lambda logits, targets: masked_cross_entropy(logits, targets, masks, hp.get("label_smoothing", 0.0)),
                metrics=metrics)


def audio_branch_task(data_dir: Path, quick: bool, corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA) -> Task:
    """The audio branch's training task for the configured input (config.AUDIO_INPUT); the Mel input
    trains on RAVDESS only."""
    if config.AUDIO_INPUT == "whisper":
        return speech_audio_task(data_dir, quick, corpora)
    from .tasks import audio_task

    return audio_task(data_dir, quick)


def validation_parts(data_dir: Path, quick: bool, corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA,
                     compute_type: str = "default") -> list[CorpusPart]:
    """Each corpus's validation speakers, each clip alone: what evaluation needs (no training rows)."""
    asr = recognizer(compute_type)
    return [corpus_part(data_dir, c, validation=True, quick=quick, asr=asr) for c in corpora]


def whole_corpus(data_dir: Path, corpus: str, quick: bool) -> list[CorpusPart]:
    """All of a corpus (training and validation speakers), each clip alone: a held-out corpus's test."""
    asr = recognizer()
    return [corpus_part(data_dir, corpus, validation=v, quick=quick, asr=asr, variants=False) for v in (False, True)]


def held_out_corpus_metrics(branch: torch.nn.Module, corpus: str, data_dir: Path, quick: bool,
                            corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA) -> dict:
    """A branch trained on the other `corpora` on every clip of `corpus`, in the classes it shares with
    them (a class it lacks but whose served label a trained class has, RAVDESS's calm, counts as that
    class; the others, RAVDESS's surprised, are left out)."""
    trained = {c for other in corpora if other != corpus for c in data.SPEECH_CORPORA[other].classes(data_dir)}
    parts = whole_corpus(data_dir, corpus, quick)
    shared = tuple(c for c in parts[0].classes if c in trained)
    served = {config.CLASS_TO_LABEL[c]: c for c in shared}
    rows, targets = [], []
    for part in parts:
        for i in range(len(part.split)):
            truth = served.get(config.CLASS_TO_LABEL[config.RAVDESS_CLASSES[int(part.split.targets[i])]])
            if truth is not None:
                rows.append(part.rows(i))
                targets.append(config.RAVDESS_CLASSES.index(truth))
    return corpus_metrics(clip_logits(branch, rows), np.array(targets), shared)


def parts_metrics(branch: torch.nn.Module, parts: list[CorpusPart]) -> dict:
    """The branch's metrics over the clips of `parts` (one corpus), in that corpus's classes."""
    logits = clip_logits(branch, [p.rows(i) for p in parts for i in range(len(p.split))])
    targets = torch.cat([p.split.targets for p in parts]).numpy()
    return corpus_metrics(logits, targets, parts[0].classes)


@torch.no_grad()
def clip_logits(branch: torch.nn.Module, rows: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """The audio branch's logits for each clip ([n, classes])."""
    branch.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        out.append(branch(*data.pad_sequences(rows[start : start + batch_size])))
    return torch.cat(out)
