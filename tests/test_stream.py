"""Live streams (fv2es_stream) and one timeline per person, against the real server: a generated
clip with two different faces taking turns to speak, as a file and streamed in chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from fv2es import config, stretches
from fv2es.media import demux
from fv2es_build import synth
from fv2es_client import Fv2esError
from fv2es_client.client import Segment, VideoResult

SCORE_TOLERANCE = 1e-4
# Four rounds of the two speakers' turns: more than one stretch, the first cut well before the end.
TURNS = synth.TWO_PERSON_TURNS * 4


@pytest.fixture(scope="module")
def two_people():
    """(MPEG-TS bytes, turns): left and right take turns, one speaking at a time."""
    return synth.two_person_video(TURNS, container_format="mpegts")


@pytest.fixture(scope="module")
def whole(client, two_people):
    return client.analyze(two_people[0])


@pytest.fixture(scope="module")
def streamed(client, two_people):
    """The events of the clip streamed in 16 KiB chunks, and how many chunks had gone out when each arrived
    (the client keeps a few requests in flight: the chunks go out as the server takes them)."""
    sent = [0]

    def chunks():
        for chunk in file_chunks_of(two_people[0], 16 * 1024):
            sent[0] += 1
            yield chunk

    events = [(event, sent[0]) for event in client.stream(chunks(), mode="exact")]
    return events, sent[0]


@pytest.fixture(scope="module")
def low_latency(client, two_people):
    """The same in the server's default mode (low latency; `streamed` asks for the exact one)."""
    sent = [0]

    def chunks():
        for chunk in file_chunks_of(two_people[0], 16 * 1024):
            sent[0] += 1
            yield chunk

    events = [(event, sent[0]) for event in client.stream(chunks())]
    return events, sent[0]


def file_chunks_of(data: bytes, size: int):
    return (data[i : i + size] for i in range(0, len(data), size))


def test_the_clip_spans_several_stretches(whole, two_people):
    cuts = stretches.cuts(demux(two_people[0]).audio)
    assert len(cuts) >= 1
    assert whole.segments[-1].end > cuts[-1] / config.SAMPLE_RATE + 5
    assert len(whole.segments) >= 4


def test_two_people_are_told_apart_and_each_speaker_found(whole, two_people):
    _, turns = two_people
    assert sorted(whole.people) == [0, 1], whole.people
    # who is where: the person seen speaking in the first turn is the left one
    side_of = {}
    checked = 0
    for turn in turns:
        speaking = [s for s in whole.segments if s.has_speech and s.start < turn.end and s.end > turn.start
                    and min(s.end, turn.end) - max(s.start, turn.start) > 0.5 * (s.end - s.start)]
        for segment in speaking:
            assert segment.speaker >= 0, (turn, segment)
            assert side_of.setdefault(turn.side, segment.speaker) == segment.speaker, (turn, segment)
            checked += 1
    assert checked >= len(turns) and len(set(side_of.values())) == 2, side_of
    for segment in whole.segments:
        assert set(segment.people) <= {0, 1}
        for scores in segment.people.values():
            assert abs(sum(scores.values()) - 1) < 1e-3
    assert all(abs(sum(p.values()) - 1) < 1e-3 for p in whole.people.values())


def test_the_stream_gives_the_whole_files_segments(whole, streamed):
    events, total_chunks = streamed
    segments = [e for e, _ in events if isinstance(e, Segment)]
    final = events[-1][0]
    assert isinstance(final, VideoResult)
    assert len(segments) == len(whole.segments)
    for mine, theirs in zip(segments, whole.segments):
        assert mine.start == pytest.approx(theirs.start, abs=1e-5) and mine.end == pytest.approx(theirs.end, abs=1e-5)
        assert mine.transcript == theirs.transcript
        assert (mine.has_speech, mine.has_face, mine.speaker) == (theirs.has_speech, theirs.has_face, theirs.speaker)
        assert max(abs(mine.scores[k] - theirs.scores[k]) for k in theirs.scores) < SCORE_TOLERANCE
        assert sorted(mine.people) == sorted(theirs.people)
        for person, scores in theirs.people.items():
            assert max(abs(mine.people[person][k] - scores[k]) for k in scores) < SCORE_TOLERANCE
        assert max(abs(mine.group[k] - theirs.group[k]) for k in theirs.group) < SCORE_TOLERANCE  # the group's answer
    assert max(abs(final.scores[k] - whole.scores[k]) for k in whole.scores) < SCORE_TOLERANCE
    assert max(abs(final.group[k] - whole.group[k]) for k in whole.group) < SCORE_TOLERANCE
    # The stream model publishes the same unsure threshold as the ensemble; each segment is marked by it.
    assert final.unsure_below == whole.unsure_below == config.UNSURE_BELOW
    assert all(s.unsure_below == config.UNSURE_BELOW and s.unsure == (s.score < config.UNSURE_BELOW) for s in segments)
    assert sorted(final.people) == sorted(whole.people)
    for person, scores in whole.people.items():
        assert max(abs(final.people[person][k] - scores[k]) for k in scores) < SCORE_TOLERANCE


def test_segments_arrive_while_the_stream_is_still_coming(streamed):
    events, total_chunks = streamed
    first_segment_at = next(sent for e, sent in events if isinstance(e, Segment))
    assert first_segment_at < total_chunks, (first_segment_at, total_chunks)
    assert sum(isinstance(e, Segment) for e, sent in events if sent < total_chunks) >= 1


def test_low_latency_is_the_default_and_answers_a_stretch_sooner(streamed, low_latency, whole, two_people):
    """Low latency (the default) answers each segment once the pause after it is long enough, not
    when the stretch of up to a Whisper window of speech is over: its first answer comes long before
    the exact mode's and before the stream ends; its segments tile the same timeline in order."""
    events, total_chunks = low_latency
    first_low = next(sent for e, sent in events if isinstance(e, Segment))
    first_exact = next(sent for e, sent in streamed[0] if isinstance(e, Segment))
    first_cut_s = stretches.cuts(demux(two_people[0]).audio)[0] / config.SAMPLE_RATE
    assert first_low < first_exact and first_low < total_chunks, (first_low, first_exact, total_chunks)
    segments = [e for e, _ in events if isinstance(e, Segment)]
    assert segments[0].end < first_cut_s < segments[-1].start  # the exact mode's first stretch in several answers
    assert [s.index for s in segments] == list(range(len(segments)))
    assert all(a.end <= b.start + 1e-4 for a, b in zip(segments, segments[1:]))
    assert segments[-1].end == pytest.approx(whole.segments[-1].end, abs=0.05)
    final = events[-1][0]
    assert isinstance(final, VideoResult) and len(final.segments) == len(segments)
    assert sorted(final.people) == sorted(whole.people) == [0, 1]  # both persons, each speaker found
    assert {s.speaker for s in segments if s.has_speech} == {0, 1}


def test_streams_run_side_by_side_each_with_its_own_results(server, client, two_people, whole):
    """Each stream has a worker of its own: a short stream is answered in full while a long one's
    whole clip, sent as one chunk, is still being analysed (with one worker for all streams, as
    before, the short one's first request would wait for that chunk). Each gets its own results:
    the short one those it gets alone, the long one (exact mode) the whole file's."""
    import threading
    import time

    from fv2es_client.stream import RequestStream

    short = synth.two_person_video(synth.TWO_PERSON_TURNS[:1], container_format="mpegts")[0]
    alone = list(client.stream(file_chunks_of(short, 64 * 1024)))
    data, head = two_people[0], 64 * 1024
    long_stream = RequestStream(server.grpc_url, 41, config.STREAM_MODEL_NAME, timeout_s=300, mode="exact")
    finished = {}

    def send_long():
        finished["result"] = long_stream.finish(data[head:])  # the rest in one chunk, then the end
        finished["at"] = time.monotonic()

    try:
        long_stream.open(data[:head])
        sender = threading.Thread(target=send_long)
        sender.start()
        time.sleep(0.5)  # the long chunk is being analysed
        side_by_side = list(client.stream(file_chunks_of(short, 64 * 1024)))
        short_done = time.monotonic()
        sender.join(300)
    finally:
        long_stream.close()
    assert short_done < finished["at"], "the short stream waited for the long one"
    assert len(side_by_side) == len(alone) and isinstance(side_by_side[-1], VideoResult)
    for mine, theirs in zip(side_by_side[:-1], alone[:-1]):
        assert (mine.index, mine.start, mine.end, mine.transcript) == (theirs.index, theirs.start, theirs.end, theirs.transcript)
        assert max(abs(mine.scores[k] - theirs.scores[k]) for k in theirs.scores) < SCORE_TOLERANCE
    long_result = finished["result"]
    assert len(long_result.segments) == len(whole.segments)
    for mine, theirs in zip(long_result.segments, whole.segments):
        assert mine.transcript == theirs.transcript
        assert max(abs(mine.scores[k] - theirs.scores[k]) for k in theirs.scores) < SCORE_TOLERANCE
    assert max(abs(long_result.scores[k] - whole.scores[k]) for k in whole.scores) < SCORE_TOLERANCE


def test_a_stream_mode_is_chosen_on_the_first_request_only(server, two_people):
    from fv2es_client.stream import EVENT_END, RequestStream, bytes_tensor, event_name

    data = two_people[0]
    bogus = RequestStream(server.grpc_url, 31, config.STREAM_MODEL_NAME, timeout_s=60, mode="fastest")
    try:
        with pytest.raises(Fv2esError) as info:
            bogus.open(data[: 64 * 1024])
        assert info.value.code == "INVALID_ARGUMENT" and "STREAM_MODE 'fastest' is not one of low_latency, exact" in info.value.message()
    finally:
        bogus.close()
    stream = RequestStream(server.grpc_url, 32, config.STREAM_MODEL_NAME, timeout_s=60, mode="exact")
    try:
        key = stream.open(data[: 64 * 1024])
        inputs = [bytes_tensor("CHUNK", data[64 * 1024 : 128 * 1024]), bytes_tensor("STREAM_KEY", key.encode()),
                  bytes_tensor("STREAM_MODE", b"low_latency")]  # on a later request: refused
        stream.grpc.async_stream_infer(config.STREAM_MODEL_NAME, inputs, sequence_id=32, enable_empty_final_response=True)
        _, error = stream.answers.get(timeout=60)
        assert error is not None and "STREAM_MODE is chosen on a stream's first request only" in error.message()
        # The refusal left the stream open: it ends normally (and gives its slot back at once, not at the idle limit).
        assert any(event_name(e) == EVENT_END for e in stream.request(b"", end=True))
    finally:
        stream.close()


def test_a_url_is_not_opened(client):
    with pytest.raises(Fv2esError) as info:
        list(client.stream([b"rtsp://127.0.0.1:8554/live"]))
    assert info.value.code == "INVALID_ARGUMENT" and "not a readable video" in info.value.message()


def test_a_plain_mp4_is_refused_with_a_clear_message(client, sample_bytes):
    with pytest.raises(Fv2esError) as info:
        list(client.stream(file_chunks_of(sample_bytes, 4096)))
    assert info.value.code == "INVALID_ARGUMENT", info.value.message()
    assert "MPEG-TS" in info.value.message()


def test_streams_that_end_in_errors_leave_the_server_healthy(server, client, sample_bytes):
    """Many chunks in flight when the error comes, ten times over: tritonserver 2.51 aborted after two
    such streams when they were opened with triton_grpc_error (see fv2es_client.stream)."""
    for _ in range(10):
        with pytest.raises(Fv2esError) as info:
            list(client.stream(file_chunks_of(sample_bytes, 4096)))
        assert info.value.code == "INVALID_ARGUMENT"
        assert server.process.poll() is None, "tritonserver died: " + server.log_tail()
    assert "HandleCancellation called even when" not in Path(server.log_file).read_text(errors="replace")
    assert client.analyze(sample_bytes).segments


def test_a_chunk_of_a_stream_never_started_is_refused(server):
    import queue

    answers = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.start_stream(callback=lambda result, error: answers.put(error))
        chunk = grpcclient.InferInput("CHUNK", [1], "BYTES")
        chunk.set_data_from_numpy(np.array([b"\x47" * 188], np.object_))
        c.async_stream_infer(config.STREAM_MODEL_NAME, [chunk], sequence_id=424242, sequence_start=False)
        error = answers.get(timeout=30)
        c.stop_stream()
    assert error is not None and "STREAM_KEY is missing" in error.message()


def test_the_server_is_healthy_after_bad_streams(client, sample_bytes):
    result = client.analyze(sample_bytes)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()
