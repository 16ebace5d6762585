"""Cutting the timeline into segments (FV2ES: short, timeline-aligned pieces of the video).

Speech segments from ASR are kept as they are (split when very long); the stretches between them
are cut into fixed windows. Every segment is at least MIN_SEGMENT_S long unless the whole video is
shorter, so the number of segments per video is bounded by its duration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import config


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str = ""

    @property
    def has_speech(self) -> bool:
        return bool(self.text.strip())

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentRule:
    """How the timeline is cut: speech segments split past `max_segment_s`, fixed windows of `window_s`
    where nobody speaks, every piece at least `min_segment_s`. From config.py only, not a deployment's
    parameter: the encoders' batch sizes and the input checks follow from these lengths."""

    window_s: float = config.WINDOW_S
    min_segment_s: float = config.MIN_SEGMENT_S
    max_segment_s: float = config.MAX_SEGMENT_S

    @property
    def longest_s(self) -> float:
        """The longest a segment can be: a split speech segment or a window, with short neighbours merged in."""
        return max(self.max_segment_s, self.window_s) + 2 * self.min_segment_s


SEGMENT_RULE = SegmentRule()


def segment_timeline(speech: list[Segment], duration: float, rule: SegmentRule = SEGMENT_RULE) -> list[Segment]:
    """Covers [0, duration] with speech segments and fixed windows, in time order, no overlap."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    cleaned = _clip_and_sort(speech, duration)
    pieces: list[Segment] = []
    cursor = 0.0
    for seg in cleaned:
        if seg.start - cursor > 0:
            pieces.extend(_windows(cursor, seg.start, rule.window_s))
        for part in _split(seg, rule.max_segment_s):
            pieces.append(part)
        cursor = seg.end
    if duration - cursor > 0:
        pieces.extend(_windows(cursor, duration, rule.window_s))
    return _merge_short(pieces, rule.min_segment_s)


def _clip_and_sort(speech: list[Segment], duration: float) -> list[Segment]:
    out: list[Segment] = []
    for seg in sorted(speech, key=lambda s: s.start):
        start = max(0.0, seg.start, out[-1].end if out else 0.0)
        end = min(duration, seg.end)
        if end > start and seg.text.strip():
            out.append(Segment(start, end, seg.text.strip()))
    return out


def _windows(start: float, end: float, window_s: float) -> list[Segment]:
    n = max(1, math.ceil((end - start) / window_s - 1e-9))
    step = (end - start) / n  # equal windows rather than a short remainder
    return [Segment(start + i * step, start + (i + 1) * step if i < n - 1 else end) for i in range(n)]


def _split(seg: Segment, max_segment_s: float) -> list[Segment]:
    n = max(1, math.ceil(seg.duration / max_segment_s - 1e-9))
    if n == 1:
        return [seg]
    # The transcript cannot be cut by time without word timings: each part keeps the whole text.
    step = seg.duration / n
    return [Segment(seg.start + i * step, seg.end if i == n - 1 else seg.start + (i + 1) * step, seg.text) for i in range(n)]


def _merge_short(pieces: list[Segment], min_segment_s: float) -> list[Segment]:
    """Joins each piece shorter than min_segment_s to its shorter neighbour."""
    pieces = list(pieces)
    i = 0
    while len(pieces) > 1 and i < len(pieces):
        if pieces[i].duration >= min_segment_s:
            i += 1
            continue
        use_next = i == 0 or (i + 1 < len(pieces) and pieces[i + 1].duration < pieces[i - 1].duration)
        j = i if use_next else i - 1
        pieces[j : j + 2] = [_join(pieces[j], pieces[j + 1])]
        i = j
    return pieces


def _join(a: Segment, b: Segment) -> Segment:
    texts = [a.text] if a.text == b.text else [t for t in (a.text, b.text) if t]
    return Segment(a.start, b.end, " ".join(texts))


def frame_segments(frame_times: np.ndarray, segment_times: np.ndarray) -> np.ndarray:
    """Index of the segment each frame falls in ([start, end)), or -1 when it falls in none."""
    starts, ends = segment_times[:, 0], segment_times[:, 1]
    index = np.searchsorted(starts, frame_times, side="right") - 1
    inside = (index >= 0) & (frame_times < ends[np.clip(index, 0, None)])
    return np.where(inside, index, -1).astype(np.int64)


def aggregate_scores(segment_scores: np.ndarray, segment_times: np.ndarray) -> np.ndarray:
    """Whole-video scores: the mean of segment scores weighted by segment duration."""
    weights = np.clip(segment_times[:, 1] - segment_times[:, 0], 0, None)
    if weights.sum() <= 0:
        weights = np.ones(len(segment_scores))
    return (segment_scores * weights[:, None]).sum(0) / weights.sum()
