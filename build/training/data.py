"""The three corpora, read into the encoders' inputs with the server's own preprocessing.

Audio goes through `fv2es.media.demux` (the demux model's decoder) and `fv2es.audio.mel_chunks`
(the mel model's), faces through `fv2es.faces.normalise_faces` (face_crop's), text through
`fv2es.text.tokenize` (asr's): training sees exactly what serving sees.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fv2es import config
from .. import settings
from fv2es.audio import mel_chunks, mel_transform
from fv2es.faces import normalise_faces
from fv2es.media import demux


@dataclass
class Split:
    """Inputs and integer class targets of one split, in the corpus's own classes."""

    inputs: list | torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]
    groups: np.ndarray | None = None  # speaker / dialogue of each example, for group-wise splits

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> "Split":
        inputs = [self.inputs[i] for i in index] if isinstance(self.inputs, list) else self.inputs[index]
        groups = None if self.groups is None else self.groups[index]
        return Split(inputs, self.targets[index], self.classes, groups)


def quick_index(n_examples: int, n: int = settings.QUICK_EXAMPLES, seed: int = settings.TRAIN_SEED) -> np.ndarray:
    """The examples --quick keeps: `n` of `n_examples`, drawn with `seed`, in their order."""
    return np.sort(np.random.default_rng(seed).permutation(n_examples)[:n])


def quick_subset(split: Split, n: int, seed: int = settings.TRAIN_SEED) -> Split:
    return split.subset(quick_index(len(split), n, seed))


# --- RAVDESS (audio) ----------------------------------------------------------------------------

def load_ravdess(data_dir: Path, *, validation: bool, quick: bool = False) -> Split:
    """Waveforms (float32 tensors at SAMPLE_RATE) of the training or held-out validation actors."""
    return load_speech(data_dir, "ravdess", validation=validation, quick=quick)


class MelChunker:
    """Waveform -> [n_chunks, N_MELS, CHUNK_FRAMES], the mel model's code; optional training augmentation."""

    def __init__(self):
        self.transform = mel_transform()

    def __call__(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if len(wave) < config.WIN_LENGTH:  # as segment_mel_chunks: too short to give a chunk
            return torch.zeros(0, config.N_MELS, config.CHUNK_FRAMES)
        if generator is not None:
            wave = augment_wave(wave, generator)
        with torch.no_grad():
            chunks = mel_chunks(wave, self.transform)
        if generator is not None:
            chunks = spec_augment(chunks, generator)
        return chunks


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment_wave(wave: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (80-100 %), speed change (0.95-1.05x) and background noise (SNR 20-40 dB, a fifth of the time).

    Mild on purpose: with speed 0.9-1.1x and noise on half the clips at 10-40 dB the branch did not
    even fit its training clips in 15 epochs (loss 1.84 against 1.60 without augmentation after 6).
    """
    keep = int(len(wave) * _uniform(generator, 0.8, 1.0))
    start = int(torch.randint(0, len(wave) - keep + 1, (), generator=generator))
    wave = wave[start : start + keep]
    speed = _uniform(generator, 0.95, 1.05)
    wave = torch.nn.functional.interpolate(wave[None, None], size=int(len(wave) / speed), mode="linear")[0, 0]
    if float(torch.rand((), generator=generator)) < 0.2:
        snr_db = _uniform(generator, 20.0, 40.0)
        power = wave.pow(2).mean().clamp(min=1e-10)
        wave = wave + torch.randn(len(wave), generator=generator) * torch.sqrt(power / 10 ** (snr_db / 10))
    return wave


def augment_channel(wave: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A studio clip as another microphone, room and speaker might give it (the Whisper-input branch's
    augmented variants, encoded offline): crop (80-100 %), speed 0.9-1.1x (tempo and pitch, as Kaldi's
    speed perturbation), then each with its own chance a room (reverberation), a channel (telephone
    300-3400 Hz, or a laptop microphone's 150-300 Hz to 5-7 kHz), background noise (white, pink or
    brown, SNR 5-30 dB) and a loudness from -35 to -15 dBFS RMS (Whisper's features are not
    loudness-invariant; clipped at full scale)."""
    import torchaudio.functional as AF  # noqa: PLC0415, N812

    rate = config.SAMPLE_RATE
    keep = int(len(wave) * _uniform(generator, 0.8, 1.0))
    start = int(torch.randint(0, len(wave) - keep + 1, (), generator=generator))
    wave = wave[start : start + keep]
    speed = _uniform(generator, 0.9, 1.1)
    wave = torch.nn.functional.interpolate(wave[None, None], size=int(len(wave) / speed), mode="linear")[0, 0]
    if float(torch.rand((), generator=generator)) < 0.4:
        wave = reverberate(wave, _uniform(generator, 0.2, 0.8), generator)
    channel = float(torch.rand((), generator=generator))
    if channel < 0.25:  # telephone
        wave = AF.lowpass_biquad(AF.highpass_biquad(wave, rate, 300.0), rate, 3400.0)
    elif channel < 0.5:  # laptop or phone microphone
        wave = AF.highpass_biquad(wave, rate, _uniform(generator, 150.0, 300.0))
        wave = AF.lowpass_biquad(wave, rate, _uniform(generator, 5000.0, 7000.0))
    if float(torch.rand((), generator=generator)) < 0.6:
        wave = add_noise(wave, _uniform(generator, 5.0, 30.0), int(torch.randint(0, 3, (), generator=generator)), generator)
    rms = wave.pow(2).mean().sqrt().clamp(min=1e-6)
    wave = wave * (10 ** (_uniform(generator, -35.0, -15.0) / 20) / rms)
    return wave.clamp(-1.0, 1.0)


def reverberate(wave: torch.Tensor, rt60_s: float, generator: torch.Generator) -> torch.Tensor:
    """A room: the wave convolved with a synthetic impulse response (a direct path, then exponentially
    decaying noise reaching -60 dB after rt60_s), at the same loudness."""
    import torchaudio.functional as AF  # noqa: PLC0415, N812

    n = int(rt60_s * config.SAMPLE_RATE)
    t = torch.arange(n) / config.SAMPLE_RATE
    response = torch.randn(n, generator=generator) * torch.exp(-6.9 * t / rt60_s) * 0.3
    response[0] = 1.0
    wet = AF.fftconvolve(wave, response)[: len(wave)]
    return wet * (wave.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-9))


def add_noise(wave: torch.Tensor, snr_db: float, colour: int, generator: torch.Generator) -> torch.Tensor:
    """Noise at `snr_db` below the wave: colour 0 white, 1 pink (1/f power), 2 brown (1/f^2)."""
    noise = torch.randn(len(wave), generator=generator)
    if colour:
        spectrum = torch.fft.rfft(noise)
        spectrum /= torch.arange(1, len(spectrum) + 1, dtype=torch.float32) ** (colour / 2)
        noise = torch.fft.irfft(spectrum, n=len(wave))
    power = wave.pow(2).mean().clamp(min=1e-10)
    return wave + noise * torch.sqrt(power / 10 ** (snr_db / 10) / noise.pow(2).mean().clamp(min=1e-12))


def spec_augment(chunks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment: one frequency band (<= 8 mels) and one time span (<= 4 frames) set to the mean (0)."""
    chunks = chunks.clone()
    width = int(torch.randint(0, 9, (), generator=generator))
    low = int(torch.randint(0, config.N_MELS - width + 1, (), generator=generator))
    chunks[:, low : low + width, :] = 0.0
    width = int(torch.randint(0, 5, (), generator=generator))
    low = int(torch.randint(0, config.CHUNK_FRAMES - width + 1, (), generator=generator))
    chunk = int(torch.randint(0, chunks.shape[0], (), generator=generator))
    chunks[chunk, :, low : low + width] = 0.0
    return chunks


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, ...] tensors -> padded [B, L, ...] and padding mask [B, L] (True = padding)."""
    longest = max(s.shape[0] for s in sequences)
    padded = sequences[0].new_zeros(len(sequences), longest, *sequences[0].shape[1:])
    mask = torch.ones(len(sequences), longest, dtype=torch.bool)
    for i, s in enumerate(sequences):
        padded[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = False
    return padded, mask


# --- FER2013 (visual) ---------------------------------------------------------------------------

def load_fer2013(data_dir: Path, *, validation: bool, quick: bool = False) -> Split:
    """Normalised faces [N, 1, 48, 48] (face_crop's normalisation) and their classes."""
    path = data_dir / "fer2013" / ("validation.npz" if validation else "train.npz")
    with np.load(path) as data:
        classes = tuple(str(c) for c in data["classes"])
        if classes != config.FER2013_CLASSES:
            raise ValueError(f"{path} has classes {classes}, expected {config.FER2013_CLASSES}")
        images, labels = data["images"], data["labels"]
    if quick:  # before the normalisation, which is seconds for the whole split
        keep = quick_index(len(labels))
        images, labels = images[keep], labels[keep]
    return Split(torch.from_numpy(normalise_faces(images)), torch.from_numpy(labels), classes)


# FER+ (Barsoum et al. 2016): ten annotators' votes per FER2013 image, rows in the order of the .npz splits.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_TO_FER2013 = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
                      "anger": "angry", "disgust": "disgust", "fear": "fear"}  # contempt has no FER2013 class


def load_ferplus_votes(data_dir: Path, *, validation: bool) -> np.ndarray:
    """[N, 10] vote counts (FERPLUS_COLUMNS) of FER2013 Training or PublicTest, row i = image i of the .npz."""
    path = data_dir / "ferplus" / "fer2013new.csv"
    usage = "PublicTest" if validation else "Training"
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Usage"] == usage]
    return np.array([[int(r[c] or 0) for c in FERPLUS_COLUMNS] for r in rows], dtype=np.float32)


def ferplus_targets(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets [N, 7] over FER2013_CLASSES (the votes for those seven emotions, normalised) and
    the majority class per image (-1 where there is none to use: most votes for contempt, unknown or
    not-a-face, a tie for the top, or no emotion votes at all)."""
    order = [FERPLUS_COLUMNS.index(f) for f, c in sorted(FERPLUS_TO_FER2013.items(), key=lambda x: config.FER2013_CLASSES.index(x[1]))]
    emotions = votes[:, order]
    total = emotions.sum(1, keepdims=True)
    soft = np.divide(emotions, total, out=np.zeros_like(emotions), where=total > 0)
    top = votes.max(1)
    majority = emotions.argmax(1)
    unique_top = (votes == top[:, None]).sum(1) == 1
    usable = (emotions.max(1) == top) & unique_top & (total[:, 0] > 0)
    return soft, np.where(usable, majority, -1)


def augment_faces(faces: torch.Tensor, generator: torch.Generator, strong: bool = False) -> torch.Tensor:
    """Random flip, rotation (+-10 deg), scale (0.85-1.15) and shift (+-10 %): a face tracker's jitter.

    strong (TRAINING["visual_finetune"]["augment"] = "strong"): rotation +-20 deg, then brightness (+-0.4) and
    contrast (0.7-1.3x) jitter of the normalised faces, and one random-erasing patch (cutout, 10-30 %
    of the face, filled with noise) on half of them.
    """
    n = faces.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi / (9 if strong else 18))
    scale = 0.85 + 0.3 * torch.rand(n, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(faces.shape), align_corners=False)
    faces = torch.nn.functional.grid_sample(faces, grid, padding_mode="border", align_corners=False)
    if strong:
        faces = _jitter_and_erase(faces, generator)
    return faces


def _jitter_and_erase(faces: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = faces.shape
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.8
    mean = faces.mean(dim=(1, 2, 3), keepdim=True)
    faces = (faces - mean) * contrast + mean + brightness
    # Random erasing: a rectangle of 10-30 % of the area, aspect 0.5-2, on half of the faces.
    area = (0.1 + 0.2 * torch.rand(n, generator=generator)) * height * width
    aspect = torch.exp((torch.rand(n, generator=generator) - 0.5) * 2 * np.log(2))
    h = (area * aspect).sqrt().round().clamp(1, height).long()
    w = (area / aspect).sqrt().round().clamp(1, width).long()
    top = (torch.rand(n, generator=generator) * (height - h + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).floor().long()
    erase = torch.rand(n, generator=generator) < 0.5
    rows, cols = torch.arange(height), torch.arange(width)
    inside_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None])
    inside_cols = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & erase[:, None, None]).unsqueeze(1)
    noise = torch.randn(faces.shape, generator=generator)
    return torch.where(mask, noise, faces)


# --- MELD (text) --------------------------------------------------------------------------------

def load_meld(data_dir: Path, *, validation: bool, quick: bool = False, context: int = 0) -> Split:
    """Utterance texts and classes of MELD train or dev; groups = dialogue ids. With `context` > 0 each
    input is (text, the up to `context` utterances before it in its dialogue, joined)."""
    path = data_dir / "meld" / ("dev_sent_emo.csv" if validation else "train_sent_emo.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [clean_meld_text(r["Utterance"]) for r in rows]
    if context:
        texts = list(zip(texts, meld_contexts(rows, texts, context)))
    targets = torch.tensor([config.MELD_CLASSES.index(r["Emotion"].strip().lower()) for r in rows])
    split = Split(texts, targets, config.MELD_CLASSES, np.array([int(r["Dialogue_ID"]) for r in rows]))
    return quick_subset(split, settings.QUICK_EXAMPLES) if quick else split


def meld_contexts(rows: list[dict], texts: list[str], n: int) -> list[str]:
    """For each utterance, the n utterances before it in the same dialogue (by Utterance_ID), oldest first."""
    by_dialogue: dict[str, list[tuple[int, int]]] = {}
    for i, row in enumerate(rows):
        by_dialogue.setdefault(row["Dialogue_ID"], []).append((int(row["Utterance_ID"]), i))
    contexts = [""] * len(rows)
    for utterances in by_dialogue.values():
        order = [i for _, i in sorted(utterances)]
        for k, i in enumerate(order):
            contexts[i] = " ".join(texts[j] for j in order[max(0, k - n) : k])
    return contexts


def clean_meld_text(text: str) -> str:
    """MELD's typographic quotes and dashes as the plain ASCII an ASR model writes."""
    for fancy, plain in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", "-"), ("\u2026", "...")):
        text = text.replace(fancy, plain)
    return " ".join(text.split())


# --- Speech corpora (audio) ---------------------------------------------------------------------

@dataclass(frozen=True)
class SpeechCorpus:
    """One labelled speech corpus: its clips' (file, speaker, RAVDESS class) and the speakers held out
    for validation. The audio branch's classes are RAVDESS's eight; a corpus has some of them."""

    name: str
    validation_speakers: tuple[int, ...]

    def clips(self, data_dir: Path) -> list[tuple[Path, int, str]]:
        return SPEECH_CLIP_READERS[self.name](data_dir / self.name)

    def classes(self, data_dir: Path) -> tuple[str, ...]:
        """The RAVDESS classes this corpus has, in RAVDESS's order."""
        present = {c for _, _, c in self.clips(data_dir)}
        return tuple(c for c in config.RAVDESS_CLASSES if c in present)


def _ravdess_clips(root: Path) -> list[tuple[Path, int, str]]:
    """Names 03-01-EE-II-SS-RR-AA: EE the emotion 01..08 (RAVDESS_CLASSES' order), AA the actor."""
    files = sorted(root.glob("Actor_*/*.flac"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS clips under {root} (expected Actor_NN/*.flac)")
    return [(f, int(f.stem.split("-")[6]), config.RAVDESS_CLASSES[int(f.stem.split("-")[2]) - 1]) for f in files]


# EmoDB's emotion letters (German names) -> RAVDESS classes; boredom (L) has no RAVDESS class and is left out.
EMODB_TO_RAVDESS = {"W": "angry", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}


def _emodb_clips(root: Path) -> list[tuple[Path, int, str]]:
    """Names SSTTTEv: SS the speaker, E the emotion letter."""
    files = sorted(root.glob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no EmoDB clips under {root} (expected SSTTTEv.flac)")
    return [(f, int(f.stem[:2]), EMODB_TO_RAVDESS[f.stem[5]]) for f in files if f.stem[5] in EMODB_TO_RAVDESS]


# TurEV-DB's class folders -> RAVDESS classes (its README: Calm maps to neutral).
TUREV_TO_RAVDESS = {"Angry": "angry", "Calm": "neutral", "Happy": "happy", "Sad": "sad"}


def _turev_clips(root: Path) -> list[tuple[Path, int, str]]:
    """Folders by class; names SPEAKER_CODE_word."""
    files = sorted(root.glob("*/*.flac"))
    if not files:
        raise FileNotFoundError(f"no TurEV-DB clips under {root} (expected Angry|Calm|Happy|Sad/*.flac)")
    return [(f, int(f.stem.split("_")[0]), TUREV_TO_RAVDESS[f.parent.name]) for f in files if f.parent.name in TUREV_TO_RAVDESS]


SPEECH_CLIP_READERS = {"ravdess": _ravdess_clips, "emodb": _emodb_clips, "turev": _turev_clips}
# Validation speakers, never trained on: RAVDESS actors 17-20 (2 male, 2 female), EmoDB 03 (male) and
# 09 (female), TurEV 1358 and 6783 (both with all four classes).
SPEECH_CORPORA = {
    "ravdess": SpeechCorpus("ravdess", settings.RAVDESS_VALIDATION_ACTORS),
    "emodb": SpeechCorpus("emodb", (3, 9)),
    "turev": SpeechCorpus("turev", (1358, 6783)),
}


def load_speech(data_dir: Path, corpus: str, *, validation: bool, quick: bool = False) -> Split:
    """Waveforms (float32 at SAMPLE_RATE) of a corpus's training speakers (validation False) or its
    validation speakers (True), with RAVDESS class indices; groups = speaker."""
    spec = SPEECH_CORPORA[corpus]
    chosen = [c for c in spec.clips(data_dir) if (c[1] in spec.validation_speakers) == validation]
    if quick:
        chosen = chosen[:: max(1, len(chosen) // settings.QUICK_SPEECH_EXAMPLES)][: settings.QUICK_SPEECH_EXAMPLES]
    waves = [torch.from_numpy(demux(path.read_bytes()).audio) for path, _, _ in chosen]
    targets = torch.tensor([config.RAVDESS_CLASSES.index(c) for _, _, c in chosen])
    return Split(waves, targets, config.RAVDESS_CLASSES, np.array([s for _, s, _ in chosen]))
