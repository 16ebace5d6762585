"""The group emotion baseline (fv2es/group.py): per-person scores mapped to valence, weighted by presence."""

from __future__ import annotations

import numpy as np
import pytest

from fv2es import config
from fv2es.group import group_baseline, valence_map

V2EM = config.LABEL_SETS["v2em7"]


def one_hot(label: str, labels=V2EM) -> list[float]:
    return [1.0 if name == label else 0.0 for name in labels]


@pytest.mark.parametrize("label_set", sorted(config.LABEL_SETS))
def test_every_label_has_one_valence(label_set):
    matrix = valence_map(config.LABEL_SETS[label_set])
    assert matrix.shape == (len(config.LABEL_SETS[label_set]), 3)
    np.testing.assert_array_equal(matrix.sum(1), 1)


def test_persons_are_weighted_by_presence_and_an_empty_segment_keeps_its_own_scores():
    pairs = np.array([[0, 0], [1, 0], [0, 1]])
    pair_scores = np.array([one_hot("happiness"), one_hot("sadness"),
                            [0.5 * (a + b) for a, b in zip(one_hot("neutral"), one_hot("surprise"))]], np.float32)
    face_times = np.array([0.2, 0.4, 0.6, 0.8, 1.5, 9.0], np.float32)  # the last one after every segment
    face_person = np.array([0, 0, 0, 1, 0, 1])
    segment_scores = np.array([one_hot("neutral"), one_hot("neutral"), one_hot("anger")], np.float32)
    segment_times = np.array([[0, 1], [1, 3], [3, 4]], np.float32)
    per_segment, video = group_baseline(pairs, pair_scores, face_times, face_person, segment_scores, segment_times, V2EM)
    # segment 0: person 0 in three frames (positive), person 1 in one (negative); segment 1: person 0,
    # neutral; segment 2: no one seen, its own scores (anger: negative).
    np.testing.assert_allclose(per_segment, [[0.75, 0, 0.25], [0, 1, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(video, [0.75 / 4, 2 / 4, 1.25 / 4], atol=1e-6)  # durations 1, 2, 1


def test_multi_label_sigmoids_are_normalised_first():
    labels = config.LABEL_SETS["mosei"]
    sigmoids = np.array([[0.9 if name == "happy" else 0.1 for name in labels]], np.float32)
    per_segment, _ = group_baseline(np.array([[0, 0]]), sigmoids, np.array([0.5], np.float32), np.array([0]),
                                    sigmoids, np.array([[0, 1]], np.float32), labels)
    np.testing.assert_allclose(per_segment.sum(1), 1, atol=1e-6)
    assert per_segment[0].argmax() == config.GROUP_LABELS.index("positive")
