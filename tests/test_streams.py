"""The live streams' table (fv2es.streams): keys, slots and limits, on a clock the test moves.
The same rules against the real server are in tests/test_stream_limits.py."""

from __future__ import annotations

import pytest

from fv2es import config
import threading
import time

from fv2es.streams import StreamError, StreamLimits, StreamTable, Worker

LIMITS = StreamLimits(max_open=2, idle_s=30.0, max_wall_s=600.0, max_chunk_bytes=1024, max_pending_bytes=4096, min_pace=0.5,
                      pace_grace_s=20.0, stalled_s=10.0)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(clock):
    return StreamTable(LIMITS, clock)


def media(seconds: list[float]):
    """A media_s callback whose value the test sets through the list."""
    return lambda: seconds[0]


def test_a_chunk_reaches_the_stream_its_key_names_and_no_other(table):
    key_a, _ = table.open("a", media([0.0]))
    key_b, _ = table.open("b", media([0.0]))
    assert key_a != key_b and len(key_a) >= 32
    assert table.get(key_a) == "a" and table.get(key_b) == "b"
    for wrong in (None, "", key_a[:-1], key_a + "x", "x" * len(key_a)):
        with pytest.raises(StreamError):
            table.get(wrong)


def test_an_ended_streams_chunk_gets_the_reason_and_a_wrong_key_ends_nothing(table):
    key, _ = table.open("a", media([0.0]))
    with pytest.raises(StreamError):
        table.get("not-the-key")
    assert table.get(key) == "a"  # still open
    assert table.close(key, "it failed: bad bytes") == "a"
    with pytest.raises(StreamError, match="ended by the server: it failed: bad bytes"):
        table.get(key)
    assert table.close(key) is None


def test_an_ended_streams_chunks_reach_its_worker_until_it_has_finished(table):
    """So that a late chunk's answer (the reason) cannot overtake the error that ended the stream."""
    key, _ = table.open("a", media([0.0]))
    table.close(key, "it failed: bad bytes")
    assert table.get(key, ending=True) == "a"
    with pytest.raises(StreamError, match="it failed: bad bytes"):
        table.get(key)  # what the worker itself asks: the stream is no longer open
    table.finished("a")
    with pytest.raises(StreamError, match="it failed: bad bytes"):
        table.get(key, ending=True)
    assert len(table) == 0


def test_full_slots_refuse_a_new_stream_when_every_stream_keeps_up(table, clock):
    table.open("a", media([0.0]))
    table.open("b", media([0.0]))
    clock.now += 5  # young streams, not stalled
    with pytest.raises(StreamError) as info:
        table.open("c", media([0.0]))
    assert info.value.code_name == "UNAVAILABLE" and "2 stream slots" in str(info.value)


def test_a_slow_stream_gives_its_slot_to_a_new_one(table, clock):
    fast, slow = [0.0], [0.0]
    key_fast, _ = table.open("fast", media(fast))
    key_slow, _ = table.open("slow", media(slow))
    for _ in range(30):  # both send a chunk every second: one a second of media, one 0.03 s
        clock.now += 1
        fast[0] += 1.0
        slow[0] += 0.03
        table.get(key_fast), table.get(key_slow)
    key_new, evicted = table.open("new", media([0.0]))
    assert evicted == [("slow", evicted[0][1])] and "media per second" in evicted[0][1]
    with pytest.raises(StreamError, match="ended by the server: sent 0.03 s of media per second"):
        table.get(key_slow)
    assert table.get(key_fast) == "fast" and table.get(key_new) == "new"


def test_a_stalled_stream_gives_its_slot_even_before_the_grace_period(table, clock):
    key_a, _ = table.open("a", media([5.0]))
    table.open("b", media([5.0]))
    clock.now += 3
    table.get(key_a)
    clock.now += 11  # b silent for 14 s, a for 11 s: b (lower pace) goes first
    _, evicted = table.open("c", media([0.0]))
    assert [s for s, _ in evicted] == ["b"] and "sent nothing for 14 s" in evicted[0][1]


def test_time_a_streams_worker_spends_on_its_chunks_is_not_its_idle_time(table, clock):
    key, _ = table.open("a", media([0.0]))
    other, _ = table.open("b", media([0.0]))
    with table.working(key):  # a's worker is on a long stretch for 100 s: its client waits for the answers
        clock.now += 100
    assert [s for s, _ in table.expired()] == ["b"]  # another stream's work is not b's
    clock.now += 31
    assert [(s, r.split(" (")[0]) for s, r in table.expired()] == [("a", "no chunk for 31 s")]
    with pytest.raises(StreamError, match="no chunk for 31 s"):
        table.get(key)


def test_the_wall_time_limit_ends_a_stream_that_keeps_sending(table, clock):
    key, _ = table.open("a", media([0.0]))
    for _ in range(61):
        clock.now += 10
        table.get(key)
    assert [s for s, _ in table.expired()] == ["a"]


def test_draining_opens_no_stream_and_waits_for_open_ones(table):
    key, _ = table.open("a", media([0.0]))
    assert not table.drain_if_empty() and not table.draining
    table.close(key)
    assert table.drain_if_empty() and table.draining
    with pytest.raises(StreamError) as info:
        table.open("b", media([0.0]))
    assert info.value.code_name == "UNAVAILABLE" and "reloaded" in str(info.value)


def test_draining_ends_when_nothing_reloads_the_model_and_resumes_later(table, clock):
    assert table.drain_if_empty()
    clock.now += config.STREAM_DRAIN_TIMEOUT_S + 1  # a Triton without our watchdog: no reload came
    key, _ = table.open("a", media([0.0]))
    table.close(key)
    assert not table.drain_if_empty()
    clock.now += config.STREAM_DRAIN_RETRY_S
    assert table.drain_if_empty()


def test_limits_are_read_from_config_parameters():
    given = {"max_open": "3", "idle_s": "4.5"}
    limits = StreamLimits.from_parameters(lambda name, default: given.get(name, default))
    assert limits.max_open == 3 and isinstance(limits.max_open, int) and limits.idle_s == 4.5
    assert limits.max_chunk_bytes == StreamLimits().max_chunk_bytes


def test_a_worker_runs_its_streams_chunks_in_order_and_the_waiting_ones_after_close():
    ran, exited = [], threading.Event()
    release = threading.Event()

    def run(chunk):
        release.wait(5)
        ran.append(chunk)

    worker = Worker("test-worker", run, exited.set)
    for i in range(5):
        assert worker.submit(i, n_bytes=10)
    assert worker.waiting_bytes >= 40  # the first may be running; the others wait
    worker.close()
    release.set()
    assert worker.join(5) and exited.is_set()
    assert ran == [0, 1, 2, 3, 4] and worker.waiting_bytes == 0
    assert not worker.submit(5)  # ended: the model answers such a chunk itself


def test_a_chunk_stops_waiting_when_its_run_starts_not_when_it_returns():
    """The run answers its chunk before it returns: a client that waited for that answer and sends its
    next chunk at once must not find the answered one still counted against the pending limit (seen
    in test_stream_limits under load: "over 65536 bytes ... waiting" for a client that waited)."""
    answered, release, exited = threading.Event(), threading.Event(), threading.Event()

    def run(chunk):
        answered.set()  # the answer is out; the rest of the run (release) still to come
        release.wait(5)

    worker = Worker("test-worker", run, exited.set)
    assert worker.submit("first", n_bytes=64 * 1024)
    assert answered.wait(5)
    assert worker.waiting_bytes == 0
    release.set()
    worker.close()
    assert worker.join(5) and exited.is_set()


def test_a_chunk_whose_answer_fails_does_not_stop_the_worker():
    ran, errors, exited = [], [], threading.Event()

    def run(chunk):
        if chunk == "broken":
            raise RuntimeError("the client went away")
        ran.append(chunk)

    worker = Worker("test-worker", run, exited.set, on_error=errors.append)
    for chunk in ("a", "broken", "b"):
        worker.submit(chunk)
    worker.close()
    assert worker.join(5) and exited.is_set()
    assert ran == ["a", "b"] and [str(e) for e in errors] == ["the client went away"]


def test_workers_of_two_streams_run_at_once():
    started = {name: threading.Event() for name in "ab"}

    def run(name):
        started[name].set()
        other = "b" if name == "a" else "a"
        assert started[other].wait(5)  # each waits for the other: only possible side by side

    results = []
    workers = [Worker(f"w-{n}", lambda c, n=n: results.append(run(c)), lambda: None) for n in "ab"]
    t0 = time.monotonic()
    for worker, name in zip(workers, "ab"):
        worker.submit(name)
        worker.close()
    assert all(w.join(5) for w in workers) and len(results) == 2 and time.monotonic() - t0 < 5


def test_the_watchdog_kills_a_replaced_stub_still_alive_past_its_grace():
    """Triton waits for a replaced stub without a limit; the watchdog does not (a process that will
    not exit stands in for the stub)."""
    import subprocess
    import time

    from fv2es.watchdog import StubWatchdog, process_state

    stuck = subprocess.Popen(["sleep", "60"])
    try:
        watchdog = StubWatchdog(server_pid=-1, http_url="127.0.0.1:1", admin_key="x" * 16)
        watchdog._replaced[stuck.pid] = time.monotonic() + 60
        watchdog._kill_overdue_replaced()
        assert stuck.poll() is None and watchdog.killed_replaced == []  # within its grace: left alone
        watchdog._replaced[stuck.pid] = time.monotonic() - 1
        watchdog._kill_overdue_replaced()
        assert stuck.wait(timeout=10) == -9 and watchdog.killed_replaced == [stuck.pid]
        assert process_state(stuck.pid) is None and stuck.pid not in watchdog._replaced
    finally:
        stuck.kill()
