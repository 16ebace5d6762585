"""The client's side of "one timeline per person" and of live streams, without a real server.

Parsing of the ensemble's outputs with and without the person outputs, every output format with
people (table, JSON, CSV, plot), the byte sources (a file being written, a capture remuxed to
MPEG-TS), the stream responses, and Fv2esClient.stream and `fv2es-client --stream` end to end
against tests/fake_triton.py: a gRPC server speaking Triton's protocol the way `fv2es_stream` is
specified to answer. The same against the real server is the server's test suite's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ROOT
from fake_triton import ERROR_MARKER, LABELS, FakeTriton, end_arrays, segment_arrays, softmax, strings

from fv2es import config
from fv2es_build import synth
from fv2es_client import Fv2esClient, Fv2esError, ModelNotReadyError, Segment, VideoResult
from fv2es_client.client import PERSON_OUTPUTS, parse_response
from fv2es_client.output import (
    CSV_COLUMNS, CSV_ERROR_COLUMNS, CSV_PEOPLE_COLUMNS, LANE_HEIGHT, LANES_MARGIN, Outcome, format_result, json_document,
    people_cell, plot_timelines, write_csv,
)
from fv2es_client.sources import capture_chunks, done_marker, file_chunks, growing_file_chunks, source_chunks
from fv2es_client.stream import (
    DEFAULT_LABELS, STREAM_WINDOW, event_name, new_sequence_id, parse_end_response, parse_segment_response, pieces,
    stream_labels,
)

C = len(LABELS)
TIMES = np.array([[0.0, 1.5], [1.5, 3.0], [3.0, 4.25], [4.25, 6.0]], np.float32)


def whole_file_outputs(people: str = "some") -> dict[str, np.ndarray]:
    """The `fv2es` ensemble's outputs for a 6 s video of 4 segments. people: "none" (a server from
    before the person outputs), "empty" (R = 0, P = 0: nobody seen), "some": person 0 in segments
    0-2, person 1 in 0 and 2; person 0 speaks in segment 1, person 1 in segment 2."""
    rng = np.random.default_rng(7)
    outputs = {
        "SEGMENT_TIMES": TIMES,
        "TRANSCRIPTS": strings("", "hello there", "how are you", ""),
        "SEGMENT_SCORES": softmax(rng.normal(size=(4, C))),
        "SEGMENT_HAS_SPEECH": np.array([False, True, True, False]),
        "SEGMENT_HAS_FACE": np.array([True, True, True, False]),
        "VIDEO_SCORES": softmax(rng.normal(size=C)),
        "LABELS": strings(*LABELS),
        "MODEL_INFO": strings(json.dumps({"weights": "test weights", "labels": LABELS})),
    }
    if people == "none":
        return outputs
    if people == "empty":
        return {**outputs, "SEGMENT_SPEAKER": np.full(4, -1, np.int64), "PERSON_SEGMENTS": np.zeros((0, 2), np.int64),
                "PERSON_SEGMENT_SCORES": np.zeros((0, C), np.float32), "PERSON_SCORES": np.zeros((0, C), np.float32)}
    pair_scores = np.full((5, C), 0.02, np.float32)
    for row, label in enumerate(["happiness", "neutral", "anger", "happiness", "sadness"]):
        pair_scores[row, LABELS.index(label)] = 1 - 0.02 * (C - 1)
    person_scores = np.full((2, C), 0.05, np.float32)
    person_scores[0, LABELS.index("happiness")] = 0.7
    person_scores[1, LABELS.index("sadness")] = 0.7
    return {
        **outputs,
        "SEGMENT_SPEAKER": np.array([-1, 0, 1, -1], np.int64),
        "PERSON_SEGMENTS": np.array([[0, 0], [1, 0], [0, 1], [0, 2], [1, 2]], np.int64),
        "PERSON_SEGMENT_SCORES": pair_scores,
        "PERSON_SCORES": person_scores,
    }


@pytest.fixture
def result() -> VideoResult:
    return parse_response(whole_file_outputs())


# -- parsing the ensemble's outputs -----------------------------------------------------------------


def test_parse_response_without_the_person_outputs():
    r = parse_response(whole_file_outputs("none"))
    assert len(r.segments) == 4 and r.people == {} and r.person_summaries() == []
    assert [s.speaker for s in r.segments] == [-1] * 4 and all(s.people == {} for s in r.segments)
    assert [s.index for s in r.segments] == [0, 1, 2, 3]
    assert r.to_dict()["people"] == []
    assert r.to_dict()["segments"][1]["speaker"] == -1 and r.to_dict()["segments"][1]["people"] == {}


def test_parse_response_with_nobody_seen():
    r = parse_response(whole_file_outputs("empty"))
    assert r.people == {} and all(s.people == {} and s.speaker == -1 for s in r.segments)


def test_parse_response_with_people(result):
    segments = result.segments
    assert [s.speaker for s in segments] == [-1, 0, 1, -1]
    assert [sorted(s.people) for s in segments] == [[0, 1], [0], [0, 1], []]
    top = {(p, i): max(scores, key=scores.get) for i, s in enumerate(segments) for p, scores in s.people.items()}
    assert top == {(0, 0): "happiness", (1, 0): "neutral", (0, 1): "anger", (0, 2): "happiness", (1, 2): "sadness"}
    assert list(segments[0].people[1]) == LABELS and sum(segments[0].people[1].values()) == pytest.approx(1.0)
    assert sorted(result.people) == [0, 1]
    assert max(result.people[0], key=result.people[0].get) == "happiness"
    assert result.people[1]["sadness"] == pytest.approx(0.7)
    summaries = {p.person: p for p in result.person_summaries()}
    assert summaries[0].seconds == pytest.approx(4.25) and summaries[1].seconds == pytest.approx(1.5 + 1.25)
    assert summaries[0].speaking_segments == [1] and summaries[1].speaking_segments == [2]
    assert (summaries[0].emotion, summaries[1].emotion) == ("happiness", "sadness")


def test_parse_response_refuses_a_person_row_outside_the_segments():
    outputs = whole_file_outputs()
    outputs["PERSON_SEGMENTS"] = outputs["PERSON_SEGMENTS"].copy()
    outputs["PERSON_SEGMENTS"][-1, 1] = 4  # there are segments 0..3
    with pytest.raises(ValueError, match="segment 4"):
        parse_response(outputs)


@pytest.mark.parametrize("people", ["none", "some"])
def test_the_client_requests_only_the_outputs_the_model_lists(people):
    """Against an older server (no person outputs in its metadata) the client must not ask for them:
    Triton refuses a request for an output the model does not have, as the fake does."""
    outputs = whole_file_outputs(people)
    with FakeTriton(outputs) as fake, Fv2esClient(fake.url, retries=0, timeout_s=30) as client:
        r = client.analyze(b"any bytes: the fake does not read them")
        asked = fake.infer_requests[-1]
    assert set(asked) == set(outputs)
    assert (set(PERSON_OUTPUTS) <= set(asked)) == (people == "some")
    assert bool(r.people) == (people == "some") and len(r.segments) == 4


# -- output formats ----------------------------------------------------------------------------------


def test_table_has_a_speaker_column_and_a_people_block(result):
    text = format_result("clip.mp4", result)
    lines = text.splitlines()
    assert lines[1].split() == ["start", "end", "emotion", "score", "face", "speech", "speaker", "transcript"]
    rows = lines[2:6]
    assert rows[1].split()[6:9] == ["person", "0", "hello"] and rows[2].split()[6:9] == ["person", "1", "how"]
    assert rows[0].split()[6] == "-" and rows[3].split()[6] == "-"
    block = lines[lines.index("  people:") + 1 :]
    assert block[0].split() == ["person", "emotion", "score", "seen", "speaking"]
    assert block[1].split() == ["person", "0", "happiness", "0.70", "4.25", "s", "1", "segment", "(1.50", "s)"]
    assert block[2].split() == ["person", "1", "sadness", "0.70", "2.75", "s", "1", "segment", "(1.25", "s)"]
    assert f"  overall emotion: {result.emotion}" in lines and lines[-1] == "  model: test weights"
    assert "people:" not in format_result("clip.mp4", parse_response(whole_file_outputs("none")))


def test_json_has_the_speaker_and_the_people(result):
    doc = json.loads(json.dumps(json_document([Outcome("clip.mp4", 1.0, result=result)], {"url": "x"})))
    entry = doc["results"][0]
    assert set(entry) == {"video", "ok", "seconds", "emotion", "score", "scores", "labels", "segments", "people", "model_info"}
    segment = entry["segments"][2]
    assert set(segment) == {"index", "start", "end", "transcript", "scores", "has_speech", "has_face", "speaker", "people",
                            "emotion", "score"}
    assert segment["index"] == 2 and segment["speaker"] == 1
    assert set(segment["people"]) == {"0", "1"}
    assert set(segment["people"]["1"]) == {"emotion", "score", "scores"}
    assert segment["people"]["1"]["emotion"] == "sadness" and list(segment["people"]["1"]["scores"]) == LABELS
    assert segment["people"]["1"]["score"] == segment["people"]["1"]["scores"]["sadness"]
    assert entry["segments"][3]["people"] == {} and entry["segments"][3]["speaker"] == -1
    people = entry["people"]
    assert [p["person"] for p in people] == [0, 1]
    assert set(people[0]) == {"person", "emotion", "score", "scores", "seconds", "speaking_segments"}
    assert people[0]["emotion"] == "happiness" and people[0]["score"] == pytest.approx(0.7)
    assert people[0]["seconds"] == pytest.approx(4.25) and people[0]["speaking_segments"] == [1]
    assert people[1]["seconds"] == pytest.approx(2.75) and people[1]["speaking_segments"] == [2]


def test_csv_keeps_its_columns_and_adds_speaker_and_people(result):
    out = io.StringIO()
    failed = Outcome("bad.mp4", 0.1, error_code="INVALID_ARGUMENT", error_message="not a video")
    write_csv([Outcome("clip.mp4", 1.0, result=result), failed], out)
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    assert reader.fieldnames == [*CSV_COLUMNS, *LABELS, *CSV_ERROR_COLUMNS, *CSV_PEOPLE_COLUMNS]
    assert CSV_PEOPLE_COLUMNS == ("speaker", "people")
    rows = list(reader)
    assert [r["speaker"] for r in rows[:4]] == ["-1", "0", "1", "-1"]
    assert rows[0]["people"] == "0:happiness 0.8800;1:neutral 0.8800"
    assert rows[1]["people"] == "0:anger 0.8800" and rows[3]["people"] == ""
    assert rows[1]["transcript"] == "hello there" and float(rows[1]["start"]) == 1.5
    assert rows[4]["video"] == "bad.mp4" and rows[4]["error_code"] == "INVALID_ARGUMENT"
    assert rows[4]["speaker"] == rows[4]["people"] == "" and rows[4]["emotion"] == ""
    assert people_cell(result.segments[2]) == "0:happiness 0.8800;1:sadness 0.8800"


def png_height(path: Path) -> int:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image[..., :3].std() > 0.05, "the plot is not blank"
    return image.shape[0]


def test_plot_has_one_lane_per_person(result, tmp_path):
    without, with_people = tmp_path / "without.png", tmp_path / "with.png"
    plain = parse_response(whole_file_outputs("none"))
    assert plot_timelines([Outcome("clip.mp4", 1.0, result=plain)], without) == 1
    assert plot_timelines([Outcome("clip.mp4", 1.0, result=result)], with_people) == 1
    lanes = 1 + len(result.person_summaries())  # the video's lane, then one per person
    expected = round((LANES_MARGIN + LANE_HEIGHT * lanes) * 100)  # inches at 100 dpi
    assert png_height(with_people) - png_height(without) == pytest.approx(expected, abs=2)


# -- sources -------------------------------------------------------------------------------------


def write_slowly(path: Path, parts: list[bytes], pause_s: float, marker: bool) -> threading.Thread:
    def run():
        with open(path, "ab") as f:
            for part in parts:
                f.write(part)
                f.flush()
                time.sleep(pause_s)
        if marker:
            done_marker(path).touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def random_parts(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, 50_000)) for _ in range(n)]


def test_growing_file_ends_at_its_done_marker(tmp_path):
    path = tmp_path / "live.ts"
    path.touch()
    parts = random_parts(20)
    started = time.monotonic()
    writer = write_slowly(path, parts, 0.03, marker=True)
    received = []
    for chunk in growing_file_chunks(path, chunk_bytes=8192, poll_s=0.02, idle_timeout_s=30):
        assert 0 < len(chunk) <= 8192
        received.append(chunk)
    elapsed = time.monotonic() - started
    writer.join()
    assert b"".join(received) == b"".join(parts), "every byte, in order"
    assert len(received) > len(parts), "read while it was written, not at the end"
    assert elapsed < 5, "the marker ends it at once, not the 30 s idle timeout"


def test_growing_file_ends_when_it_stops_growing(tmp_path):
    path = tmp_path / "live.mkv"
    parts = random_parts(5, seed=1)
    write_slowly(path, parts, 0.05, marker=False)  # also: the file does not exist yet when tailing starts
    started = time.monotonic()
    data = b"".join(growing_file_chunks(path, poll_s=0.02, idle_timeout_s=0.6))
    elapsed = time.monotonic() - started
    assert data == b"".join(parts)
    assert 0.6 <= elapsed < 0.25 + 0.6 + 1.5, elapsed


def test_growing_file_stops_on_request_and_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "live.ts"
    path.write_bytes(b"x" * 1000)
    stop = threading.Event()
    chunks = growing_file_chunks(path, poll_s=0.02, idle_timeout_s=None, stop=stop)
    assert next(chunks) == b"x" * 1000
    stop.set()
    assert list(chunks) == []
    chunks = growing_file_chunks(path, poll_s=0.02, idle_timeout_s=5)
    next(chunks)
    path.write_bytes(b"y" * 10)  # replaced by a shorter file
    with pytest.raises(OSError, match="shrank"):
        next(chunks)
    with pytest.raises(FileNotFoundError):
        list(growing_file_chunks(tmp_path / "never.ts", poll_s=0.02, idle_timeout_s=0.1))


def test_file_chunks_in_order(tmp_path):
    path = tmp_path / "clip.ts"
    data = random.Random(3).randbytes(100_001)
    path.write_bytes(data)
    chunks = list(file_chunks(path, 4096))
    assert b"".join(chunks) == data and len(chunks) == 25 and all(len(c) == 4096 for c in chunks[:-1])


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synth.speak("One two three, the camera is rolling now.")


def media_counts(data: bytes) -> dict:
    """Video frames and audio samples PyAV decodes, the container and codec names, the audio rate."""
    found = {}
    with av.open(io.BytesIO(data)) as container:
        found["format"] = container.format.name
        found["codecs"] = sorted(s.codec_context.name for s in container.streams if s.type in ("audio", "video"))
        found["frames"] = sum(1 for _ in container.decode(video=0))
    with av.open(io.BytesIO(data)) as container:
        audio = bool(container.streams.audio)
        found["samples"] = sum(f.samples for f in container.decode(audio=0)) if audio else 0
        found["rate"] = container.streams.audio[0].codec_context.sample_rate if audio else 0
    return found


def slices(packet: bytes, annex_b: bool) -> list[bytes]:
    """The H.264 slice NAL units of a packet (MP4: length-prefixed; MPEG-TS: start codes, with the
    access unit delimiters and parameter sets the TS muxer adds)."""
    if annex_b:
        units = [u.rstrip(b"\x00") for u in packet.split(b"\x00\x00\x01")]
    else:
        units, i = [], 0
        while i + 4 <= len(packet):
            n = int.from_bytes(packet[i : i + 4], "big")
            units.append(packet[i + 4 : i + 4 + n])
            i += 4 + n
    return [u for u in units if u and u[0] & 0x1F in (1, 5)]


AUDIO_TOLERANCE = 2 * 1024  # samples: an AAC encoder's priming frame and the last frame's padding


@pytest.mark.parametrize("kind", ["mp4 h264/aac: copied", "mkv vp8/opus: encoded"])
def test_capture_remuxes_a_file_to_mpegts(kind, speech, tmp_path):
    seconds = len(speech) / config.SAMPLE_RATE
    frames = synth.talking_head_frames(int(seconds * 25), 320, 240)
    if kind.startswith("mp4"):
        data = synth.encode_video(frames=frames, fps=25, audio=speech)
        path = tmp_path / "clip.mp4"
    else:
        data = synth.encode_video(frames=frames, fps=25, audio=speech, container_format="matroska",
                                  video_codec="libvpx", audio_codec="libopus")
        path = tmp_path / "clip.mkv"
    path.write_bytes(data)
    chunks = list(capture_chunks(path, chunk_bytes=16_384, flush_s=0.0))
    assert len(chunks) > 3 and all(0 < len(c) <= 16_384 for c in chunks), "yielded as it is produced"
    before, after = media_counts(data), media_counts(b"".join(chunks))
    assert after["format"] == "mpegts" and after["codecs"] == ["aac", "h264"]
    assert abs(after["frames"] - before["frames"]) <= 1, (before, after)
    assert after["rate"] == before["rate"]
    assert abs(after["samples"] - before["samples"]) <= AUDIO_TOLERANCE, (before, after)
    if kind.endswith("copied"):  # the very same H.264 slices, not encoded again
        with av.open(io.BytesIO(data)) as a, av.open(io.BytesIO(b"".join(chunks))) as b:
            first = [slices(bytes(p), False) for p in a.demux(video=0) if p.size]
            second = [slices(bytes(p), True) for p in b.demux(video=0) if p.size]
        assert len(first) == before["frames"] and first == second


def test_capture_stops_after_the_seconds_asked_for(speech, tmp_path):
    seconds = len(speech) / config.SAMPLE_RATE
    assert seconds > 2
    path = tmp_path / "clip.mp4"
    path.write_bytes(synth.encode_video(frames=synth.talking_head_frames(int(seconds * 25), 320, 240), fps=25, audio=speech))
    counts = media_counts(b"".join(capture_chunks(path, seconds=1.0)))
    assert abs(counts["frames"] - 25) <= 2, counts
    assert abs(counts["samples"] - config.SAMPLE_RATE) <= AUDIO_TOLERANCE + 0.1 * config.SAMPLE_RATE, counts
    with pytest.raises(ValueError, match="vp8"):
        mkv = tmp_path / "clip.mkv"
        mkv.write_bytes(synth.encode_video(frames=synth.talking_head_frames(10, 320, 240), fps=25,
                                           container_format="matroska", video_codec="libvpx"))
        list(capture_chunks(mkv, transcode=False))


def test_source_chunks_sends_streamable_files_as_they_are(tmp_path):
    ts = tmp_path / "clip.ts"
    ts.write_bytes(synth.encode_video(frames=synth.talking_head_frames(10, 320, 240), fps=25, container_format="mpegts"))
    assert b"".join(source_chunks(ts)) == ts.read_bytes()
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(synth.encode_video(frames=synth.talking_head_frames(10, 320, 240), fps=25))
    assert media_counts(b"".join(source_chunks(mp4)))["format"] == "mpegts", "an MP4 is remuxed"
    with pytest.raises(FileNotFoundError):
        source_chunks(tmp_path / "missing.mp4")


# -- stream responses -----------------------------------------------------------------------------


def test_parse_segment_response():
    arrays = segment_arrays(4)
    segment = parse_segment_response(arrays, LABELS)
    assert isinstance(segment, Segment) and segment.index == 4
    assert (segment.start, segment.end) == (4.0, 5.0) and segment.transcript == "words of segment 4"
    assert list(segment.scores) == LABELS
    assert segment.scores == pytest.approx(dict(zip(LABELS, arrays["SEGMENT_SCORES"][0].tolist())))
    assert (segment.has_speech, segment.has_face, segment.speaker) == (False, True, -1)
    assert sorted(segment.people) == [0, 1]
    assert segment.people[1] == pytest.approx(dict(zip(LABELS, arrays["PERSON_SEGMENT_SCORES"][1].tolist())))
    odd = parse_segment_response(segment_arrays(5), LABELS)
    assert odd.speaker == 0 and sorted(odd.people) == [0] and odd.has_speech
    # R = 0 (nobody seen), and a server without the person tensors
    empty = {**arrays, "PERSON_SEGMENTS": np.zeros((0, 2), np.int64), "PERSON_SEGMENT_SCORES": np.zeros((0, C), np.float32)}
    assert parse_segment_response(empty, LABELS).people == {}
    bare = {k: v for k, v in arrays.items() if k not in ("PERSON_SEGMENTS", "PERSON_SEGMENT_SCORES", "SEGMENT_SPEAKER")}
    assert parse_segment_response(bare, LABELS).people == {} and parse_segment_response(bare, LABELS).speaker == -1
    wrong = {**arrays, "PERSON_SEGMENTS": np.array([[0, 3], [1, 4]], np.int64)}
    with pytest.raises(ValueError, match="segment 3"):
        parse_segment_response(wrong, LABELS)
    assert event_name(arrays) == "segment" and event_name({}) is None


def test_parse_end_response_relabels_the_segments():
    segments = [segment_arrays(i) for i in (1, 0, 2)]
    other = [f"class {i}" for i in range(C)]
    result = parse_end_response(end_arrays(3, other), segments)
    assert [s.index for s in result.segments] == [0, 1, 2], "in index order"
    assert result.labels == other and list(result.segments[0].scores) == other
    assert list(result.segments[0].people[1]) == other
    assert sorted(result.people) == [0, 1] and result.duration == 3.0
    assert result.model_info["weights"] == "fake weights"
    assert result.emotion == max(result.scores, key=result.scores.get)


def test_stream_labels_rule():
    assert stream_labels({"parameters": {"labels": {"string_value": "a, b,c"}}}, 3) == ["a", "b", "c"]
    assert stream_labels({}, len(DEFAULT_LABELS)) == list(DEFAULT_LABELS)
    assert stream_labels({}, 3) == ["label 0", "label 1", "label 2"]
    ids = {new_sequence_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(0 < i < 2**63 for i in ids)
    assert [len(p) for p in pieces([b"", b"x" * 10, b"y" * 3], limit=4)] == [4, 4, 2, 3]


# -- Fv2esClient.stream against the fake server ---------------------------------------------------


@pytest.fixture
def fake():
    with FakeTriton(whole_file_outputs()) as server:
        yield server


def test_stream_yields_segments_while_chunks_are_still_sent(fake):
    first_segment = threading.Event()
    sent_after_first = []

    def chunks():
        yield b"chunk 0"
        yield b"chunk 1"
        # The source waits for the consumer to have seen a segment: a client that sends everything
        # before yielding anything never gets here, and the test fails on the wait.
        assert first_segment.wait(20), "no segment was yielded while the source was still open"
        for i in range(2, 5):
            sent_after_first.append(i)
            yield f"chunk {i}".encode()

    with Fv2esClient(fake.url, timeout_s=30) as client:
        events = []
        for event in client.stream(chunks()):
            events.append(event)
            first_segment.set()
    assert sent_after_first == [2, 3, 4]
    assert [type(e) for e in events] == [Segment] * 5 + [VideoResult]
    assert [e.index for e in events[:5]] == [0, 1, 2, 3, 4]
    result = events[-1]
    assert [s.index for s in result.segments] == [0, 1, 2, 3, 4] and result.labels == LABELS
    assert [s.speaker for s in result.segments] == [-1, 0, -1, 0, -1]
    assert sorted(result.people) == [0, 1] and result.duration == 5.0
    assert {p.person: p.seconds for p in result.person_summaries()} == {0: 5.0, 1: 3.0}
    assert events[1].scores == result.segments[1].scores
    requests = fake.stream_requests
    assert b"".join(r["data"] for r in requests) == b"".join(f"chunk {i}".encode() for i in range(5))
    assert len({r["sequence_id"] for r in requests}) == 1 and requests[0]["sequence_id"] != 0
    assert [r["start"] for r in requests] == [True] + [False] * 5
    assert [r["end"] for r in requests] == [False] * 5 + [True] and requests[-1]["data"] == b""
    assert all(r["final_wanted"] for r in requests)
    assert fake.stream_headers[-1].get("triton_grpc_error") == "true"


def test_each_stream_has_its_own_sequence_id(fake):
    with Fv2esClient(fake.url, timeout_s=30) as client:
        for _ in range(2):
            assert isinstance(list(client.stream([b"a"]))[-1], VideoResult)
    assert len({r["sequence_id"] for r in fake.stream_requests}) == 2


def test_a_slow_consumer_does_not_stall_the_stream(fake):
    n = 3 * STREAM_WINDOW
    started = time.monotonic()
    seen = []
    with Fv2esClient(fake.url, timeout_s=30) as client:
        for event in client.stream(f"chunk {i}".encode() for i in range(n)):
            time.sleep(0.02)
            seen.append(event)
    assert len(seen) == n + 1 and isinstance(seen[-1], VideoResult) and len(seen[-1].segments) == n
    assert time.monotonic() - started < 20
    assert len(fake.stream_requests) == n + 1


def test_a_server_error_raises_with_its_status_and_message(fake):
    with Fv2esClient(fake.url, timeout_s=30) as client:
        stream = client.stream([b"good", ERROR_MARKER, b"never read"])
        first = next(stream)
        assert isinstance(first, Segment)
        with pytest.raises(Fv2esError) as raised:
            list(stream)
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.message() == "fv2es_stream: the stream is not a readable video (fake)"


def test_stop_ends_the_stream_with_its_result(fake):
    stop = threading.Event()
    with Fv2esClient(fake.url, timeout_s=30) as client:
        events = []
        def slow():
            for i in range(1000):
                time.sleep(0.01)
                yield f"chunk {i}".encode()

        for event in client.stream(slow(), stop=stop):
            events.append(event)
            if len(events) == 3:
                stop.set()
    result = events[-1]
    assert isinstance(result, VideoResult) and 3 <= len(result.segments) < 1000
    assert fake.stream_requests[-1]["end"] and fake.stream_requests[-1]["data"] == b""


def test_a_source_error_is_raised_to_the_caller(fake):
    def broken():
        yield b"fine"
        raise OSError("the camera went away")

    with Fv2esClient(fake.url, timeout_s=30) as client, pytest.raises(OSError, match="camera went away"):
        list(client.stream(broken()))


def test_a_silent_server_times_out():
    with FakeTriton(whole_file_outputs(), stream_delay_s=3) as slow, Fv2esClient(slow.url, timeout_s=0.5) as client:
        started = time.monotonic()
        with pytest.raises(Fv2esError) as raised:
            list(client.stream([b"a"]))
        assert time.monotonic() - started < 2.5, "the 0.5 s timeout, not the server's 3 s"
    assert raised.value.code == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize(("ready", "code"), [(None, "MODEL_NOT_FOUND"), (False, "MODEL_NOT_READY")])
def test_the_stream_model_must_be_ready(ready, code):
    with FakeTriton(whole_file_outputs(), stream_ready=ready) as server, Fv2esClient(server.url, retries=0) as client:
        with pytest.raises(ModelNotReadyError) as raised:
            client.stream([b"a"])
        assert client.connect().from_server, "the whole-file model is still served"
    assert raised.value.code == code and "fv2es_stream" in raised.value.message()
    if code == "MODEL_NOT_FOUND":
        assert "--stream-model" in raised.value.message()
    assert server.stream_requests == []


def test_segments_use_the_stream_models_labels_parameter():
    names = ",".join(f"c{i}" for i in range(C))
    with FakeTriton(whole_file_outputs(), stream_labels_parameter=names) as server, Fv2esClient(server.url) as client:
        events = list(client.stream([b"a"]))
    assert list(events[0].scores) == names.split(",")


# -- fv2es-client --stream ------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    return subprocess.run([sys.executable, "-m", "fv2es_client", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def ts_file(tmp_path) -> Path:
    path = tmp_path / "live.ts"
    path.write_bytes(synth.encode_video(frames=synth.talking_head_frames(50, 320, 240), fps=25, container_format="mpegts"))
    return path


def test_cli_stream_prints_rows_then_the_summary(fake, ts_file):
    done = run_cli("--stream", str(ts_file), "--chunk-kib", "8", "--url", fake.url)
    assert done.returncode == 0, done.stderr
    n = -(-ts_file.stat().st_size // 8192)  # one fake segment per chunk
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(ts_file)) and lines[1].split()[:7] == ["start", "end", "emotion", "score", "face", "speech", "speaker"]
    rows = lines[2 : 2 + n]
    assert [float(r.split()[0]) for r in rows] == [float(i) for i in range(n)]
    assert rows[1].split()[6:8] == ["person", "0"] and rows[0].split()[6] == "-"
    assert "  people:" in lines and any(line.split()[:2] == ["person", "1"] for line in lines[2 + n :])
    assert f"({n} segments, {float(n):.2f} s of media" in done.stdout
    assert b"".join(r["data"] for r in fake.stream_requests) == ts_file.read_bytes(), "a TS file is sent as it is"


def test_cli_stream_json_lines_and_csv(fake, ts_file):
    done = run_cli("--stream", str(ts_file), "--json", "--chunk-kib", "16", "--url", fake.url)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["segment"] * (len(events) - 1) + ["end"]
    assert events[0]["source"] == str(ts_file) and events[0]["index"] == 0 and "people" in events[0]
    assert [p["person"] for p in events[-1]["people"]] == [0, 1] and len(events[-1]["segments"]) == len(events) - 1
    done = run_cli("--stream", str(ts_file), "--csv", "--chunk-kib", "16", "--url", fake.url)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == len(events) - 1 and rows[1]["speaker"] == "0" and rows[0]["people"].startswith("0:")
    assert "overall emotion:" in done.stderr and "overall emotion:" not in done.stdout


def test_cli_stream_follows_a_growing_file(fake, tmp_path):
    path = tmp_path / "recording.ts"
    parts = random_parts(6, seed=5)
    write_slowly(path, parts, 0.1, marker=True)
    done = run_cli("--stream", str(path), "--follow", "--idle-timeout", "30", "--json", "--url", fake.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["event"] == "end"
    assert b"".join(r["data"] for r in fake.stream_requests) == b"".join(parts)


def test_cli_stream_first_ctrl_c_ends_the_stream_with_its_summary(fake, tmp_path):
    import signal

    path = tmp_path / "endless.ts"
    path.write_bytes(b"first bytes")  # never finished: no marker, no idle timeout
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    command = [sys.executable, "-m", "fv2es_client", "--stream", str(path), "--follow", "--idle-timeout", "0",
               "--url", fake.url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        deadline = time.monotonic() + 30
        while not fake.stream_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.stream_requests, "the stream did not start"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopping" in stderr and "  overall emotion:" in stdout and "(1 segment, " in stdout
    assert fake.stream_requests[-1]["end"] and fake.stream_requests[-1]["data"] == b""


def test_cli_stream_reports_the_servers_error(fake, tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_bytes(ERROR_MARKER * 100)
    done = run_cli("--stream", str(bad), "--url", fake.url)
    assert done.returncode == 1
    assert f"{bad}: error [INVALID_ARGUMENT]: fv2es_stream: the stream is not a readable video (fake)" in done.stderr
    done = run_cli("--stream", str(tmp_path / "missing.ts"), "--url", fake.url)
    assert done.returncode == 1 and "error [FILE_NOT_FOUND]" in done.stderr


def test_cli_usage(fake, ts_file):
    assert run_cli("--url", fake.url).returncode == 2
    done = run_cli("--stream", str(ts_file), str(ts_file), "--url", fake.url)
    assert done.returncode == 2 and "not both" in done.stderr
    done = run_cli("--follow", str(ts_file), "--url", fake.url)
    assert done.returncode == 2 and "only with --stream" in done.stderr
    with FakeTriton(whole_file_outputs(), stream_ready=None) as old:
        done = run_cli("--stream", str(ts_file), "--url", old.url, "--retries", "0")
    assert done.returncode == 2 and "does not serve model 'fv2es_stream'" in done.stderr


def test_cli_whole_file_table_has_the_people(fake, ts_file):
    done = run_cli(str(ts_file), "--url", fake.url)
    assert done.returncode == 0, done.stderr
    assert "  people:" in done.stdout and "person 1" in done.stdout


# -- the web page ---------------------------------------------------------------------------------


class StubClient:
    """What the page's server needs from Fv2esClient, with a fixed result."""

    def __init__(self, result: VideoResult):
        self.result = result

    def connect(self):
        from fv2es_client.client import ServerLimits

        return ServerLimits(10_000_000, 600.0, True)

    def analyze(self, video):
        return self.result

    def close(self):
        pass


@contextlib.contextmanager
def stub_page(result: VideoResult):
    import uvicorn

    from fv2es.tritonserver import free_port
    from fv2es_web.app import create_app

    app = create_app("stub:8001")
    stub = StubClient(result)
    app.state.analyzer.client = lambda: stub
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not web.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert web.started
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(10)


def test_web_page_shows_one_lane_per_person(result, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed")
    video = tmp_path / "clip.mp4"
    video.write_bytes(synth.encode_video(frames=synth.talking_head_frames(150, 320, 240), fps=25))
    with stub_page(result) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("#analyse:not([disabled])", timeout=30_000)
            page.set_input_files("#file", str(video))
            page.click("#analyse")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.locator("#timeline .segment").count() == 4
            assert page.is_visible("#people-lanes") and page.locator("#people-lanes .lane").count() == 2
            labels = [page.text_content(f"#people-lanes .lane >> nth={i} >> .lane-label") for i in range(2)]
            assert labels == ["person 0", "person 1"]
            lane0 = page.locator('#people-lanes .lane[data-person="0"] .lane-cell')
            lane1 = page.locator('#people-lanes .lane[data-person="1"] .lane-cell')
            assert lane0.count() == lane1.count() == 4
            absent = [("absent" in (lane1.nth(i).get_attribute("class") or "")) for i in range(4)]
            assert absent == [False, True, False, True]
            speaking = [int(c.get_attribute("data-index")) for c in page.locator(".lane-cell.speaking").all()]
            assert speaking == [1, 2] and page.locator('.lane[data-person="0"] .lane-cell.speaking').count() == 1
            assert "person 0:" in page.text_content("#transcript li >> nth=1")
            assert "person 1:" in page.text_content("#transcript li >> nth=2")
            assert page.locator("#transcript .speaker").count() == 2
            rows = page.locator("#people-table tbody tr")
            assert rows.count() == 2
            assert rows.nth(0).locator("td").all_text_contents() == ["person 0", "happiness", "0.70", "4.25 s", "1 segment (1.50 s)"]
            assert rows.nth(1).locator("td").all_text_contents() == ["person 1", "sadness", "0.70", "2.75 s", "1 segment (1.25 s)"]
            page.eval_on_selector("#player", "(v) => { v.currentTime = 2.0; }")
            page.wait_for_selector('#people-lanes .lane-cell.current[data-index="1"]', timeout=10_000)
            assert "person 0 (speaking): anger" in page.text_content("#current-people")
            document = json.loads(page.request.get(page.eval_on_selector("#download-json", "a => a.href")).text())
            assert [p["person"] for p in document["results"][0]["people"]] == [0, 1]
            csv_text = page.request.get(page.eval_on_selector("#download-csv", "a => a.href")).text()
            assert csv_text.splitlines()[0].endswith(",speaker,people")
        finally:
            browser.close()
    with stub_page(parse_response(whole_file_outputs("none"))) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#analyse:not([disabled])", timeout=30_000)
            page.set_input_files("#file", str(video))
            page.click("#analyse")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.is_hidden("#people-lanes") and page.is_hidden("#people")
            assert page.locator("#timeline .segment").count() == 4
        finally:
            browser.close()
