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


def quick_subset(split: Split, n: int, seed: int = config.TRAIN_SEED) -> Split:
    index = np.random.default_rng(seed).permutation(len(split))[:n]
    return split.subset(np.sort(index))


# --- RAVDESS (audio) ----------------------------------------------------------------------------

def ravdess_files(data_dir: Path) -> list[tuple[Path, int, int]]:
    """(file, actor, class index) of every clip; the name is 03-01-EE-II-SS-RR-AA, EE the emotion 01..08."""
    root = data_dir / "ravdess"
    files = sorted(root.glob("Actor_*/*.flac"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS clips under {root} (expected Actor_NN/*.flac)")
    out = []
    for path in files:
        parts = path.stem.split("-")
        out.append((path, int(parts[6]), int(parts[2]) - 1))
    return out


def load_ravdess(data_dir: Path, *, validation: bool, quick: bool = False) -> Split:
    """Waveforms (float32 tensors at SAMPLE_RATE) of the training or held-out validation actors."""
    chosen = [f for f in ravdess_files(data_dir) if (f[1] in config.RAVDESS_VALIDATION_ACTORS) == validation]
    if quick:
        chosen = chosen[:: max(1, len(chosen) // config.QUICK_EXAMPLES)][: config.QUICK_EXAMPLES]
    waves = [torch.from_numpy(demux(path.read_bytes()).audio) for path, _, _ in chosen]
    targets = torch.tensor([c for _, _, c in chosen])
    return Split(waves, targets, config.RAVDESS_CLASSES, np.array([a for _, a, _ in chosen]))


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
        split = Split(torch.from_numpy(normalise_faces(data["images"])), torch.from_numpy(data["labels"]), classes)
    return quick_subset(split, config.QUICK_EXAMPLES) if quick else split


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

def load_meld(data_dir: Path, *, validation: bool, quick: bool = False) -> Split:
    """Utterance texts and classes of MELD train or dev; groups = dialogue ids."""
    path = data_dir / "meld" / ("dev_sent_emo.csv" if validation else "train_sent_emo.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [clean_meld_text(r["Utterance"]) for r in rows]
    targets = torch.tensor([config.MELD_CLASSES.index(r["Emotion"].strip().lower()) for r in rows])
    split = Split(texts, targets, config.MELD_CLASSES, np.array([int(r["Dialogue_ID"]) for r in rows]))
    return quick_subset(split, config.QUICK_EXAMPLES) if quick else split


def clean_meld_text(text: str) -> str:
    """MELD's typographic quotes and dashes as the plain ASCII an ASR model writes."""
    for fancy, plain in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", "-"), ("\u2026", "...")):
        text = text.replace(fancy, plain)
    return " ".join(text.split())


# --- EmoDB (audio, cross-corpus validation only) ------------------------------------------------

# EmoDB's emotion letters (German names) -> RAVDESS classes; boredom (L) has no RAVDESS class.
EMODB_TO_RAVDESS = {"W": "angry", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}


def load_emodb(data_dir: Path) -> Split:
    """EmoDB clips of the six classes it shares with RAVDESS, as waveforms, with RAVDESS class
    indices as targets; groups = speaker. Never trained on: the audio branch's cross-corpus check."""
    files = sorted((data_dir / "emodb").glob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no EmoDB clips under {data_dir / 'emodb'} (expected SSTTTEv.flac)")
    chosen = [(f, EMODB_TO_RAVDESS[f.stem[5]]) for f in files if f.stem[5] in EMODB_TO_RAVDESS]
    waves = [torch.from_numpy(demux(path.read_bytes()).audio) for path, _ in chosen]
    targets = torch.tensor([config.RAVDESS_CLASSES.index(c) for _, c in chosen])
    return Split(waves, targets, config.RAVDESS_CLASSES, np.array([int(f.stem[:2]) for f, _ in chosen]))
