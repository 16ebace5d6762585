"""Live streams that no client can hijack, starve or drop (issue 22), against the real server, with
tritonclient streams written the way a hand-made client (or an attacker) would write them:
- a chunk reaches the stream whose server-issued key it carries, whatever its sequence id;
- a chunk over the size limit is refused before it is kept, and the memory it took is returned by
  reloading the model only once no stream is open (no stream lost, the replaced stub gone);
- slots come back from streams that drip, stall, go away or run past the wall-time limit;
- a client that sends without waiting for answers is stopped before its chunks fill the memory."""

from __future__ import annotations

import time
import urllib.request

import pytest
from conftest import serving

from fv2es import config
from fv2es.tritonserver import REPOSITORY, EmbeddedServer, limited_repository
from fv2es.watchdog import live_stubs, metric_values, process_state
from fv2es_build import synth
from fv2es_client import Fv2esError
from fv2es_client.stream import RequestStream, bytes_tensor, is_final

pytestmark = pytest.mark.slow  # a server of its own, with short stream limits

TS_PACKET = 188
SCORE_TOLERANCE = 1e-4
# A server whose stream limits are short enough to reach in a test.
LIMITS = {"max_open": "2", "idle_s": "4", "stalled_s": "2", "pace_grace_s": "2", "min_pace": "0.5", "max_wall_s": "12",
          "max_pending_bytes": str(64 * 1024)}


@pytest.fixture(scope="module")
def clip_a():
    """A 12 s MPEG-TS clip (two people taking turns) and what the whole file gives."""
    return synth.two_person_video(synth.TWO_PERSON_TURNS, container_format="mpegts")[0]


@pytest.fixture(scope="module")
def clip_b():
    """Another clip: one face, other speech, other length."""
    return synth.two_person_video(synth.TWO_PERSON_TURNS[:2], container_format="mpegts")[0]


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory):
    repository = limited_repository(tmp_path_factory.mktemp("stream-limits") / "models", repository=REPOSITORY,
                                    parameters={config.STREAM_MODEL_NAME: LIMITS})
    with serving(EmbeddedServer(repository)) as server:
        yield server


def raw_stream(url: str, sequence_id: int) -> RequestStream:
    # exact mode: these streams' results are compared with the whole file's
    return RequestStream(url, sequence_id, config.STREAM_MODEL_NAME, max_send_bytes=512 * 2**20, timeout_s=120, mode="exact")


def refused(stream: RequestStream, data: bytes, **flags) -> str:
    with pytest.raises(Fv2esError) as info:
        stream.request(data, **flags)
    return info.value.message()


def assert_same_result(streamed, whole) -> None:
    assert len(streamed.segments) == len(whole.segments)
    for mine, theirs in zip(streamed.segments, whole.segments):
        assert mine.transcript == theirs.transcript
        assert max(abs(mine.scores[k] - theirs.scores[k]) for k in theirs.scores) < SCORE_TOLERANCE
        assert mine.unsure_below == theirs.unsure_below is not None  # the server's marks, as the whole file's
    assert max(abs(streamed.scores[k] - whole.scores[k]) for k in whole.scores) < SCORE_TOLERANCE
    assert streamed.unsure_below == whole.unsure_below is not None


def end_and_close(streams) -> None:
    """Ends each stream that still has its slot, so that the next test does not wait for the idle limit
    to take it back, and closes it; a stream the server already ended refuses the end, as expected."""
    for stream in streams:
        try:
            if stream.key:
                stream.request(b"", end=True)
        except Fv2esError:
            pass
        finally:
            stream.close()


def halves(data: bytes) -> tuple[bytes, bytes]:
    middle = len(data) // 2 // TS_PACKET * TS_PACKET
    return data[:middle], data[middle:]


# --- Keys (item 4) --------------------------------------------------------------------------------

def test_another_client_with_the_victims_sequence_id_reaches_nothing_of_its_stream(server, client, clip_a, clip_b):
    whole_a, whole_b = client.analyze(clip_a), client.analyze(clip_b)
    victim, other = raw_stream(server.grpc_url, 1), raw_stream(server.grpc_url, 1)
    try:
        first, rest = halves(clip_a)
        key = victim.open(first)
        # the end with the victim's id: without the key, with a wrong key, with a key of its own
        assert "STREAM_KEY is missing" in refused(other, b"", end=True)
        assert "no open stream has this STREAM_KEY" in refused(other, b"", end=True, key=key[:-2] + "xx")
        # a start with the same id opens another stream: the victim's is not replaced
        other_key = other.open(halves(clip_b)[0])
        assert other_key != key
        # chunks of both, interleaved, same sequence id: each stream gets its own
        a_pieces = [rest[i : i + 64 * 1024] for i in range(0, len(rest), 64 * 1024)]
        b_rest = halves(clip_b)[1]
        b_pieces = [b_rest[i : i + 64 * 1024] for i in range(0, len(b_rest), 64 * 1024)]
        for i in range(max(len(a_pieces), len(b_pieces))):
            if i < len(a_pieces):
                victim.request(a_pieces[i])
            if i < len(b_pieces):
                other.request(b_pieces[i])
        assert_same_result(victim.finish(), whole_a)
        assert_same_result(other.finish(), whole_b)
        # the victim's ended stream answers nobody now, not even with its key
        assert "ended by the server: it ended" in refused(other, b"", end=True, key=key)
    finally:
        victim.close()
        other.close()


# --- Oversized chunks (items 2 and 9) -------------------------------------------------------------

def stream_metric(server, name: str) -> dict[str, float]:
    """A gauge of the stream model's stubs, by stub pid."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as reply:
        return metric_values(reply.read().decode(), name)


@pytest.fixture
def no_stream_open(limits_server):
    """The streams an earlier test left (cancelled, not ended) have given their slots back."""
    wait_for(lambda: sum(stream_metric(limits_server, config.STREAM_OPEN_METRIC).values()) == 0,
             float(LIMITS["idle_s"]) + 10, "no stream open")


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout_s} s")


def test_a_huge_chunk_is_refused_and_no_open_stream_is_lost_to_the_memory_it_took(server, client, clip_a, sample_bytes):
    """200 MiB in one chunk grows the stream stub's shared memory past the watchdog's limit: the
    watchdog used to reload the model in place at once, and every open stream was lost."""
    whole = client.analyze(clip_a)
    huge = 200 * 2**20
    assert huge > config.SHM_REGION_RESET_BYTES and huge > int(config.STREAM_MAX_CHUNK_BYTES)
    resets_before = len([r for r in server.watchdog.resets if r["model"] == config.STREAM_MODEL_NAME])
    victim, attacker = raw_stream(server.grpc_url, 7), raw_stream(server.grpc_url, 7)
    try:
        first, rest = halves(clip_a)
        victim.open(first)
        attacker.open(first[: 10 * TS_PACKET])
        message = refused(attacker, synth.noise_bytes(huge))
        assert f"over the limit of {config.STREAM_MAX_CHUNK_BYTES} bytes per chunk" in message, message
        time.sleep(3 * config.STUB_WATCH_INTERVAL_S + 2 * config.STREAM_REAP_INTERVAL_S)
        assert len([r for r in server.watchdog.resets if r["model"] == config.STREAM_MODEL_NAME]) == resets_before
        assert_same_result(victim.finish(rest), whole)
    finally:
        victim.close()
        attacker.close()
    # no stream open now: the model drains, the watchdog reloads it, the replaced stub exits
    resets = wait_for(lambda: [r for r in server.watchdog.resets if r["model"] == config.STREAM_MODEL_NAME][resets_before:],
                      60, "the stream model reloaded for its memory once no stream was open")
    # gone by itself, or killed by the watchdog DRAINED_STUB_GRACE_S after the reload (Triton would wait for it forever)
    wait_for(lambda: all(process_state(pid) in (None, "Z") for pid in resets[0]["replaced"]),
             config.DRAINED_STUB_GRACE_S + 30, "the replaced stub gone")
    if server.watchdog.killed_replaced:
        print(f"the replaced stub did not exit by itself and was killed: {server.watchdog.killed_replaced}")
    live = {str(pid) for pid, stub in live_stubs(server.process.pid).items() if stub.model == config.STREAM_MODEL_NAME}
    draining = stream_metric(server, config.STREAM_DRAINING_METRIC)
    assert live and all(draining.get(pid) == 0 for pid in live), (live, draining)
    streamed = list(client.stream([clip_a], mode="exact"))
    assert_same_result(streamed[-1], whole)
    assert client.analyze(sample_bytes).segments


def test_a_client_that_does_not_wait_for_answers_is_stopped_at_the_pending_limit(limits_server, no_stream_open, clip_a):
    """Chunks wait for their stream's worker; one that would make more than max_pending_bytes wait
    ends the stream with a message that says so, the later ones get that reason, and the server
    keeps serving."""
    stream = raw_stream(limits_server.grpc_url, 600)
    piece = 8 * 1024
    try:
        stream.open(clip_a[:piece])
        sent = 0
        for offset in range(piece, len(clip_a), piece):  # all at once, no answer awaited
            inputs = [bytes_tensor("CHUNK", clip_a[offset : offset + piece]), bytes_tensor("STREAM_KEY", stream.key.encode())]
            stream.grpc.async_stream_infer(config.STREAM_MODEL_NAME, inputs, sequence_id=600, enable_empty_final_response=True)
            sent += 1
        errors, done = [], 0
        while done < sent:
            result, error = stream.answers.get(timeout=120)
            if error is not None:
                errors.append(error.message())
            done += error is not None or is_final(result)
    finally:
        stream.close()
    limit = LIMITS["max_pending_bytes"]
    assert sent * piece > 2 * int(limit) and errors, (sent, errors)
    assert f"over {limit} bytes of the stream's chunks are waiting to be analysed" in errors[0], errors[0]
    assert all("the stream was ended by the server: it failed" in e and "waiting to be analysed" in e for e in errors[1:])
    retry = raw_stream(limits_server.grpc_url, 601)
    try:
        retry.open(clip_a[: 64 * 1024])
        assert retry.finish(clip_a[64 * 1024 :]).segments
    finally:
        retry.close()


# --- Slots (item 3) -------------------------------------------------------------------------------

def test_streams_that_drip_give_their_slots_to_a_new_stream(limits_server, no_stream_open, clip_a):
    drippers = [raw_stream(limits_server.grpc_url, 100 + i) for i in range(2)]
    newcomer = raw_stream(limits_server.grpc_url, 200)
    try:
        for dripper in drippers:
            dripper.open(clip_a[: 4 * TS_PACKET])
        for i in range(4):  # one packet a second: no media to speak of
            time.sleep(1.0)
            for dripper in drippers:
                dripper.request(clip_a[(4 + i) * TS_PACKET : (5 + i) * TS_PACKET])
        newcomer.open(clip_a[: 64 * 1024])  # refused before: "the server already has 2 streams open"
        messages = []
        for dripper in drippers:
            try:
                dripper.request(clip_a[8 * TS_PACKET : 9 * TS_PACKET])
            except Fv2esError as exc:  # the one that lost its slot
                messages.append(exc.message())
        assert len(messages) == 1 and "media per second" in messages[0] and "every stream slot was taken" in messages[0], messages
    finally:
        end_and_close((*drippers, newcomer))


def test_slots_of_clients_that_went_away_come_back(limits_server, no_stream_open, clip_a):
    gone = [raw_stream(limits_server.grpc_url, 300 + i) for i in range(2)]
    for stream in gone:
        stream.open(clip_a[: 64 * 1024])
        stream.close()  # cancels its gRPC stream: no more chunks, no end
    time.sleep(float(LIMITS["idle_s"]) + 2 * config.STREAM_REAP_INTERVAL_S + 1)
    fresh = [raw_stream(limits_server.grpc_url, 400 + i) for i in range(2)]
    try:
        for stream in fresh:
            stream.open(clip_a[: 64 * 1024])
        assert all(stream.key for stream in fresh)
    finally:
        end_and_close(fresh)


def test_a_stream_open_past_the_wall_time_limit_is_ended(limits_server, no_stream_open, clip_a):
    stream = raw_stream(limits_server.grpc_url, 500)
    try:
        stream.open(clip_a[: 64 * 1024])
        deadline = time.monotonic() + float(LIMITS["max_wall_s"]) + 3
        with pytest.raises(Fv2esError) as info:
            offset = 64 * 1024
            while time.monotonic() < deadline:
                time.sleep(1.0)  # a chunk a second keeps it from being idle
                stream.request(clip_a[offset : offset + TS_PACKET])
                offset += TS_PACKET
        assert f"open for over {float(LIMITS['max_wall_s']):g} s" in info.value.message()
    finally:
        stream.close()
    assert limits_server.process.poll() is None
