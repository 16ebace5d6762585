"""One timeline per person: who speaks in each segment, the (person, segment) pairs the fusion scores,
and each person's overall scores. Numpy only (no torch): the `people` and `people_aggregate` models
and the live-stream model call these.

The faces' persons come from fv2es.faces (FaceRows: FACE_PERSON, 0, 1, 2, ... in order of first
appearance, -1 for face_crop's placeholder row; FACE_MOUTH, -1 where not measured). Rows are mapped
to segments with `segments.frame_segments` ([start, end), -1 outside every segment).
"""

from __future__ import annotations

import numpy as np

from . import config
from .segments import aggregate_scores, frame_segments

PLACEHOLDER_PAIR = (-1, -1)  # (person, segment) of the pair that stands in when no face is in any segment


def _face_segments(face_times: np.ndarray, face_person: np.ndarray, segment_times: np.ndarray) -> np.ndarray:
    """The segment of each face row; -1 for rows outside every segment and for placeholder rows (person -1)."""
    face_times = np.asarray(face_times, np.float32).reshape(-1)
    segment_times = np.asarray(segment_times, np.float32).reshape(-1, 2)
    owners = frame_segments(face_times, segment_times)
    return np.where(np.asarray(face_person).reshape(-1) >= 0, owners, -1).astype(np.int64)


def segment_speakers(
    face_times: np.ndarray,
    face_person: np.ndarray,
    face_mouth: np.ndarray,
    segment_times: np.ndarray,
    segment_has_speech: np.ndarray,
    *,
    mouth_ratio: float = config.SPEAKER_MOUTH_RATIO,
) -> np.ndarray:
    """The person who speaks in each segment, [S] int64; -1: nobody known.

    -1 for a segment without speech or without a face. A segment where one person is seen: that
    person. Several: the one whose mean mouth motion over their rows of the segment (FACE_MOUTH,
    rows without a measure (-1) left out) is positive and at least `mouth_ratio` times every other
    person's there; else -1 (also when another person seen there has no measure at all: they could
    be the speaker)."""
    segment_has_speech = np.asarray(segment_has_speech, bool).reshape(-1)
    person = np.asarray(face_person, np.int64).reshape(-1)
    mouth = np.asarray(face_mouth, np.float32).reshape(-1)
    owners = _face_segments(face_times, person, segment_times)
    speakers = np.full(len(segment_has_speech), -1, np.int64)
    for s in np.flatnonzero(segment_has_speech):
        rows = owners == s
        seen = np.unique(person[rows])
        if len(seen) == 1:
            speakers[s] = seen[0]
        elif len(seen) > 1:
            means = []
            for p in seen:
                measured = mouth[rows & (person == p) & (mouth >= 0)]
                means.append(float(measured.mean()) if len(measured) else np.nan)
            means = np.asarray(means)
            if np.isnan(means).any():
                continue
            best = int(np.argmax(means))
            others = np.delete(means, best)
            if means[best] > 0 and (means[best] >= mouth_ratio * others).all():
                speakers[s] = seen[best]
    return speakers


def person_rows(
    face_times: np.ndarray,
    face_person: np.ndarray,
    segment_times: np.ndarray,
    segment_has_speech: np.ndarray,
    speakers: np.ndarray,
    audio_segment: np.ndarray,
    text_features: np.ndarray,
) -> dict[str, np.ndarray]:
    """The fusion's inputs once more, on "virtual segments": one per (person, segment) pair where the
    person is seen, ordered by segment, then person.

    PERSON_SEGMENTS [R, 2] int64 (person, segment); PERSON_VISUAL_SEGMENT [N] int64: the pair of
    each face row (-1: outside every segment, or a placeholder row); PERSON_AUDIO_SEGMENT [M] int64:
    the pair of each audio row (`audio_segment`: its segment, -1: placeholder), that of the segment's
    speaker (`speakers`, segment_speakers), -1 where the segment has none: the voice goes to the
    person who speaks; PERSON_TEXT_FEATURES [R, D] float32: the pair's segment's text features;
    PERSON_TEXT_PRESENT [R] bool: the pair's person speaks in its segment and the segment has speech
    (the words are theirs).

    With no pair at all (no face in any segment), one placeholder pair (-1, -1): one face row, the
    first placeholder row (person -1; face_crop gives one when no face is found) or else the first
    row, is its visual row, so the fusion gets one segment with a face; no audio row and no text
    (zeros, absent). `person_scores` drops it.
    """
    person = np.asarray(face_person, np.int64).reshape(-1)
    owners = _face_segments(face_times, person, segment_times)
    segment_has_speech = np.asarray(segment_has_speech, bool).reshape(-1)
    speakers = np.asarray(speakers, np.int64).reshape(-1)
    audio_segment = np.asarray(audio_segment, np.int64).reshape(-1)
    text_features = np.asarray(text_features, np.float32)
    text_features = text_features.reshape(len(segment_has_speech), -1)
    seen = owners >= 0
    n_segments = len(segment_has_speech)
    width = int(person.max(initial=-1)) + 1
    keys = owners[seen] * width + person[seen]  # pairs ordered by segment, then person
    unique, inverse = np.unique(keys, return_inverse=True)
    pairs = np.stack([unique % max(width, 1), unique // max(width, 1)], axis=1).astype(np.int64).reshape(-1, 2)
    visual = np.full(len(person), -1, np.int64)
    visual[seen] = inverse.reshape(-1)
    if len(pairs) == 0:
        if len(person):
            placeholders = np.flatnonzero(person < 0)
            visual[placeholders[0] if len(placeholders) else 0] = 0
        return {
            "PERSON_SEGMENTS": np.array([PLACEHOLDER_PAIR], np.int64),
            "PERSON_VISUAL_SEGMENT": visual,
            "PERSON_AUDIO_SEGMENT": np.full(len(audio_segment), -1, np.int64),
            "PERSON_TEXT_FEATURES": np.zeros((1, text_features.shape[1]), np.float32),
            "PERSON_TEXT_PRESENT": np.zeros(1, bool),
        }
    # The pair of each segment's speaker (-1: no speaker, or not seen there).
    speaker_pair = np.full(n_segments, -1, np.int64)
    for index, (p, s) in enumerate(pairs):
        if speakers[s] == p:
            speaker_pair[s] = index
    audio = np.where(audio_segment >= 0, speaker_pair[np.clip(audio_segment, 0, max(n_segments - 1, 0))], -1)
    return {
        "PERSON_SEGMENTS": pairs,
        "PERSON_VISUAL_SEGMENT": visual,
        "PERSON_AUDIO_SEGMENT": audio.astype(np.int64),
        "PERSON_TEXT_FEATURES": text_features[pairs[:, 1]],
        "PERSON_TEXT_PRESENT": (speakers[pairs[:, 1]] == pairs[:, 0]) & segment_has_speech[pairs[:, 1]],
    }


def person_scores(
    person_segments: np.ndarray, pair_scores: np.ndarray, segment_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PERSON_SEGMENTS [R, 2] (person, segment) and the fusion's scores of each pair [R, C] ->
    (PERSON_SEGMENTS, PERSON_SEGMENT_SCORES) without the placeholder pairs (person or segment -1),
    and PERSON_SCORES [P, C] float32: row p, person p's duration-weighted mean over their pairs
    (segments.aggregate_scores), P = the largest person id + 1 (0 rows when there is no pair).

    Person ids are dense by construction (FaceRows numbers persons as they appear, and every face row
    of a video falls in one of its segments), so every row has pairs. A row without any (only when a
    caller gives a subset of a video's pairs, e.g. one stretch of a live stream) is all zeros: no
    scores, which no real scores are (they sum to 1, or are sigmoids of finite logits).
    """
    pairs = np.asarray(person_segments, np.int64).reshape(-1, 2)
    scores = np.asarray(pair_scores, np.float32)
    scores = scores if scores.ndim == 2 else scores.reshape(len(pairs), -1)
    times = np.asarray(segment_times, np.float32).reshape(-1, 2)
    keep = (pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)
    pairs, scores = pairs[keep], scores[keep]
    n_people = int(pairs[:, 0].max(initial=-1)) + 1
    overall = np.zeros((n_people, scores.shape[1]), np.float32)
    for p in range(n_people):
        mine = pairs[:, 0] == p
        if mine.any():
            overall[p] = aggregate_scores(scores[mine], times[pairs[mine, 1]])
    return pairs, scores.astype(np.float32, copy=False), overall
