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
from .modalities import FACES, SPEAKER, Modality
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
    speakers: np.ndarray,
    inputs: dict[str, np.ndarray],
    entries: tuple[Modality, ...],
) -> dict[str, np.ndarray]:
    """The fusion's inputs once more, on "virtual segments": one per (person, segment) pair where the
    person is seen, ordered by segment, then person.

    PERSON_SEGMENTS [R, 2] int64 (person, segment); then, for each modality (fv2es.modalities), the
    fusion inputs a person's timeline replaces (`Modality.person_tensors`), by its person_rows rule,
    from `inputs` (the modality's fusion inputs by name; the face rows' modality needs none):
    - FACES: PERSON_<M>_SEGMENT [N], the pair of each face row (-1: outside every segment, or a
      placeholder row);
    - SPEAKER, sequence: PERSON_<M>_SEGMENT, the pair of each row's segment's speaker (`speakers`,
      segment_speakers; -1 where the segment has none, or for a -1 row): the voice goes to the person
      who speaks;
    - SPEAKER, per segment: PERSON_<M>_FEATURES [R, D], the pair's segment's row, and
      PERSON_<M>_PRESENT [R], present where the segment's is and the pair's person speaks there (the
      words are theirs); EVERYONE: present where the segment's is.

    With no pair at all (no face in any segment), one placeholder pair (-1, -1): one face row, the
    first placeholder row (person -1; face_crop gives one when no face is found) or else the first
    row, is its face row, so the fusion gets one segment with a face; no other rows (zeros, absent).
    `person_scores` drops it.
    """
    person = np.asarray(face_person, np.int64).reshape(-1)
    owners = _face_segments(face_times, person, segment_times)
    speakers = np.asarray(speakers, np.int64).reshape(-1)
    seen = owners >= 0
    n_segments = len(speakers)
    width = int(person.max(initial=-1)) + 1
    keys = owners[seen] * width + person[seen]  # pairs ordered by segment, then person
    unique, inverse = np.unique(keys, return_inverse=True)
    pairs = np.stack([unique % max(width, 1), unique // max(width, 1)], axis=1).astype(np.int64).reshape(-1, 2)
    face_pair = np.full(len(person), -1, np.int64)
    face_pair[seen] = inverse.reshape(-1)
    placeholder = len(pairs) == 0
    if placeholder:
        if len(person):
            placeholders = np.flatnonzero(person < 0)
            face_pair[placeholders[0] if len(placeholders) else 0] = 0
        pairs = np.array([PLACEHOLDER_PAIR], np.int64)
    # The pair of each segment's speaker (-1: no speaker, or not seen there).
    speaker_pair = np.full(n_segments, -1, np.int64)
    for index, (p, s) in enumerate(pairs):
        if s >= 0 and speakers[s] == p:
            speaker_pair[s] = index
    out = {"PERSON_SEGMENTS": pairs}
    for m in entries:
        person_names = m.person_tensors()
        if m.person_rows == FACES:
            out[person_names[m.index]] = face_pair
        elif m.sequence:
            index = np.asarray(inputs[m.index], np.int64).reshape(-1)
            owner = np.where(index >= 0, speaker_pair[np.clip(index, 0, max(n_segments - 1, 0))], -1)
            out[person_names[m.index]] = (np.full(len(index), -1) if placeholder else owner).astype(np.int64)
        else:
            features = np.asarray(inputs[m.features], np.float32).reshape(n_segments, -1)
            present = np.asarray(inputs[m.index], bool).reshape(-1)
            if placeholder:
                out[person_names[m.features]] = np.zeros((1, features.shape[1]), np.float32)
                out[person_names[m.index]] = np.zeros(1, bool)
                continue
            out[person_names[m.features]] = features[pairs[:, 1]]
            speaks = speakers[pairs[:, 1]] == pairs[:, 0] if m.person_rows == SPEAKER else np.ones(len(pairs), bool)
            out[person_names[m.index]] = present[pairs[:, 1]] & speaks
    return out


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
