"""Group emotion: the baseline (fv2es/group.py: per-person scores mapped to valence, weighted by presence)
and the group model (fv2es.models.group), alone and served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fv2es import checks, config, models, modalities
from fv2es.errors import InputError
from fv2es.group import group_baseline, valence_map
from fv2es.models.group import GroupEmotion, segment_of
from fv2es.segments import aggregate_scores, frame_segments

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


# --- The group model (fv2es.models.group) and its served outputs ---------------------------------


def only_segment(inputs: dict, k: int) -> dict:
    """The inputs of segment k alone: its time span, and only the rows that fall in it."""
    times = inputs["SEGMENT_TIMES"][k : k + 1]
    faces = segment_of(inputs["FACE_TIMES"], inputs["SEGMENT_TIMES"]) == k
    frames = segment_of(inputs["SCENE_TIMES"], inputs["SEGMENT_TIMES"]) == k
    audio = modalities.by_name("audio")
    speech = inputs[audio.index] == k
    return {"SEGMENT_TIMES": times, "VISUAL_FEATURES": inputs["VISUAL_FEATURES"][faces], "FACE_TIMES": inputs["FACE_TIMES"][faces],
            "SCENE": inputs["SCENE"][frames], "SCENE_TIMES": inputs["SCENE_TIMES"][frames],
            audio.features: inputs[audio.features][speech], audio.index: torch.zeros(int(speech.sum()), dtype=torch.long)}


def test_a_segments_group_answer_depends_on_its_own_rows_only():
    """What makes the live stream's answers the whole file's: a stretch sends its segments' rows only."""
    torch.manual_seed(0)
    model = torch.jit.script(GroupEmotion().eval())
    inputs = models.group_example(4)
    with torch.no_grad():
        scores, video = model(inputs)
        assert scores.shape == (4, 3) and torch.allclose(scores.sum(1), torch.ones(4))
        for k in range(4):
            alone, _ = model(only_segment(inputs, k))
            torch.testing.assert_close(alone[0], scores[k], atol=1e-5, rtol=0)
    expected = aggregate_scores(scores.detach().numpy(), inputs["SEGMENT_TIMES"].numpy())
    np.testing.assert_allclose(video.detach().numpy(), expected, atol=1e-6)


def test_faces_and_frames_fall_in_segments_as_frame_segments_places_them():
    times = torch.tensor([-1.0, 0.0, 0.99, 1.0, 2.5, 3.0, 3.5, 7.0, 9.0])
    segment_times = torch.tensor([[0.0, 1.0], [1.0, 3.0], [3.5, 8.0]])
    np.testing.assert_array_equal(segment_of(times, segment_times).numpy(), frame_segments(times.numpy(), segment_times.numpy()))


@pytest.mark.parametrize("change, message", [
    (lambda x: x.update(FACE_TIMES=x["FACE_TIMES"][:-1]), "FACE_TIMES has"),
    (lambda x: x.update(SCENE=x["SCENE"][:, :, :16]), "SCENE has shape"),
    (lambda x: x["SCENE"].__setitem__((0, 0, 0, 0), np.nan), "SCENE holds NaN"),
    (lambda x: x.update(SCENE_TIMES=np.full_like(x["SCENE_TIMES"], 1e9)), "SCENE_TIMES holds"),
    (lambda x: x[modalities.by_name("audio").index].__setitem__(0, 99), "holds segment 99"),
    (lambda x: x.update(FACE_TIMES=np.full(400, 0.5, np.float32), VISUAL_FEATURES=np.zeros((400, config.FEATURE_DIM), np.float32)),
     "faces and frames, over the limit"),
])
def test_bad_group_inputs_are_refused_with_what_is_wrong(change, message):
    inputs = {k: v.numpy().copy() for k, v in models.group_example(3).items()}
    change(inputs)
    audio, visual = modalities.by_name("audio"), modalities.by_name("visual")
    with pytest.raises(InputError, match=message):
        checks.group_inputs(inputs, audio, visual, checks.Limits())


def test_a_scene_with_two_people_gets_a_group_answer_from_the_server(client):
    from fv2es_build import synth
    from fv2es_client.client import GROUP_LABELS

    assert GROUP_LABELS == config.GROUP_LABELS  # the client's copy of the server's group_labels.txt
    video, _ = synth.two_person_video()
    result = client.analyze(video)
    assert result.group is not None and set(result.group) == set(config.GROUP_LABELS)
    assert abs(sum(result.group.values()) - 1) < 1e-4
    rows = np.array([[s.group[g] for g in config.GROUP_LABELS] for s in result.segments])
    np.testing.assert_allclose(rows.sum(1), 1, atol=1e-4)
    times = np.array([[s.start, s.end] for s in result.segments], np.float32)
    np.testing.assert_allclose([result.group[g] for g in config.GROUP_LABELS], aggregate_scores(rows, times), atol=1e-5)
    assert result.to_dict()["group"]["emotion"] == max(result.group, key=result.group.get)
