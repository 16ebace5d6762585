"""Cutting the timeline into stretches at pauses, so that a live stream is cut where the whole file is.

Speech recognition and segmentation run on each stretch alone (`stages.asr`). The cut rule decides
each cut from the audio since the stretch's start and a short way past the cut (half a pause), never
from anything later; so the stretches of a stream whose audio is still arriving are the first
stretches of the whole file, and a stretch's segments are final as soon as its cut is known
(`fv2es.serving.stream`). The rule, on frames of STRETCH_FRAME_S counted from the stretch's start:

- a frame is quiet when its RMS is under STRETCH_QUIET_RATIO times the loudest frame of the stretch
  so far (or under STRETCH_QUIET_FLOOR);
- the cut is the first frame boundary at least STRETCH_MIN_S into the stretch with STRETCH_PAUSE_S
  of quiet frames around it (half before, half after);
- without one, the stretch is cut at STRETCH_MAX_S (one Whisper window), once the audio goes on
  past the point where a pause there could have been seen.

Applied to one stretch's audio alone, the rule finds no cut: every frame it looks at is a frame the
whole-file rule looked at before it chose that stretch's end.
"""

from __future__ import annotations

import numpy as np

from . import config

FRAME = round(config.STRETCH_FRAME_S * config.SAMPLE_RATE)  # samples per loudness frame
HALF_PAUSE = max(1, round(config.STRETCH_PAUSE_S / config.STRETCH_FRAME_S / 2))  # quiet frames on each side of a cut
MIN_FRAMES = round(config.STRETCH_MIN_S / config.STRETCH_FRAME_S)
MAX_FRAMES = round(config.STRETCH_MAX_S / config.STRETCH_FRAME_S)


def next_cut(audio: np.ndarray, start: int = 0) -> int | None:
    """The sample index where the stretch starting at `start` ends, or None when the audio so far
    (`audio`, from the timeline's start) cannot tell yet (or the rest is the last stretch)."""
    n = min((len(audio) - start) // FRAME, MAX_FRAMES + HALF_PAUSE)
    if n < MIN_FRAMES + HALF_PAUSE:
        return None
    frames = audio[start : start + n * FRAME].astype(np.float64).reshape(n, FRAME)
    rms = np.sqrt((frames * frames).mean(axis=1))
    quiet = rms < np.maximum(config.STRETCH_QUIET_FLOOR, config.STRETCH_QUIET_RATIO * np.maximum.accumulate(rms))
    # loud_before[i]: loud frames among the first i; a cut at boundary j needs frames j-H .. j+H-1 quiet.
    loud_before = np.concatenate([[0], np.cumsum(~quiet)])
    j = np.arange(MIN_FRAMES, min(MAX_FRAMES, n - HALF_PAUSE) + 1)
    pauses = j[loud_before[j + HALF_PAUSE] == loud_before[j - HALF_PAUSE]]
    if pauses.size:
        return start + int(pauses[0]) * FRAME
    if n >= MAX_FRAMES + HALF_PAUSE:
        return start + MAX_FRAMES * FRAME
    return None


def cuts(audio: np.ndarray, start: int = 0) -> list[int]:
    """Every cut (sample index) after `start` that the audio so far decides, in order."""
    found = []
    while (cut := next_cut(audio, start)) is not None:
        found.append(cut)
        start = cut
    return found


def timeline_end(audio_end_s: float, duration_s: float) -> float:
    """Where the last stretch ends: the audio's end, or the video's when its picture goes on longer.
    Within a millisecond the audio's end wins, so a stream can close a stretch at its cut by sending
    the cut's time, rounded to float32, as the duration."""
    return duration_s if duration_s > audio_end_s + 1e-3 else audio_end_s
