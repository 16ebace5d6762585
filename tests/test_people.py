"""One timeline per person, without a server: faces tracked into persons (fv2es.faces.FaceRows), their
mouth motion, the speaker of each segment and the per-person rows and scores (fv2es.people), on the
generated two-person clip (fv2es_build.synth.two_person_video) with the real MTCNN detector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SAMPLE
from fv2es import config, modalities
from fv2es.faces import FaceRows, crop_face, make_face_detector, normalise_faces, video_faces
from fv2es.media import decode_audio, sample_frames
from fv2es.people import person_rows, person_scores, segment_speakers
from fv2es.stages import face_rows
from fv2es_build import synth

WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def detector():
    return make_face_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def clip():
    return synth.two_person_video(width=WIDTH, height=HEIGHT)


@pytest.fixture(scope="module")
def frames(clip):
    return list(sample_frames(clip[0]))


@pytest.fixture(scope="module")
def rows(frames, detector):
    return video_faces(frames, detector, boxes=True)


def side_of(rows) -> np.ndarray:
    """"left" or "right" for each row: where its box's centre is."""
    centre = rows["FACE_BOXES"][:, 0] + rows["FACE_BOXES"][:, 2] / 2
    return np.where(centre < WIDTH / 2, "left", "right")


def person_on(rows, side: str) -> int:
    (person,) = np.unique(rows["FACE_PERSON"][side_of(rows) == side])
    return int(person)


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def test_each_face_is_one_person_for_the_whole_clip(frames, rows):
    assert len(frames) >= 20
    # Both faces in every sampled frame, one main face per frame.
    assert len(rows["FACE_TIMES"]) == 2 * len(frames) and rows["FACE_MAIN"].sum() == len(frames)
    np.testing.assert_array_equal(np.unique(rows["FACE_TIMES"]), np.array([t for t, _ in frames], np.float32))
    sides = side_of(rows)
    assert sorted(np.unique(rows["FACE_PERSON"])) == [0, 1]
    # Each id stays on its side of the frame (person_on fails when a side has two ids).
    assert {person_on(rows, "left"), person_on(rows, "right")} == {0, 1}
    for t in np.unique(rows["FACE_TIMES"]):
        assert sorted(sides[rows["FACE_TIMES"] == t]) == ["left", "right"]
    # Ids in order of first appearance: the first frame's main (largest) face is person 0.
    assert rows["FACE_PERSON"][0] == 0 and rows["FACE_MAIN"][0]


def test_a_person_who_leaves_and_comes_back_elsewhere_keeps_their_id(detector):
    # 3 s each: the astronaut alone on the left; nobody (longer than PERSON_TRACK_GAP_S); Grace Hopper
    # alone where the astronaut was (a new person, not the astronaut); Grace Hopper there and the
    # astronaut back, on the right. Only appearance can tell who is who.
    n = int(3.0 / config.FRAME_INTERVAL_S)
    assert n * config.FRAME_INTERVAL_S > config.PERSON_TRACK_GAP_S
    layouts = [(0, None)] * n + [(None, None)] * n + [(1, None)] * n + [(1, 0)] * 2 * n
    rgb = synth.two_person_frames(np.zeros((len(layouts), 2)), WIDTH, HEIGHT, layouts=layouts)
    frames = [(i * config.FRAME_INTERVAL_S, grey(f)) for i, f in enumerate(rgb)]
    rows = video_faces(frames, detector, boxes=True)
    phase = np.minimum((rows["FACE_TIMES"] / config.FRAME_INTERVAL_S).round().astype(int) // n, 3)
    sides, persons = side_of(rows), rows["FACE_PERSON"]
    # A face that appears is found by the next whole-frame search, and tracked from the next batch on.
    assert np.bincount(phase).tolist()[:3] == [n, 0, n]
    assert ((phase == 3) & (sides == "left")).sum() == 2 * n and ((phase == 3) & (sides == "right")).sum() >= n
    assert set(persons[phase == 0]) == {0} and set(sides[phase == 0]) == {"left"}
    assert set(persons[phase == 2]) == {1} and set(sides[phase == 2]) == {"left"}  # not the astronaut
    assert set(persons[(phase == 3) & (sides == "left")]) == {1}
    assert set(persons[(phase == 3) & (sides == "right")]) == {0}  # the astronaut, re-identified elsewhere
    # Mouth motion is measured from each person's second face on, and not across the gap.
    assert (rows["FACE_MOUTH"][persons == 0] == -1).sum() == 2 and (rows["FACE_MOUTH"][persons == 1] == -1).sum() == 1


def test_a_face_that_appears_is_tracked_from_the_next_batch_on(detector):
    # The astronaut alone for one batch, then Grace Hopper beside her: the next whole-frame search
    # finds her, and from the next batch on she is tracked in every frame like the astronaut.
    size = detector.batch_size
    layouts = [(0, None)] * size + [(0, 1)] * 2 * size
    rgb = synth.two_person_frames(np.zeros((len(layouts), 2)), WIDTH, HEIGHT, layouts=layouts)
    frames = [(i * config.FRAME_INTERVAL_S, grey(f)) for i, f in enumerate(rgb)]
    rows = video_faces(frames, detector, boxes=True)
    frame = (rows["FACE_TIMES"] / config.FRAME_INTERVAL_S).round().astype(int)
    sides, persons = side_of(rows), rows["FACE_PERSON"]
    assert set(persons[sides == "left"]) == {0} and set(persons[sides == "right"]) == {1}
    assert (sides[frame < size] == "left").all() and (frame == np.arange(len(frames))[:, None]).any(1).all()
    assert 1 <= (sides[(frame >= size) & (frame < 2 * size)] == "right").sum() < size  # found by whole-frame searches
    assert sorted(frame[(frame >= 2 * size) & (sides == "right")]) == list(range(2 * size, 3 * size))


def test_the_speaking_face_moves_its_mouth_and_the_silent_one_does_not(clip, rows):
    _, truth = clip
    times, persons, mouth = rows["FACE_TIMES"], rows["FACE_PERSON"], rows["FACE_MOUTH"]
    # -1 exactly on each person's first row.
    assert [int(i) for i in np.flatnonzero(mouth < 0)] == [int(np.argmax(persons == p)) for p in (0, 1)]
    for turn in truth:
        during = (times > turn.start) & (times < turn.end) & (mouth >= 0)
        speaker, silent = person_on(rows, turn.side), person_on(rows, "right" if turn.side == "left" else "left")
        speaking = mouth[during & (persons == speaker)]
        still = mouth[during & (persons == silent)]
        assert len(speaking) >= 3 and len(still) >= 3
        assert speaking.mean() > 2.0 and speaking.mean() > 3 * max(still.mean(), 0.1), (turn, speaking, still)


def test_segment_speakers_picks_who_speaks(clip, rows):
    data, truth = clip
    _, duration = decode_audio(data)
    # The timeline cut at the sentences (the speech segments ASR would give) and the pauses between them.
    bounds = [0.0] + [v for turn in truth for v in (turn.start, turn.end)] + [duration]
    segment_times = np.array(list(zip(bounds, bounds[1:])), np.float32)
    has_speech = np.arange(len(segment_times)) % 2 == 1
    speakers = segment_speakers(rows["FACE_TIMES"], rows["FACE_PERSON"], rows["FACE_MOUTH"], segment_times, has_speech)
    expected = [-1] + [v for turn in truth for v in (person_on(rows, turn.side), -1)]
    assert speakers.tolist() == expected
    assert speakers.dtype == np.int64


def test_segment_speakers_rules():
    times = np.array([0.1, 0.1, 0.6, 0.6, 1.1, 1.6, 1.6, 2.1, 2.1], np.float32)
    person = np.array([0, 1, 0, 1, 0, 0, 1, 0, 1])
    mouth = np.array([-1, -1, 6, 2, 0.5, 3, 2.5, 4, -1], np.float32)
    segments = np.array([[0, 1], [1, 1.5], [1.5, 2], [2, 2.5], [2.5, 3]], np.float32)
    speech = np.array([True, True, True, True, True])
    got = segment_speakers(times, person, mouth, segments, speech)
    # 6 >= 1.5 x 2; the only person seen; 3 < 1.5 x 2.5; person 1 never measured; nobody seen
    assert got.tolist() == [0, 0, -1, -1, -1]
    assert segment_speakers(times, person, mouth, segments, ~speech).tolist() == [-1] * 5
    assert segment_speakers(times, person, mouth, segments, speech, mouth_ratio=1.1).tolist() == [0, 0, 0, -1, -1]
    # Placeholder rows (person -1, time -1) are nobody.
    assert segment_speakers(np.array([-1.0], np.float32), np.array([-1]), np.array([-1.0], np.float32),
                            segments, speech).tolist() == [-1] * 5


def test_person_rows_and_scores():
    times = np.array([0.2, 0.2, 0.7, 1.2, 1.7, 9.0], np.float32)
    person = np.array([0, 1, 0, 1, 1, 0])
    segments = np.array([[0, 1], [1, 1.5], [1.5, 3]], np.float32)
    speech = np.array([True, True, False])
    speakers = np.array([1, -1, -1])
    audio_segment = np.array([0, 0, 1, -1, 2])
    text = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = person_rows(times, person, segments, speakers,
                      {"AUDIO_SEGMENT": audio_segment, "TEXT_FEATURES": text, "TEXT_PRESENT": speech}, modalities.modalities())
    assert out["PERSON_SEGMENTS"].tolist() == [[0, 0], [1, 0], [1, 1], [1, 2]]
    assert out["PERSON_VISUAL_SEGMENT"].tolist() == [0, 1, 0, 2, 3, -1]  # the last row is after every segment
    assert out["PERSON_AUDIO_SEGMENT"].tolist() == [1, 1, -1, -1, -1]  # segment 0's voice is its speaker's
    np.testing.assert_array_equal(out["PERSON_TEXT_FEATURES"], text[[0, 0, 1, 2]])
    assert out["PERSON_TEXT_PRESENT"].tolist() == [False, True, False, False]
    assert {k: v.dtype for k, v in out.items()} == {
        "PERSON_SEGMENTS": np.int64, "PERSON_VISUAL_SEGMENT": np.int64, "PERSON_AUDIO_SEGMENT": np.int64,
        "PERSON_TEXT_FEATURES": np.float32, "PERSON_TEXT_PRESENT": np.bool_}

    scores = np.array([[1, 0], [0, 1], [0.5, 0.5], [1, 0]], np.float32)
    pairs, pair_scores, overall = person_scores(out["PERSON_SEGMENTS"], scores, segments)
    np.testing.assert_array_equal(pairs, out["PERSON_SEGMENTS"])
    np.testing.assert_array_equal(pair_scores, scores)
    # person 1: segments of 1, 0.5 and 1.5 s -> (0 x 1 + 0.5 x 0.5 + 1 x 1.5) / 3, ...
    np.testing.assert_allclose(overall, [[1, 0], [1.75 / 3, 1.25 / 3]], rtol=1e-6)
    assert overall.dtype == np.float32


def test_no_face_gives_one_placeholder_pair_that_the_aggregation_drops(detector):
    faces = face_rows(video_faces([], detector))  # no frame: face_crop's placeholder row
    segments = np.array([[0, 2], [2, 4]], np.float32)
    speech = np.array([True, False])
    speakers = segment_speakers(faces["FACE_TIMES"], faces["FACE_PERSON"], faces["FACE_MOUTH"], segments, speech)
    assert speakers.tolist() == [-1, -1]
    out = person_rows(faces["FACE_TIMES"], faces["FACE_PERSON"], segments, speakers,
                      {"AUDIO_SEGMENT": np.array([0, 1, -1]), "TEXT_FEATURES": np.ones((2, 3), np.float32), "TEXT_PRESENT": speech},
                      modalities.modalities())
    assert out["PERSON_SEGMENTS"].tolist() == [[-1, -1]]
    assert out["PERSON_VISUAL_SEGMENT"].tolist() == [0]  # the fusion gets one segment with a face
    assert out["PERSON_AUDIO_SEGMENT"].tolist() == [-1, -1, -1]
    assert out["PERSON_TEXT_FEATURES"].shape == (1, 3) and out["PERSON_TEXT_PRESENT"].tolist() == [False]
    pairs, pair_scores, overall = person_scores(out["PERSON_SEGMENTS"], np.full((1, 7), 1 / 7, np.float32), segments)
    assert pairs.shape == (0, 2) and pair_scores.shape == (0, 7) and overall.shape == (0, 7)


def test_frames_fed_one_at_a_time_give_the_whole_files_rows(frames, rows, detector):
    assert detector.batch_size == config.MTCNN_BATCH < len(frames)
    faces = FaceRows(detector, boxes=True)
    assert faces.done_until == -np.inf
    parts, given = [], []
    for i, (t, g) in enumerate(frames):
        part = faces.add(t, g)
        given.append(part is not None)
        if part is not None:
            parts.append(part)
        # Returned so far: exactly the whole file's rows of the frames before done_until.
        so_far = np.concatenate([p["FACE_TIMES"] for p in parts]) if parts else np.zeros(0, np.float32)
        np.testing.assert_array_equal(so_far, rows["FACE_TIMES"][rows["FACE_TIMES"] < faces.done_until])
        assert faces.done_until > (t if part is not None else -np.inf)
    # Rows come out when a batch is complete.
    completing = [i for i in range(len(frames)) if (i + 1) % detector.batch_size == 0]
    assert [i for i, g in enumerate(given) if g] == completing
    last = faces.finish()
    assert (last is None) == (len(frames) % detector.batch_size == 0)
    parts += [last] if last is not None else []
    for key in rows:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), rows[key], err_msg=key)
    assert faces.finish() is None


def test_a_low_latency_cut_searches_the_frames_before_it_at_once(frames, detector):
    """flush_until (a live stream's low-latency cut): the pending frames before the time are searched
    now, the later ones stay pending; every frame still gets rows once."""
    faces = FaceRows(detector)
    for t, g in frames[:5]:
        assert faces.add(t, g) is None  # a batch is not full yet
    cut = frames[3][0]
    early = faces.flush_until(cut)
    assert early is not None and (early["FACE_TIMES"] < cut).all() and faces.done_until == np.float32(cut)
    assert faces.flush_until(cut) is None
    parts = [early, *[r for r in [faces.add(t, g) for t, g in frames[5:]] + [faces.finish()] if r is not None]]
    main = np.concatenate([p["FACE_TIMES"][p["FACE_MAIN"]] for p in parts])
    assert np.all(np.diff(main) > 0)  # in time order, no frame twice
    assert set(main.tolist()) <= {float(np.float32(t)) for t, _ in frames}


class SingleFaceTracker:
    """The tracker as it was before persons (the largest face only), kept as the reference: the main
    faces of every video must stay exactly what it finds."""

    def __init__(self, detector):
        self.detector, self.previous, self.tracked = detector, None, 0

    def find_batch(self, greys):
        boxes, searched = [None] * len(greys), []
        for i, grey in enumerate(greys):
            if i == 0 and self.previous is None:
                boxes[0] = self.previous = self.detector.largest_faces([grey])[0]
                self.tracked = 0
                continue
            if self.previous is not None and self.tracked < config.FACE_TRACK_FRAMES:
                boxes[i] = self.detector.largest_face(grey, near=self.previous)
                self.tracked += 1
            if boxes[i] is None:
                searched.append(i)
                self.tracked = 0
            else:
                self.previous = boxes[i]
        if searched:
            for i, box in zip(searched, self.detector.largest_faces([greys[i] for i in searched])):
                boxes[i] = box
        self.previous = boxes[-1]
        return boxes


def single_face_boxes(frames, detector) -> list:
    tracker, size = SingleFaceTracker(detector), detector.batch_size
    batches = (tracker.find_batch([g for _, g in frames[i : i + size]]) for i in range(0, len(frames), size))
    return [box for boxes in batches for box in boxes if box is not None]


def test_main_faces_are_the_single_face_trackers(frames, rows, detector):
    main = rows["FACE_MAIN"]
    assert [tuple(b) for b in rows["FACE_BOXES"][main]] == single_face_boxes(frames, detector)
    faceless_middle = [(t, g if i % 5 != 2 else np.full_like(g, 90)) for i, (t, g) in enumerate(frames)]
    again = video_faces(faceless_middle, detector, boxes=True)
    assert [tuple(b) for b in again["FACE_BOXES"][again["FACE_MAIN"]]] == single_face_boxes(faceless_middle, detector)


def test_single_face_videos_cost_one_search_per_frame(detector):
    # The sample (one face): every frame gets exactly one search, a region search near the face or a
    # whole-frame search (after a miss, and every FACE_TRACK_FRAMES frames), as before there were
    # persons; and its rows are the single-face tracker's.
    calls = {"region": 0, "whole": 0}

    class Counting:
        batch_size = detector.batch_size

        def largest_face(self, grey, near=None):
            calls["region" if near is not None else "whole"] += 1
            return detector.largest_face(grey, near=near)

        def all_faces(self, greys):
            calls["whole"] += len(greys)
            return detector.all_faces(greys)

    frames = list(sample_frames(SAMPLE.read_bytes()))
    rows = video_faces(frames, Counting(), boxes=True)
    assert calls["region"] + calls["whole"] == len(frames)
    assert calls["whole"] <= len(frames) / (config.FACE_TRACK_FRAMES + 1) + 2
    assert rows["FACE_MAIN"].all() and set(rows["FACE_PERSON"]) == {0}
    boxes = single_face_boxes(frames, detector)
    assert [tuple(b) for b in rows["FACE_BOXES"]] == boxes and len(boxes) == len(frames)
    crops = [crop_face(g, b) for (_, g), b in zip(frames, boxes)]
    np.testing.assert_array_equal(rows["FACES"], normalise_faces(np.stack(crops)))
    np.testing.assert_array_equal(rows["FACE_TIMES"], np.array([t for t, _ in frames], np.float32))


@pytest.mark.parametrize("container_format", ["mpegts", "matroska"])
def test_two_person_clip_in_stream_containers(container_format, frames):
    data, truth = synth.two_person_video(turns=synth.TWO_PERSON_TURNS[:2], container_format=container_format)
    assert [t.side for t in truth] == ["left", "right"] and truth[0].end < truth[1].start
    _, duration = decode_audio(data)
    sampled = list(sample_frames(data))
    assert duration > truth[1].end and abs(len(sampled) - duration / config.FRAME_INTERVAL_S) <= 1.5
    assert sampled[0][1].shape == frames[0][1].shape
