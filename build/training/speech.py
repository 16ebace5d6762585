"""The audio branch on Whisper input: clips -> the ASR step's encoder states -> the audio encoder's rows.

States come from `fv2es.asr.SpeechRecognizer.listen`, the asr model's own code (VAD, blocks of
speech, the Whisper encoder), and rows from `fv2es.asr.speech_chunks`, as on the server. Encoding
is the slow part (0.4 s per 30 s window on one CPU core), so each clip's rows are computed once
and cached under build/out/speech_cache/ (keyed by the clips and the ASR and row settings).

Each training clip is seen several ways: alone (a short video: its speech padded to a 30 s window,
as the server pads it), and packed with other training clips into windows of continuous speech (a
long video: the encoder's attention then also sees the neighbouring speech), as recorded and with
its waveform augmented (crop, speed, noise: `data.augment_wave`) before encoding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fv2es import config
from fv2es.asr import SpeechRecognizer, speech_chunks
from fv2es.models.branches import create_branch

from . import data
from .loop import Batch, Task

CACHE = Path(__file__).resolve().parents[1] / "out" / "speech_cache"
PACK_GAP_S = 0.3  # silence between packed clips
PACK_SECONDS = 27.0  # packed clips per window: up to this much audio, below one Whisper window
PACKINGS = 2  # packed variants of every training clip (different neighbours)
AUGMENTED_PACKINGS = 2  # ... and packed variants of the augmented waveforms
ROW_NOISE = 0.2  # training: Gaussian noise on the rows, times the features' standard deviation


def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer(config.ASR_MODEL, cpu_threads=2)


def _key(name: str, waves: list[torch.Tensor], extra: str = "") -> Path:
    digest = hashlib.sha256()
    for w in waves:
        digest.update(w.numpy().tobytes()[:4096] + str(len(w)).encode())
    settings = (config.ASR_MODEL, config.ASR_BLOCK_S, config.SPEECH_CHUNK_STATES, config.SPEECH_MIN_STATES, extra)
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

    return _cached(_key(name, waves), compute)


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
            clips = [data.augment_wave(w, generator) for w in waves]
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

    return _cached(_key(name, waves, f"packed {seed} {PACK_SECONDS} {PACK_GAP_S}{' augmented' if augment else ''}"), compute)


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


def speech_audio_task(data_dir: Path, quick: bool) -> Task:
    train = data.load_ravdess(data_dir, validation=False, quick=quick)
    val = data.load_ravdess(data_dir, validation=True, quick=quick)
    asr = recognizer()
    tag = "quick" if quick else "full"
    train_rows = AudioRows(f"ravdess-train-{tag}", train.inputs, packings=PACKINGS, augmented_packings=AUGMENTED_PACKINGS, asr=asr)
    val_rows = AudioRows(f"ravdess-val-{tag}", val.inputs, asr=asr)

    def train_batches(generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        usable = [i for i in range(len(train)) if train_rows.has_speech(i)]  # nothing to learn from silence
        order = [usable[int(j)] for j in torch.randperm(len(usable), generator=generator)]
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            padded, mask = data.pad_sequences([train_rows(i, generator) for i in index])
            yield (padded, mask), train.targets[index]

    def val_batches(batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(val), batch_size):
            index = list(range(start, min(start + batch_size, len(val))))
            padded, mask = data.pad_sequences([val_rows(i) for i in index])
            yield (padded, mask), val.targets[index]

    return Task("audio", create_branch("audio", len(train.classes)), train.classes, len(train), len(val), train_batches, val_batches)


def audio_branch_task(data_dir: Path, quick: bool) -> Task:
    """The audio branch's training task for the configured input (config.AUDIO_INPUT)."""
    if config.AUDIO_INPUT == "whisper":
        return speech_audio_task(data_dir, quick)
    from .tasks import audio_task

    return audio_task(data_dir, quick)


def clip_inputs(name: str, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each clip's audio-encoder rows for the configured input, as the server computes them for a
    video holding only that clip as one segment."""
    rows = AudioRows(name, waves)
    return [rows(i) for i in range(len(waves))]


@torch.no_grad()
def clip_logits(branch: torch.nn.Module, rows: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """The audio branch's logits for each clip ([n, classes])."""
    branch.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        out.append(branch(*data.pad_sequences(rows[start : start + batch_size])))
    return torch.cat(out)
