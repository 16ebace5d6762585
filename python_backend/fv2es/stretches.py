"""Cutting the timeline into stretches of one Whisper window of speech each, so that a live stream
is cut where the whole file is, and the whole file needs (about) as many Whisper windows as in one piece.

Speech recognition and segmentation run on each stretch alone (`stages.asr`; a stretch's speech is
packed into blocks of one 30 s Whisper window, `asr.speech_blocks`). The rule runs Silero VAD
(fv2es.vad), the speech detector ASR uses, over the audio from the stretch's start, its state running
forward; so a window's speech probability depends on nothing after it, and a stream whose audio is
still arriving computes the same probabilities as the whole file. On those probabilities (counted
from the stretch's start):

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

That is the EXACT rule, the whole file's. A live stream in low-latency mode (config.STREAM_MODE)
cuts by LOW_LATENCY instead: at the padded end of every speech chunk as soon as it is closed (by
config.LOW_LATENCY_SILENCE_MS of silence), at config.MAX_SEGMENT_S of speech going on (the same
maximum rule, shorter), and after config.WINDOW_S without any speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config, vad

STEP_WINDOWS = 4 * config.SAMPLE_RATE // vad.WINDOW  # how far a file's audio is searched at a time (4 s)


@dataclass(frozen=True)
class StretchRule:
    speech_s: float  # speech per stretch at most
    max_s: float  # the longest stretch (then cut before the speech going on, else there)
    each_chunk: bool = False  # end at every closed speech chunk
    quiet_s: float = 0.0  # each_chunk: a stretch without speech ends here
    min_silence_ms: int = config.VAD_MIN_SILENCE_MS  # the silence that closes a chunk

    @property
    def speech_samples(self) -> int:
        return round(self.speech_s * config.SAMPLE_RATE)

    @property
    def max_windows(self) -> int:
        return round(self.max_s * config.SAMPLE_RATE) // vad.WINDOW


EXACT = StretchRule(config.STRETCH_SPEECH_S, config.STRETCH_MAX_S)
LOW_LATENCY = StretchRule(config.STRETCH_SPEECH_S, config.MAX_SEGMENT_S, each_chunk=True, quiet_s=config.WINDOW_S,
                          min_silence_ms=config.LOW_LATENCY_SILENCE_MS)
RULES = dict(zip(config.STREAM_MODES, (LOW_LATENCY, EXACT)))


def decide(chunks: list[vad.Chunk], n_windows: int, past_max: bool, rule: StretchRule = EXACT) -> int | None:
    """The cut (samples from the stretch's start) that these chunks decide, or None (not yet)."""
    speech = 0
    for k, chunk in enumerate(chunks):
        speech += chunk.end - chunk.start  # an open chunk's speech so far: it can only grow
        if speech > rule.speech_samples and k > 0:
            return chunks[k - 1].end
        if not chunk.closed:
            break
        if rule.each_chunk:
            return chunk.end
    if rule.each_chunk and not chunks and n_windows * vad.WINDOW >= rule.quiet_s * config.SAMPLE_RATE:
        return round(rule.quiet_s * config.SAMPLE_RATE)  # no speech yet: one window's answer
    if not past_max:
        return None
    if chunks and not chunks[-1].closed and chunks[-1].start > 0:
        return chunks[-1].start  # before the speech going on at the maximum
    return n_windows * vad.WINDOW


class Cutter:
    """The cuts of one timeline, its audio given whole (a file) or growing (a live stream: the
    speech probabilities of the open stretch are kept between calls), by `rule`."""

    def __init__(self, rule: StretchRule = EXACT):
        self.rule = rule
        self.start = 0  # sample where the open stretch starts
        self.stretch_probs: list[np.ndarray] = []  # each cut stretch's window probabilities (for its ASR), in order
        self._reset()

    def _reset(self) -> None:
        self.detector = vad.Detector()  # the open stretch's speech probabilities

    def cuts(self, audio: np.ndarray) -> list[int]:
        """Every new cut (sample index on `audio`'s timeline) that the audio so far decides."""
        found = []
        while (cut := self._next(audio)) is not None:
            found.append(cut)
            self.stretch_probs.append(self.detector.prefix(audio[self.start :], cut - self.start))
            self.start = cut
            self._reset()
        return found

    def rest(self, audio: np.ndarray) -> np.ndarray:
        """The open stretch's window probabilities up to the audio's end (a file's, or a stream that
        ended): its last window padded with silence, as vad.probabilities does."""
        stretch = audio[self.start :]
        return self.detector.prefix(stretch, len(stretch))

    def _next(self, audio: np.ndarray) -> int | None:
        stretch = audio[self.start :]
        max_windows = self.rule.max_windows
        past_max = len(stretch) > max_windows * vad.WINDOW
        n = max_windows if past_max else len(stretch) // vad.WINDOW
        # A few seconds at a time: a file's cut is usually decided long before the maximum. Cuts at
        # each chunk: window by window, so that they fall where they would with the audio arriving
        # in any pieces (the first decision, not one of a later look).
        step = 1 if self.rule.each_chunk else STEP_WINDOWS
        for upto in [*range(len(self.detector.probs) + step, n, step), n]:
            probs = self.detector.extend(stretch, upto)
            cut = decide(vad.chunks(probs, min_silence_ms=self.rule.min_silence_ms), upto, past_max and upto == n, self.rule)
            if cut is not None:
                return self.start + cut
        return None


def cuts(audio: np.ndarray) -> list[int]:
    """Every cut (sample index) that the audio so far decides, in order."""
    return Cutter().cuts(audio)


def timeline_end(audio_end_s: float, duration_s: float) -> float:
    """Where the last stretch ends: the audio's end, or the video's when its picture goes on longer.
    Within a millisecond the audio's end wins, so a stream can close a stretch at its cut by sending
    the cut's time, rounded to float32, as the duration."""
    return duration_s if duration_s > audio_end_s + 1e-3 else audio_end_s
