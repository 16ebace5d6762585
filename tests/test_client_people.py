"""The client's side of "one timeline per person" and of live streams.

Parsing of the ensemble's outputs with and without the person outputs and of the stream's responses,
every output format with people (table, JSON, CSV, plot) and the byte sources (a file being written,
a capture remuxed to MPEG-TS), without a server; then Fv2esClient.stream and `fv2es-client --stream`
end to end against the session's real tritonserver, on a generated two-person clip as MPEG-TS
(tests/test_stream.py has the server's side: stretches, and segments while the stream still comes).
"""

from __future__ import annotations

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
import psutil
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT

from fv2es import config
from fv2es_build import synth
from fv2es_client import Fv2esClient, Fv2esError, ModelNotReadyError, Segment, VideoResult
from fv2es_client.client import GROUP_OUTPUTS, OUTPUTS, PERSON_OUTPUTS, parse_response, requested_outputs
from fv2es_client.output import (
    CSV_COLUMNS, CSV_ERROR_COLUMNS, CSV_GROUP_COLUMNS, CSV_PEOPLE_COLUMNS, CSV_UNSURE_COLUMNS, LANE_HEIGHT, LANES_MARGIN, Outcome, format_result, json_document,
    people_cell, plot_timelines, write_csv,
)
from fv2es_client.sources import byte_clock, capture_chunks, done_marker, file_chunks, growing_file_chunks, source_chunks
from fv2es_client.stream import (
    DEFAULT_LABELS, STREAM_WINDOW, event_name, new_sequence_id, parse_end_response, parse_segment_response, pieces,
    stream_labels,
    uses_keys,
)

LABELS = list(config.LABELS)
C = len(LABELS)
TIMES = np.array([[0.0, 1.5], [1.5, 3.0], [3.0, 4.25], [4.25, 6.0]], np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def strings(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


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


def test_the_client_requests_only_the_outputs_the_model_lists(client):
    """Against an older server (no person outputs in its metadata) the client must not ask for them:
    Triton refuses a request for an output the model does not have."""
    old = {"outputs": [{"name": name} for name in OUTPUTS]}
    assert requested_outputs(old) == OUTPUTS
    assert requested_outputs({}) == OUTPUTS
    assert requested_outputs({"outputs": [{"name": n} for n in (*OUTPUTS, *PERSON_OUTPUTS, "OTHER")]}) == \
        OUTPUTS + PERSON_OUTPUTS
    client.connect()
    assert client.outputs == OUTPUTS + PERSON_OUTPUTS + GROUP_OUTPUTS, "this repository's ensemble has the person and group outputs"


# -- output formats ----------------------------------------------------------------------------------


def test_table_has_a_speaker_column_and_a_people_block(result):
    text = format_result("clip.mp4", result)
    lines = text.splitlines()
    assert lines[1].split() == ["start", "end", "emotion", "score", "face", "speech", "speaker", "group", "transcript"]
    rows = lines[2:6]
    assert rows[1].split()[6:10] == ["person", "0", "-", "hello"] and rows[2].split()[6:10] == ["person", "1", "-", "how"]
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
    assert set(entry) == {"video", "ok", "seconds", "emotion", "score", "scores", "labels", "segments", "people", "model_info",
                          "unsure", "unsure_below", "group"}
    assert entry["group"] is None  # these outputs have no group scores
    segment = entry["segments"][2]
    assert set(segment) == {"index", "start", "end", "transcript", "scores", "has_speech", "has_face", "speaker", "people",
                            "emotion", "score", "unsure", "group"}
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
    assert reader.fieldnames == [*CSV_COLUMNS, *LABELS, *CSV_ERROR_COLUMNS, *CSV_PEOPLE_COLUMNS, *CSV_UNSURE_COLUMNS, *CSV_GROUP_COLUMNS]
    assert CSV_PEOPLE_COLUMNS == ("speaker", "people") and CSV_UNSURE_COLUMNS == ("unsure",)
    assert CSV_GROUP_COLUMNS == ("group", "group_score", "group_positive", "group_neutral", "group_negative")
    rows = list(reader)
    assert [r["speaker"] for r in rows[:4]] == ["-1", "0", "1", "-1"]
    assert rows[0]["people"] == "0:happiness 0.8800;1:neutral 0.8800"
    assert rows[1]["people"] == "0:anger 0.8800" and rows[3]["people"] == ""
    assert rows[1]["transcript"] == "hello there" and float(rows[1]["start"]) == 1.5
    assert rows[4]["video"] == "bad.mp4" and rows[4]["error_code"] == "INVALID_ARGUMENT"
    assert rows[4]["speaker"] == rows[4]["people"] == rows[4]["unsure"] == "" and rows[4]["emotion"] == ""
    assert [r["unsure"] for r in rows[:4]] == ["0"] * 4, "no threshold from this result's server: nothing marked"
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


def segment_arrays(index: int) -> dict[str, np.ndarray]:
    """A "segment" response of fv2es_stream for segment `index`: 1 s long; person 0 in every segment,
    person 1 in the even ones; the speaker person 0 in odd segments, nobody in even ones."""
    rng = np.random.default_rng(index)
    people = [0, 1] if index % 2 == 0 else [0]
    return {
        "EVENT": strings("segment"),
        "SEGMENT_INDEX": np.array([index], np.int64),
        "SEGMENT_TIMES": np.array([[index, index + 1.0]], np.float32),
        "TRANSCRIPTS": strings(f"words of segment {index}"),
        "SEGMENT_SCORES": softmax(rng.normal(size=(1, C))),
        "SEGMENT_HAS_SPEECH": np.array([index % 2 == 1]),
        "SEGMENT_HAS_FACE": np.array([True]),
        "SEGMENT_SPEAKER": np.array([0 if index % 2 else -1], np.int64),
        "PERSON_SEGMENTS": np.array([[p, index] for p in people], np.int64).reshape(-1, 2),
        "PERSON_SEGMENT_SCORES": softmax(rng.normal(size=(len(people), C)) * 3),
    }


def end_arrays(n_segments: int, labels: list[str]) -> dict[str, np.ndarray]:
    """The "end" response of a stream of `n_segments` 1 s segments seen by two people."""
    rng = np.random.default_rng(1000 + n_segments)
    return {
        "EVENT": strings("end"),
        "VIDEO_SCORES": softmax(rng.normal(size=C)),
        "PERSON_SCORES": softmax(rng.normal(size=(2 if n_segments else 0, C)) * 3),
        "LABELS": strings(*labels),
        "MODEL_INFO": strings(json.dumps({"weights": "test weights", "labels": labels})),
        "DURATION": np.array([float(n_segments)], np.float32),
    }


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
    assert result.model_info["weights"] == "test weights"
    assert result.emotion == max(result.scores, key=result.scores.get)


def test_streams_send_keys_only_to_a_server_that_issues_them(server):
    """A server before stream keys has no STREAM_KEY input: its streams go without one, as before."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{config.STREAM_MODEL_NAME}/config") as reply:
        assert uses_keys(json.loads(reply.read()))
    assert not uses_keys({"input": [{"name": "CHUNK", "data_type": "TYPE_STRING", "dims": [1]}]})


def test_stream_labels_rule():
    assert stream_labels({"parameters": {"labels": {"string_value": "a, b,c"}}}, 3) == ["a", "b", "c"]
    assert stream_labels({}, len(DEFAULT_LABELS)) == list(DEFAULT_LABELS)
    assert stream_labels({}, 3) == ["label 0", "label 1", "label 2"]
    ids = {new_sequence_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(0 < i < 2**63 for i in ids)
    assert [len(p) for p in pieces([b"", b"x" * 10, b"y" * 3], limit=4)] == [4, 4, 2, 3]


# -- Fv2esClient.stream against the real server -------------------------------------------------


@pytest.fixture(scope="module")
def two_people_ts(tmp_path_factory) -> Path:
    """Two people taking two turns, as MPEG-TS: one stretch, so the segments come at the stream's end."""
    path = tmp_path_factory.mktemp("streams") / "two_people.ts"
    path.write_bytes(synth.two_person_video(synth.TWO_PERSON_TURNS[:2], container_format="mpegts")[0])
    return path


@pytest.fixture(scope="module")
def whole(client, two_people_ts) -> VideoResult:
    """The whole-file answer for the same bytes, which every stream of them must give."""
    return client.analyze(two_people_ts.read_bytes())


@pytest.fixture(scope="module")
def breaking_server(spare_server):
    """The streams that end in an error, that the client abandons or whose step an admin unloads run on
    the spare server (conftest): whatever they leave behind stays out of the session's server."""
    return spare_server


def survived(server, sample_bytes) -> None:
    assert server.process.poll() is None, "tritonserver died: " + server.log_tail()
    with Fv2esClient(server.grpc_url) as c:
        assert c.analyze(sample_bytes).segments


def chunks_of(data: bytes, size: int):
    return (data[i : i + size] for i in range(0, len(data), size))


def same_result(result: VideoResult, whole: VideoResult) -> None:
    assert [(s.index, s.start, s.end, s.transcript, s.speaker) for s in result.segments] == \
        [(s.index, s.start, s.end, s.transcript, s.speaker) for s in whole.segments]
    assert result.emotion == whole.emotion and sorted(result.people) == sorted(whole.people)
    for mine, theirs in zip(result.segments, whole.segments):
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-4)
        assert mine.group == pytest.approx(theirs.group, abs=1e-4)  # each stream's own faces, frames and voices
    assert result.group == pytest.approx(whole.group, abs=1e-4)


def test_the_stream_gives_the_whole_files_result_with_the_servers_labels(server, client, two_people_ts, whole):
    events = list(client.stream(chunks_of(two_people_ts.read_bytes(), 8192), mode="exact"))
    assert [type(e) for e in events] == [Segment] * len(whole.segments) + [VideoResult]
    same_result(events[-1], whole)
    assert sorted(e.index for e in events[:-1]) == list(range(len(whole.segments)))
    served = grpcclient.InferenceServerClient(server.grpc_url).get_model_config(config.STREAM_MODEL_NAME, as_json=True)
    assert stream_labels(served["config"], C) == LABELS
    assert list(events[0].scores) == LABELS and events[-1].labels == LABELS
    assert sorted(whole.people) == [0, 1] and {s.speaker for s in whole.segments if s.has_speech} == {0, 1}


def test_concurrent_streams_get_their_own_results(server, two_people_ts, whole, sample_bytes):
    """Two streams at once, of different clips, each on its own client: nothing is mixed up."""
    one_face = synth.talking_head_video(width=320, height=240, container_format="mpegts")
    with Fv2esClient(server.grpc_url) as c:
        expected_one_face = c.analyze(one_face)
    results = {}

    def run(name: str, data: bytes) -> None:
        with Fv2esClient(server.grpc_url, timeout_s=120) as c:
            results[name] = list(c.stream(chunks_of(data, 4096), mode="exact"))[-1]

    threads = [threading.Thread(target=run, args=("two", two_people_ts.read_bytes())),
               threading.Thread(target=run, args=("one", one_face))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    same_result(results["two"], whole)
    same_result(results["one"], expected_one_face)


def test_a_slow_consumer_does_not_stall_the_stream(client, two_people_ts, whole):
    data = two_people_ts.read_bytes()
    n = -(-len(data) // 1024)
    assert n > 3 * STREAM_WINDOW  # more requests than the client keeps in flight
    seen = []
    for event in client.stream(chunks_of(data, 1024), mode="exact"):
        time.sleep(0.2)
        seen.append(event)
    same_result(seen[-1], whole)


@pytest.mark.slow
def test_a_server_error_raises_with_its_status_and_message(breaking_server, sample_bytes):
    with Fv2esClient(breaking_server.grpc_url) as client, pytest.raises(Fv2esError) as raised:
        list(client.stream([b"these are notes, not a video\n" * 2000]))
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.message().startswith(f"{config.STREAM_MODEL_NAME}: ") and "not a readable video" in raised.value.message()
    survived(breaking_server, sample_bytes)


def test_stop_ends_the_stream_with_the_result_of_what_was_sent(client, two_people_ts, whole):
    data = two_people_ts.read_bytes()
    stop = threading.Event()

    def half_then_stop():
        for i, chunk in enumerate(chunks_of(data, 8192)):
            if i * 8192 >= len(data) // 2:
                stop.set()  # the client reads no more chunks after this one
            yield chunk

    events = list(client.stream(half_then_stop(), stop=stop))
    result = events[-1]
    assert isinstance(result, VideoResult) and result.segments
    whole_end = whole.segments[-1].end
    assert result.duration < whole_end - 1 and result.segments[-1].end < whole_end - 1, (result.duration, whole_end)


@pytest.mark.slow
def test_a_source_error_is_raised_to_the_caller(breaking_server, two_people_ts, sample_bytes):
    def broken():
        yield two_people_ts.read_bytes()[:65536]
        raise OSError("the camera went away")

    with Fv2esClient(breaking_server.grpc_url) as client, pytest.raises(OSError, match="camera went away"):
        list(client.stream(broken()))
    survived(breaking_server, sample_bytes)


@pytest.mark.slow
def test_a_server_that_takes_longer_than_the_timeout(breaking_server, two_people_ts, sample_bytes):
    with Fv2esClient(breaking_server.grpc_url) as impatient:
        started = time.monotonic()
        with pytest.raises(Fv2esError) as raised:
            list(impatient.stream([two_people_ts.read_bytes()], timeout_s=0.1))
        assert time.monotonic() - started < 10
    assert raised.value.code == "DEADLINE_EXCEEDED"
    survived(breaking_server, sample_bytes)


@pytest.mark.slow
def test_a_step_model_that_is_not_loaded_ends_the_stream_with_its_error(breaking_server, two_people_ts, sample_bytes):
    """A step the stream runs (BLS) unloaded by an admin: the stream ends with that step's error and
    Triton's code for it, not as a bad input (INVALID_ARGUMENT is for what the client sent)."""
    admin = grpcclient.InferenceServerClient(breaking_server.grpc_url)
    key = {f"triton-grpc-protocol-{config.ADMIN_KEY_HEADER}": breaking_server.admin_key}
    admin.unload_model("text_encoder", headers=key)
    try:
        deadline = time.monotonic() + 60
        while admin.is_model_ready("text_encoder") and time.monotonic() < deadline:
            time.sleep(0.2)
        with Fv2esClient(breaking_server.grpc_url) as c, pytest.raises(Fv2esError) as raised:
            list(c.stream(file_chunks(two_people_ts, 16 * 1024)))
    finally:
        time.sleep(4 * config.STUB_WATCH_INTERVAL_S + 1)  # as in the unload test below: the watchdog first
        admin.load_model("text_encoder", headers=key)
    assert raised.value.code not in ("INVALID_ARGUMENT", "OK"), raised.value
    assert raised.value.message().startswith(f"{config.STREAM_MODEL_NAME}: text_encoder:")
    assert "not ready" in raised.value.message()
    survived(breaking_server, sample_bytes)


def test_the_stream_model_must_be_served(server):
    with Fv2esClient(server.grpc_url, retries=0, stream_model="no_such_stream") as c:
        with pytest.raises(ModelNotReadyError) as raised:
            c.stream([b"a"])
        assert c.connect().from_server, "the whole-file model is still served"
    assert raised.value.code == "MODEL_NOT_FOUND"
    assert "no_such_stream" in raised.value.message() and "--stream-model" in raised.value.message()


@pytest.mark.slow
def test_an_unloaded_stream_model_is_refused_before_anything_is_sent(spare_server, sample_bytes):
    """fv2es_stream unloaded (with the admin key; on the spare server), then loaded again. Without the key
    (the repository index is behind it) Triton's answers make an unloaded model look like a missing one."""
    server = spare_server
    admin = grpcclient.InferenceServerClient(server.grpc_url)
    key = {f"triton-grpc-protocol-{config.ADMIN_KEY_HEADER}": server.admin_key}
    admin.unload_model(config.STREAM_MODEL_NAME, headers=key)
    try:
        deadline = time.monotonic() + 60
        while admin.is_model_ready(config.STREAM_MODEL_NAME) and time.monotonic() < deadline:
            time.sleep(0.2)
        with Fv2esClient(server.grpc_url, retries=0) as c, pytest.raises(ModelNotReadyError) as raised:
            c.stream([b"a"])
        assert raised.value.code == "MODEL_NOT_FOUND"
        assert f"does not serve model '{config.STREAM_MODEL_NAME}'" in raised.value.message()
    finally:
        # The stub watchdog must have seen the unloaded model's stubs go (and left them alone) before
        # it is loaded again: a dead stub it first sees after the reload looks like a crash to it.
        time.sleep(4 * config.STUB_WATCH_INTERVAL_S + 1)
        admin.load_model(config.STREAM_MODEL_NAME, headers=key)
    assert admin.is_model_ready(config.STREAM_MODEL_NAME)
    with Fv2esClient(server.grpc_url) as client:
        assert client.analyze(sample_bytes).segments
    time.sleep(4 * config.STUB_WATCH_INTERVAL_S + 1)
    assert all(r["model"] != config.STREAM_MODEL_NAME for r in server.watchdog.recoveries), \
        "the watchdog took the unload for a crash"


# -- fv2es-client --stream against the real server ------------------------------------------------


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    return subprocess.run([sys.executable, "-m", "fv2es_client", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_cli_stream_prints_rows_then_the_summary(server, two_people_ts, whole):
    done = run_cli("--stream", str(two_people_ts), "--stream-mode", "exact", "--chunk-kib", "8", "--url", server.grpc_url)
    assert done.returncode == 0, done.stderr
    n = len(whole.segments)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(two_people_ts))
    assert lines[1].split()[:7] == ["start", "end", "emotion", "score", "face", "speech", "speaker"]
    rows = lines[2 : 2 + n]
    assert [float(r.split()[0]) for r in rows] == pytest.approx([s.start for s in whole.segments], abs=0.01)
    assert [r.split()[2] for r in rows] == [s.emotion for s in whole.segments]
    assert "  people:" in lines and any(line.split()[:2] == ["person", "1"] for line in lines[2 + n :])
    assert f"({n} segments, " in done.stdout and f"overall emotion: {whole.emotion}" in done.stdout


def test_cli_stream_json_lines_and_csv(server, two_people_ts, whole):
    done = run_cli("--stream", str(two_people_ts), "--stream-mode", "exact", "--json", "--url", server.grpc_url)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["segment"] * len(whole.segments) + ["end"]
    assert events[0]["source"] == str(two_people_ts) and "people" in events[0]
    assert sorted(e["index"] for e in events[:-1]) == list(range(len(whole.segments)))
    assert [p["person"] for p in events[-1]["people"]] == sorted(whole.people)
    done = run_cli("--stream", str(two_people_ts), "--stream-mode", "exact", "--csv", "--url", server.grpc_url)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["speaker"] for r in rows] == [str(s.speaker) for s in whole.segments]  # -1: nobody or unknown
    assert "overall emotion:" in done.stderr and "overall emotion:" not in done.stdout


def test_cli_stream_follows_a_growing_file(server, two_people_ts, whole, tmp_path):
    path = tmp_path / "recording.ts"
    data = two_people_ts.read_bytes()
    write_slowly(path, [data[i : i + 32768] for i in range(0, len(data), 32768)], 0.1, marker=True)
    done = run_cli("--stream", str(path), "--stream-mode", "exact", "--follow", "--idle-timeout", "30", "--json", "--url", server.grpc_url)
    assert done.returncode == 0, done.stderr
    end = json.loads(done.stdout.splitlines()[-1])
    assert end["event"] == "end" and len(end["segments"]) == len(whole.segments)


def opened_by(pid: int, path: Path) -> bool:
    try:
        return any(f.path == str(path.resolve()) for f in psutil.Process(pid).open_files())
    except psutil.Error:  # the process ended
        return False


def test_cli_stream_first_ctrl_c_ends_the_stream_with_its_summary(server, two_people_ts, tmp_path):
    import signal

    path = tmp_path / "endless.ts"
    data = two_people_ts.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # never finished: no marker, no idle timeout
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    command = [sys.executable, "-m", "fv2es_client", "--stream", str(path), "--follow", "--idle-timeout", "0",
               "--url", server.grpc_url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        deadline = time.monotonic() + 60
        while not opened_by(process.pid, path) and time.monotonic() < deadline:  # the stream has started
            time.sleep(0.05)
        assert opened_by(process.pid, path), "the client never opened the file"
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopping" in stderr and "  overall emotion:" in stdout and " segment" in stdout


@pytest.mark.slow
def test_cli_stream_reports_the_servers_error(breaking_server, sample_bytes, tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"these are notes, not a video\n" * 2000)
    done = run_cli("--stream", str(bad), "--url", breaking_server.grpc_url)
    assert done.returncode == 1
    assert f"{bad}: error [INVALID_ARGUMENT]: {config.STREAM_MODEL_NAME}: " in done.stderr
    assert "not a readable video" in done.stderr
    done = run_cli("--stream", str(tmp_path / "missing.ts"), "--url", breaking_server.grpc_url)
    assert done.returncode == 1 and "error [FILE_NOT_FOUND]" in done.stderr
    survived(breaking_server, sample_bytes)


def test_cli_usage(server, two_people_ts):
    assert run_cli("--url", server.grpc_url).returncode == 2
    done = run_cli("--stream", str(two_people_ts), str(two_people_ts), "--url", server.grpc_url)
    assert done.returncode == 2 and "only one of them" in done.stderr
    done = run_cli("--follow", str(two_people_ts), "--url", server.grpc_url)
    assert done.returncode == 2 and "only with --stream" in done.stderr
    done = run_cli("--stream", str(two_people_ts), "--url", server.grpc_url, "--stream-model", "no_such_stream",
                   "--retries", "0")
    assert done.returncode == 2 and "does not serve model 'no_such_stream'" in done.stderr


def test_cli_whole_file_table_has_the_people(server, two_people_ts):
    done = run_cli(str(two_people_ts), "--url", server.grpc_url)
    assert done.returncode == 0, done.stderr
    assert "  people:" in done.stdout and "person 1" in done.stdout


def test_realtime_sends_a_ts_file_as_it_is_at_the_speed_it_plays(speech, tmp_path):
    """`--stream file.ts --realtime`: the bytes unchanged (no remux: a TS whose audio parameters the
    demuxer cannot probe is still sent), each part when the media it holds has played."""
    path = tmp_path / "clip.ts"
    path.write_bytes(synth.encode_video(frames=synth.talking_head_frames(75, 160, 120), fps=25, audio=speech[:48000],
                                        container_format="mpegts"))
    clock = byte_clock(path)
    assert clock and 2.5 < clock[-1][0] < 3.2 and clock[-1][1] <= path.stat().st_size
    started = time.monotonic()
    chunks, arrivals = [], []
    for chunk in source_chunks(path, realtime=True, chunk_bytes=4096):
        chunks.append(chunk)
        arrivals.append((time.monotonic() - started, len(chunk)))
    assert b"".join(chunks) == path.read_bytes() and max(n for _, n in arrivals) <= 4096
    assert 2.0 < arrivals[-1][0] < 5.0, arrivals[-1]  # paced: not all at once, not slower than it plays
    assert arrivals[0][0] < 0.5
