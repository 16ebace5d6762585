"""Mel spectrogram chunks: the audio encoder's input, computed the same way in training and serving."""

from __future__ import annotations

import torch
import torchaudio

from . import config


def mel_transform(device: str | torch.device = "cpu") -> torch.nn.Module:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.SAMPLE_RATE,
        n_fft=config.N_FFT,
        win_length=config.WIN_LENGTH,
        hop_length=config.HOP_LENGTH,
        n_mels=config.N_MELS,
        power=config.MEL_POWER,
    ).to(device)


def mel_chunks(audio: torch.Tensor, transform: torch.nn.Module) -> torch.Tensor:
    """[n_samples] float audio -> [n_chunks, N_MELS, CHUNK_FRAMES] log-mel chunks (last one zero-padded).

    The log-mel of the whole clip is standardised (one mean and std per clip): the recording level
    and microphone gain then do not shift the encoder's input, and the zero padding sits at the mean.
    Every non-empty clip gives at least one chunk.
    """
    shortest = config.N_FFT // 2 + 1  # the STFT's reflect padding needs more samples than half a window
    if audio.numel() < shortest:
        audio = torch.nn.functional.pad(audio, (0, shortest - audio.numel()))
    mel = torch.log(transform(audio) + config.LOG_MEL_FLOOR)  # [N_MELS, frames]
    mel = (mel - mel.mean()) / (mel.std(unbiased=False) + 1e-5)
    n_frames = mel.shape[-1]
    n_chunks = max(1, -(-n_frames // config.CHUNK_FRAMES))
    padded = torch.zeros(config.N_MELS, n_chunks * config.CHUNK_FRAMES, dtype=mel.dtype, device=mel.device)
    padded[:, :n_frames] = mel
    return padded.reshape(config.N_MELS, n_chunks, config.CHUNK_FRAMES).permute(1, 0, 2).contiguous()


def segment_mel_chunks(
    audio: torch.Tensor, segment_times: list[tuple[float, float]], transform: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of every segment's audio, and the segment index of each chunk.

    Segments beyond the end of the audio (a video longer than its audio track) get no chunk.
    """
    chunks, owners = [], []
    for index, (start, end) in enumerate(segment_times):
        clip = audio[int(start * config.SAMPLE_RATE) : int(end * config.SAMPLE_RATE)]
        if clip.numel() < config.WIN_LENGTH:
            continue
        seg_chunks = mel_chunks(clip, transform)
        chunks.append(seg_chunks)
        owners.append(torch.full((seg_chunks.shape[0],), index, dtype=torch.int64))
    if not chunks:
        empty = torch.zeros(0, config.N_MELS, config.CHUNK_FRAMES, device=audio.device)
        return empty, torch.zeros(0, dtype=torch.int64)
    return torch.cat(chunks), torch.cat(owners)
