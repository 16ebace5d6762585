"""Group emotion's baseline: the group valence that follows from the per-person results.

Each (person, segment) pair's scores are mapped onto GROUP_LABELS by the fixed valence of each label
(config.LABEL_VALENCE), and a segment's group scores are the mean over the persons seen in it,
weighted by their presence (how many of the segment's sampled frames show them). A segment where no
one is seen takes its own scores' valence (voice and words). The whole video: the segments'
duration-weighted mean, as its emotion scores are. Numpy only.
"""

from __future__ import annotations

import numpy as np

from . import config
from .segments import aggregate_scores, frame_segments


def valence_of(name: str) -> str:
    """The valence (one of GROUP_LABELS) of a served label or of a corpus class (mapped to its label first)."""
    return config.LABEL_VALENCE.get(config.CLASS_TO_LABEL.get(name, name), "negative")


def valence_map(labels: tuple[str, ...] = config.LABELS) -> np.ndarray:
    """[len(labels), 3] 0/1 matrix sending each label to its valence in GROUP_LABELS."""
    matrix = np.zeros((len(labels), len(config.GROUP_LABELS)), np.float32)
    for i, label in enumerate(labels):
        matrix[i, config.GROUP_LABELS.index(valence_of(label))] = 1.0
    return matrix


def as_distribution(scores: np.ndarray) -> np.ndarray:
    """Rows that sum to 1 (a multi-label set's sigmoids are not a distribution; all-zero rows stay zero)."""
    totals = scores.sum(1, keepdims=True)
    return np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 0)


def group_baseline(
    pairs: np.ndarray,
    pair_scores: np.ndarray,
    face_times: np.ndarray,
    face_person: np.ndarray,
    segment_scores: np.ndarray,
    segment_times: np.ndarray,
    labels: tuple[str, ...] = config.LABELS,
) -> tuple[np.ndarray, np.ndarray]:
    """PERSON_SEGMENTS [R, 2] (person, segment) with their scores [R, C], the face rows (FACE_TIMES,
    FACE_PERSON), SEGMENT_SCORES [S, C] and SEGMENT_TIMES [S, 2] -> group scores per segment [S, 3]
    and for the whole video [3], over GROUP_LABELS."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    segment_times = np.asarray(segment_times, np.float32).reshape(-1, 2)
    to_valence = valence_map(labels)
    person = np.asarray(face_person, np.int64).reshape(-1)
    owners = frame_segments(np.asarray(face_times, np.float32).reshape(-1), segment_times)
    seen = (owners >= 0) & (person >= 0)
    presence = {}
    for p, s in zip(person[seen].tolist(), owners[seen].tolist()):
        presence[(p, s)] = presence.get((p, s), 0) + 1
    group = as_distribution(np.asarray(segment_scores, np.float32)) @ to_valence  # where no one is seen
    weighted = np.zeros_like(group)
    totals = np.zeros(len(group), np.float32)
    valences = as_distribution(np.asarray(pair_scores, np.float32).reshape(len(pairs), -1)) @ to_valence
    for (p, s), valence in zip(pairs.tolist(), valences):
        weight = presence.get((p, s), 0)
        if s >= 0 and weight:
            weighted[s] += weight * valence
            totals[s] += weight
    people = totals > 0
    group[people] = weighted[people] / totals[people, None]
    return group.astype(np.float32), aggregate_scores(group, segment_times).astype(np.float32)
