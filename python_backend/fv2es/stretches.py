"""Cutting the timeline into stretches of one Whisper window of speech each, so that a live stream
is cut where the whole file is, and the whole file needs (about) as many Whisper windows as in one piece.

Speech recognition and segmentation run on each stretch alone (`stages.asr`; a stretch's speech is
packed into blocks of one 30 s Whisper window, `asr.speech_blocks`). The rule runs Silero VAD,
the speech detector ASR uses, with its options (`vad_options`), over the audio from the stretch's
start, in batches of STRETCH_VAD_BATCH windows whose detector state runs forward; so a window's
speech probability depends on nothing after it, and a stream whose audio is still arriving computes
the same probabilities as the whole file. On those probabilities (counted from the stretch's start):

- speech chunks as Silero's: speech starts at `threshold`, ends after `min_silence_duration_ms`
  under `neg_threshold`, longer speech is split; each chunk padded by `speech_pad_ms`;
- the chunks are packed, in order, into STRETCH_SPEECH_S of speech; the stretch ends at the padded
  end of the last chunk that fits, as soon as the next chunk is known not to fit (its start is
  final and its speech so far already overflows);
- without that within STRETCH_MAX_S, once the audio goes on past it: at the padded start of the
  speech going on there, else at STRETCH_MAX_S (a pause).

A decision uses only chunks that nothing later can change, so the cuts of a growing audio are the
first cuts of the whole; applied to one stretch's audio alone the rule finds no cut (its last
chunk is still open there, and its speech fits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config

VAD_WINDOW = 512  # samples per Silero VAD window (16 kHz)
VAD_CONTEXT = 64  # samples of the previous window that the model sees with each window
MAX_WINDOWS = round(config.STRETCH_MAX_S * config.SAMPLE_RATE) // VAD_WINDOW
SPEECH_SAMPLES = round(config.STRETCH_SPEECH_S * config.SAMPLE_RATE)
STEP_WINDOWS = 5 * config.STRETCH_VAD_BATCH  # how far a file's audio is searched at a time (4 s)


def vad_options():
    """Silero VAD's options, as speech recognition uses them: speech split at one Whisper window."""
    from faster_whisper.vad import VadOptions

    return VadOptions(max_speech_duration_s=config.ASR_BLOCK_S - 2 * VadOptions.speech_pad_ms / 1000)


@dataclass
class Chunk:
    """One stretch of speech, in samples from the stretch's start: padded start and end; `closed`
    once silence (or the length limit) ended it."""

    start: int
    end: int
    closed: bool


def vad_chunks(probs: np.ndarray) -> list[Chunk]:
    """Silero's speech chunks from its window probabilities, padded (faster_whisper.vad's rules,
    step by step); the last one may still be open: its end is then the least it can end at."""
    vad = vad_options()
    neg = vad.neg_threshold if vad.neg_threshold is not None else max(vad.threshold - 0.15, 0.01)
    min_silence = vad.min_silence_duration_ms * config.SAMPLE_RATE // 1000
    split_silence = 98 * config.SAMPLE_RATE // 1000  # a pause long enough to split too-long speech at
    pad = vad.speech_pad_ms * config.SAMPLE_RATE // 1000
    max_speech = vad.max_speech_duration_s * config.SAMPLE_RATE - VAD_WINDOW - 2 * pad
    raw: list[list] = []  # [start, end, closed] in samples, unpadded
    triggered = False
    start = silence = prev_end = next_start = 0  # 0: none (as faster_whisper.vad)
    for i, p in enumerate(probs.tolist()):
        at = i * VAD_WINDOW
        if p >= vad.threshold and silence:
            silence = 0
            if next_start < prev_end:
                next_start = at
        if p >= vad.threshold and not triggered:
            triggered, start = True, at
            continue
        if triggered and at - start > max_speech:  # too long: split at the last pause, else here
            if prev_end:
                raw.append([start, prev_end, True])
                if next_start < prev_end:
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = silence = 0
            else:
                raw.append([start, at, True])
                prev_end = next_start = silence = 0
                triggered = False
                continue
        if p < neg and triggered:
            silence = silence or at
            if at - silence > split_silence:
                prev_end = silence
            if at - silence >= min_silence:
                raw.append([start, silence, True])
                prev_end = next_start = silence = 0
                triggered = False
    if triggered:  # may yet end at its last pause (a split), at its silence, or later
        raw.append([start, prev_end or silence or len(probs) * VAD_WINDOW, False])
    chunks = []
    for k, (a, b, closed) in enumerate(raw):
        gap_before = a - raw[k - 1][1] if k else 2 * pad + a
        gap_after = raw[k + 1][0] - b if k + 1 < len(raw) else 2 * pad
        chunks.append(Chunk(max(0, a - min(pad, gap_before // 2)), b + (min(pad, gap_after // 2) if closed else 0), closed))
    return chunks


def decide(chunks: list[Chunk], n_windows: int, past_max: bool) -> int | None:
    """The cut (samples from the stretch's start) that these chunks decide, or None (not yet)."""
    speech = 0
    for k, chunk in enumerate(chunks):
        speech += chunk.end - chunk.start  # an open chunk's speech so far: it can only grow
        if speech > SPEECH_SAMPLES and k > 0:
            return chunks[k - 1].end
        if not chunk.closed:
            break
    if not past_max:
        return None
    if chunks and not chunks[-1].closed and chunks[-1].start > 0:
        return chunks[-1].start  # before the speech going on at the maximum
    return n_windows * VAD_WINDOW


class Cutter:
    """The cuts of one timeline, its audio given whole (a file) or growing (a live stream: the
    speech probabilities of the open stretch are kept between calls)."""

    def __init__(self):
        self.start = 0  # sample where the open stretch starts
        self._reset()

    def _reset(self) -> None:
        self.probs = np.zeros(0, np.float32)
        self.state = np.zeros((2, 1, 1, 128), np.float32)  # the detector's h and c

    def cuts(self, audio: np.ndarray) -> list[int]:
        """Every new cut (sample index on `audio`'s timeline) that the audio so far decides."""
        found = []
        while (cut := self._next(audio)) is not None:
            found.append(cut)
            self.start = cut
            self._reset()
        return found

    def _next(self, audio: np.ndarray) -> int | None:
        past_max = len(audio) - self.start > MAX_WINDOWS * VAD_WINDOW
        # Whole batches only (the same batches a file and a stream compute), up to the maximum.
        batch = config.STRETCH_VAD_BATCH
        n = MAX_WINDOWS if past_max else min((len(audio) - self.start) // VAD_WINDOW, MAX_WINDOWS) // batch * batch
        # A few seconds at a time: a file's cut is usually decided long before the maximum.
        for upto in [*range(len(self.probs) + STEP_WINDOWS, n, STEP_WINDOWS), n]:
            self._extend(audio, upto)
            cut = decide(vad_chunks(self.probs), upto, past_max and upto == n)
            if cut is not None:
                return self.start + cut
        return None

    def _extend(self, audio: np.ndarray, n: int) -> None:
        """Speech probabilities of the first `n` VAD windows from the stretch's start."""
        from faster_whisper.vad import get_vad_model

        session = get_vad_model().session
        probs = [self.probs]
        for first in range(len(self.probs), n, config.STRETCH_VAD_BATCH):
            last = min(first + config.STRETCH_VAD_BATCH, n)
            a = self.start + first * VAD_WINDOW
            windows = audio[a : self.start + last * VAD_WINDOW].astype(np.float32).reshape(-1, VAD_WINDOW)
            context = np.zeros((len(windows), VAD_CONTEXT), np.float32)
            context[1:] = windows[:-1, -VAD_CONTEXT:]
            if first:
                context[0] = audio[a - VAD_CONTEXT : a]
            out, h, c = session.run(None, {"input": np.concatenate([context, windows], 1), "h": self.state[0], "c": self.state[1]})
            self.state = np.stack([h, c])
            probs.append(np.asarray(out, np.float32).reshape(-1))
        self.probs = np.concatenate(probs)


def cuts(audio: np.ndarray) -> list[int]:
    """Every cut (sample index) that the audio so far decides, in order."""
    return Cutter().cuts(audio)


def timeline_end(audio_end_s: float, duration_s: float) -> float:
    """Where the last stretch ends: the audio's end, or the video's when its picture goes on longer.
    Within a millisecond the audio's end wins, so a stream can close a stretch at its cut by sending
    the cut's time, rounded to float32, as the duration."""
    return duration_s if duration_s > audio_end_s + 1e-3 else audio_end_s
