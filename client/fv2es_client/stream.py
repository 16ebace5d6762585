"""Live streams: a growing container stream's bytes to the decoupled `fv2es_stream` model, its answers back.

    with Fv2esClient("127.0.0.1:8001") as client:
        for event in client.stream(capture_chunks("rtsp://camera/stream")):   # fv2es_client.sources
            print(event)            # a Segment as soon as it is final; the VideoResult last

Protocol (one gRPC stream, one Triton sequence): every request carries `CHUNK` (BYTES [1]: the
stream's next bytes) with the same random 63-bit sequence id, `sequence_start` on the first and
`sequence_end` on the last (an empty chunk). The first request's first response is "open" with
STREAM_KEY, a secret the server issues; every later request carries it as the input STREAM_KEY
(BYTES [1]), so the sender waits for it after the first chunk: the key, not the sequence id, says
whose stream a chunk belongs to. The model answers with zero or more responses per
request, each with `EVENT`: "segment" (SEGMENT_INDEX, SEGMENT_TIMES, TRANSCRIPTS, SEGMENT_SCORES,
SEGMENT_HAS_SPEECH, SEGMENT_HAS_FACE, SEGMENT_SPEAKER, PERSON_SEGMENTS, PERSON_SEGMENT_SCORES of one
segment) or, once, after the last request's segments, "end" (VIDEO_SCORES, PERSON_SCORES, LABELS,
MODEL_INFO, DURATION). Each request also gets Triton's empty final response; the client counts
them to keep at most STREAM_WINDOW requests in flight, so a source faster than the server does not
pile up in memory. A server error comes in the stream as a message that starts with its gRPC status
name in brackets (`[INVALID_ARGUMENT] fv2es_stream: ...`), which becomes an Fv2esError with that
code. The stream is not opened with Triton's `triton_grpc_error` header (which would close the
stream with the status instead): tritonserver 2.51 aborts after a few streams that end that way
(a use-after-free fixed upstream in server PR 8708).

The segment responses carry no LABELS (only "end" does): segments are labelled with the stream
model's `labels` config parameter when it has one, else with DEFAULT_LABELS when the widths match;
the final VideoResult always uses the server's LABELS.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import threading
import time
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .client import (
    MESSAGE_HEADROOM_BYTES, NO_SPEAKER, Fv2esError, MiB, Segment, VideoResult, _label_scores, overall_people,
    group_scores, person_rows, status_name, unsure_threshold,
)

if TYPE_CHECKING:
    from .client import Fv2esClient

# The shipped model's labels (fv2es.config.LABELS), for the segments that arrive before "end" says.
DEFAULT_LABELS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
STREAM_WINDOW = 8  # requests sent but not yet answered with their final response
MAX_REQUEST_BYTES = 4 * MiB  # larger chunks are split (the stream is bytes: splitting changes nothing)
STREAM_CHANNEL_BYTES = 64 * MiB  # receive limit of the stream's channel (responses are small)
POLL_S = 0.1  # how often waiting threads look at the stop flags
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
STREAM_FAILED = "STREAM_FAILED"  # the stream ended without an "end" response
EVENT_SEGMENT, EVENT_END = "segment", "end"


def new_sequence_id() -> int:
    """A random non-zero 63-bit id: unique per stream with overwhelming probability."""
    return secrets.randbits(63) or 1


def stream_labels(config: dict, width: int) -> list[str]:
    """The labels for `width` scores before "end" gives them: the stream model's `labels` parameter
    (comma-separated), else DEFAULT_LABELS when `width` matches, else `label 0`, `label 1`, ..."""
    value = config.get("parameters", {}).get("labels", {}).get("string_value", "")
    labels = [label.strip() for label in value.split(",") if label.strip()]
    if len(labels) == width:
        return labels
    if len(DEFAULT_LABELS) == width:
        return list(DEFAULT_LABELS)
    return [f"label {i}" for i in range(width)]


def event_name(outputs: dict[str, np.ndarray | None]) -> str | None:
    """`segment`, `end`, or None for a response without EVENT (Triton's empty final response)."""
    event = outputs.get("EVENT")
    if event is None or np.size(event) == 0:
        return None
    value = np.asarray(event).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_segment_response(outputs: dict[str, np.ndarray], labels: Sequence[str] | None = None) -> Segment:
    """One "segment" response's arrays -> Segment. `labels` default: DEFAULT_LABELS (or LABELS when the
    response has them). PERSON_SEGMENTS rows must name this segment's index."""
    scores = np.asarray(outputs["SEGMENT_SCORES"], np.float32).reshape(-1)
    if outputs.get("LABELS") is not None:
        labels = [label.decode() if isinstance(label, bytes) else str(label) for label in outputs["LABELS"]]
    elif labels is None:
        labels = stream_labels({}, len(scores))
    if len(labels) != len(scores):
        raise ValueError(f"SEGMENT_SCORES has {len(scores)} scores for {len(labels)} labels")
    index = int(np.asarray(outputs["SEGMENT_INDEX"]).reshape(-1)[0])
    times = np.asarray(outputs["SEGMENT_TIMES"], np.float32).reshape(-1)
    text = np.asarray(outputs["TRANSCRIPTS"]).reshape(-1)[0]
    speaker = outputs.get("SEGMENT_SPEAKER")
    people = person_rows(outputs.get("PERSON_SEGMENTS"), outputs.get("PERSON_SEGMENT_SCORES"), labels, 1, index)[0]
    return Segment(
        start=float(times[0]),
        end=float(times[1]),
        transcript=text.decode("utf-8") if isinstance(text, bytes) else str(text),
        scores=_label_scores(labels, scores),
        has_speech=bool(np.asarray(outputs["SEGMENT_HAS_SPEECH"]).reshape(-1)[0]),
        has_face=bool(np.asarray(outputs["SEGMENT_HAS_FACE"]).reshape(-1)[0]),
        speaker=NO_SPEAKER if speaker is None else int(np.asarray(speaker).reshape(-1)[0]),
        people=people,
        index=index,
        group=group_scores(outputs.get("GROUP_SEGMENT_SCORES"), 1)[0],
    )


def parse_end_response(outputs: dict[str, np.ndarray], segments: Sequence[dict[str, np.ndarray]]) -> VideoResult:
    """The "end" response's arrays and every "segment" response's arrays -> the stream's VideoResult,
    segments in index order, labelled with the end's LABELS."""
    labels = [label.decode() for label in outputs["LABELS"]]
    scores = _label_scores(labels, np.asarray(outputs["VIDEO_SCORES"]).reshape(-1))
    parsed = sorted((parse_segment_response(s, labels) for s in segments), key=lambda s: s.index)
    duration = outputs.get("DURATION")
    return VideoResult(
        emotion=max(scores, key=scores.get),
        scores=scores,
        segments=parsed,
        labels=labels,
        model_info=json.loads(np.asarray(outputs["MODEL_INFO"]).reshape(-1)[0].decode()),
        people=overall_people(outputs.get("PERSON_SCORES"), labels),
        duration=None if duration is None else float(np.asarray(duration).reshape(-1)[0]),
        group=group_scores(outputs.get("GROUP_SCORES"), 1)[0],
    )


def response_arrays(result: grpcclient.InferResult) -> dict[str, np.ndarray]:
    response = result.get_response()
    return {output.name: result.as_numpy(output.name) for output in response.outputs}


def is_final(result: grpcclient.InferResult) -> bool:
    """Whether this response is its request's last (Triton's `triton_final_response` parameter)."""
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


def pieces(chunks: Iterable[bytes], limit: int = MAX_REQUEST_BYTES) -> Iterator[bytes]:
    """The non-empty chunks, those over `limit` bytes cut into pieces of at most `limit`."""
    for chunk in chunks:
        chunk = bytes(chunk)
        for start in range(0, len(chunk), limit):
            yield chunk[start : start + limit]


class _Stream:
    """The state one stream's three threads share: the caller's (consuming), the sender's, and
    tritonclient's response thread (the callback, which only queues and never blocks)."""

    def __init__(self, timeout_s: float | None, stop: threading.Event | None):
        self.events: queue.Queue = queue.Queue()  # (kind, payload); unbounded: a slow consumer blocks nobody
        self.window = threading.Semaphore(STREAM_WINDOW)
        self.halt = threading.Event()  # set by the consumer: the sender stops at once
        self.stop = stop or threading.Event()  # set by the user: the sender ends the stream normally
        self.timeout_s = timeout_s
        self.last_answer = time.monotonic()  # last response, or when the sender finished
        self.sent_all = False
        self.key: str | None = None  # the stream's key, from the "open" response
        self.opened = threading.Event()
        self.keyed = True  # the server issues keys (a server before them has no STREAM_KEY input)
        self.mode: str | None = None  # the stream's mode, sent on its first request (None: the server's default)

    def callback(self, result, error) -> None:
        self.last_answer = time.monotonic()
        if error is not None:
            self.events.put(("error", error))
            return
        if not self.opened.is_set() and result.as_numpy("STREAM_KEY") is not None:
            self.key = result.as_numpy("STREAM_KEY").reshape(-1)[0].decode()
            self.opened.set()
        if is_final(result):
            self.window.release()
        self.events.put(("result", result))

    def wait_for_window(self) -> bool:
        """Waits for a free slot; False when halted. Raises Fv2esError after timeout_s without answers."""
        while not self.window.acquire(timeout=POLL_S):
            if self.halt.is_set():
                return False
            if self.timeout_s is not None and time.monotonic() - self.last_answer > self.timeout_s:
                raise Fv2esError(DEADLINE_EXCEEDED, f"the server took no chunk for {self.timeout_s:.0f} s "
                                 f"({STREAM_WINDOW} chunks waiting)")
        return not self.halt.is_set()

    def wait_for_key(self) -> bool:
        """Waits for the "open" response's key; False when halted. Raises Fv2esError after timeout_s."""
        while not self.opened.wait(POLL_S):
            if self.halt.is_set():
                return False
            if self.timeout_s is not None and time.monotonic() - self.last_answer > self.timeout_s:
                raise Fv2esError(DEADLINE_EXCEEDED, f"the server did not open the stream in {self.timeout_s:.0f} s")
        return not self.halt.is_set()


def _send(client: Fv2esClient, grpc: grpcclient.InferenceServerClient, state: _Stream, chunks: Iterable[bytes],
          sequence_id: int) -> None:
    """The sender thread: every chunk as a request of the sequence, then an empty last one."""

    def send(data: bytes, first: bool, last: bool) -> None:
        inputs = [bytes_tensor("CHUNK", data)]
        if not first and state.keyed:
            inputs.append(bytes_tensor("STREAM_KEY", state.key.encode()))
        if first and state.mode is not None:
            inputs.append(bytes_tensor("STREAM_MODE", state.mode.encode()))
        grpc.async_stream_infer(client.stream_model, inputs, sequence_id=sequence_id, sequence_start=first,
                                sequence_end=last, enable_empty_final_response=True)

    try:
        first = True
        for piece in pieces(chunks):
            if state.halt.is_set() or state.stop.is_set():
                break
            if not state.wait_for_window():
                return
            send(piece, first, False)
            if first and state.keyed and not state.wait_for_key():
                return
            first = False
        if state.halt.is_set() or not state.wait_for_window():
            return
        send(b"", first, True)
        state.last_answer = time.monotonic()
        state.sent_all = True
    except Fv2esError as exc:  # the window's deadline
        state.events.put(("source_error", exc))
    except InferenceServerException:
        # The stream is closed (a server error, which the callback reports with its status, or the
        # consumer stopped it): nothing more to send.
        if not state.halt.is_set():
            state.events.put(("sender_closed", None))
    except BaseException as exc:  # noqa: BLE001 - the source's failure (unreadable file, camera gone): the caller's
        state.events.put(("source_error", exc))


def bytes_tensor(name: str, value: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
    return tensor


def stream_error(exc: InferenceServerException) -> Fv2esError:
    """A stream's error: a gRPC status (the connection failed), or a message in the stream that starts
    with the status name in brackets (the server's error)."""
    message = exc.message() or str(exc)
    sent = re.fullmatch(r"\[([A-Z_]+)\] (.*)", message, re.S)
    if exc.status() is None and sent:
        return Fv2esError(sent[1], sent[2])
    return Fv2esError(status_name(exc), message)


def run_stream(client: Fv2esClient, config: dict, chunks: Iterable[bytes], *, timeout_s: float | None,
               stop: threading.Event | None = None, mode: str | None = None) -> Iterator[Segment | VideoResult]:
    """The generator behind Fv2esClient.stream (the stream model is known to be ready)."""
    tls = {k: (str(v) if v is not None else None) for k, v in client.tls_files.items()}
    grpc = grpcclient.InferenceServerClient(client.url, ssl=client.ssl, channel_args=[
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES + MESSAGE_HEADROOM_BYTES),
        ("grpc.max_receive_message_length", STREAM_CHANNEL_BYTES)], **tls)
    state = _Stream(timeout_s, stop)
    state.keyed = uses_keys(config)
    if mode is not None:
        if not any(i.get("name") == "STREAM_MODE" for i in config.get("input", [])):
            raise Fv2esError("INVALID_ARGUMENT", "this server's stream model has one mode only (no STREAM_MODE input)")
        state.mode = mode
    return _events(client, grpc, state, config, chunks)


def uses_keys(config: dict) -> bool:
    """Whether the stream model takes STREAM_KEY (servers before keys do not: their streams are sent
    without one, as they were)."""
    return any(i.get("name") == "STREAM_KEY" for i in config.get("input", []))


def _events(client: Fv2esClient, grpc: grpcclient.InferenceServerClient, state: _Stream, config: dict,
            chunks: Iterable[bytes]) -> Iterator[Segment | VideoResult]:
    sequence_id = new_sequence_id()
    finished = False
    sender = None
    try:
        try:
            grpc.start_stream(state.callback)
        except InferenceServerException as exc:
            raise Fv2esError(status_name(exc), exc.message()) from None
        sender = threading.Thread(target=_send, args=(client, grpc, state, chunks, sequence_id),
                                  name=f"fv2es-stream-{sequence_id:x}", daemon=True)
        sender.start()
        segments: list[dict[str, np.ndarray]] = []
        labels: list[str] | None = None
        threshold = unsure_threshold(config)
        while True:
            try:
                kind, payload = state.events.get(timeout=POLL_S)
            except queue.Empty:
                waited = time.monotonic() - state.last_answer
                if state.sent_all and state.timeout_s is not None and waited > state.timeout_s:
                    raise Fv2esError(DEADLINE_EXCEEDED, f"no answer from the server for {state.timeout_s:.0f} s "
                                     "after the last chunk") from None
                continue
            if kind == "error":
                raise stream_error(payload) from None
            if kind == "source_error":
                raise payload
            if kind == "sender_closed":
                continue  # the callback has (or will have) the reason
            outputs = response_arrays(payload)
            event = event_name(outputs)
            if event == EVENT_SEGMENT:
                if labels is None:
                    labels = stream_labels(config, np.size(outputs["SEGMENT_SCORES"]))
                segments.append(outputs)
                segment = parse_segment_response(outputs, labels)
                segment.unsure_below = threshold
                yield segment
            elif event == EVENT_END:
                result = parse_end_response(outputs, segments).mark_unsure(threshold)
                finished = True
                yield result
                return
            # None: an empty final response (counted by the callback); other events: not ours to show
    finally:
        state.halt.set()
        try:
            grpc.stop_stream(cancel_requests=not finished)
        except Exception:  # noqa: BLE001 - closing a stream that already failed
            pass
        grpc.close()
        if sender is not None:
            sender.join(timeout=1.0)  # a source blocked in a read stays behind as a daemon thread


class RequestStream:
    """One gRPC stream to the stream model, a request at a time, with the sequence id it is given: the
    protocol as a hand-written client sees it (tests, the load test, clients that pace themselves).
    `request()` sends one chunk and returns the events it brought; the key from "open" is kept and
    sent on every later chunk unless `key` is given; `mode` (STREAM_MODE) goes with the first chunk.
    `finish()`'s result carries the server's unsure marks."""

    def __init__(self, url: str, sequence_id: int = 1, model: str = "fv2es_stream", *,
                 max_send_bytes: int = STREAM_CHANNEL_BYTES, timeout_s: float = 600.0, mode: str | None = None):
        self.grpc = grpcclient.InferenceServerClient(url, channel_args=[("grpc.max_send_message_length", max_send_bytes)])
        self.answers: queue.Queue = queue.Queue()
        self.grpc.start_stream(callback=lambda result, error: self.answers.put((result, error)))
        self.sequence_id, self.model, self.timeout_s = sequence_id, model, timeout_s
        self.key: str | None = None
        self.mode = mode
        self.segments: list[dict[str, np.ndarray]] = []

    def request(self, data: bytes, *, start: bool = False, end: bool = False, key: str | None = None) -> list[dict]:
        """One chunk, and the events its responses brought; raises Fv2esError for the server's error."""
        inputs = [bytes_tensor("CHUNK", data)]
        key = key or (None if start else self.key)
        if key:
            inputs.append(bytes_tensor("STREAM_KEY", key.encode()))
        if start and self.mode:
            inputs.append(bytes_tensor("STREAM_MODE", self.mode.encode()))
        self.grpc.async_stream_infer(self.model, inputs, sequence_id=self.sequence_id, sequence_start=start,
                                     sequence_end=end, enable_empty_final_response=True)
        events = []
        while True:
            result, error = self.answers.get(timeout=self.timeout_s)
            if error is not None:
                raise stream_error(error)
            outputs = response_arrays(result)
            event = event_name(outputs)
            if event == "open":
                self.key = outputs["STREAM_KEY"].reshape(-1)[0].decode()
            elif event == EVENT_SEGMENT:
                self.segments.append(outputs)
            if event:
                events.append(outputs)
            if is_final(result):
                return events

    def open(self, data: bytes) -> str:
        """The stream's first chunk; returns the key the server issued."""
        self.request(data, start=True)
        return self.key

    def finish(self, rest: bytes = b"") -> VideoResult:
        """The last bytes and the end: the stream's VideoResult."""
        if rest:
            self.request(rest)
        end = [e for e in self.request(b"", end=True) if event_name(e) == EVENT_END]
        config = self.grpc.get_model_config(self.model, as_json=True).get("config", {})
        return parse_end_response(end[0], self.segments).mark_unsure(unsure_threshold(config))

    def close(self) -> None:
        """Cancels the gRPC stream (what a client that goes away does)."""
        try:
            self.grpc.stop_stream(cancel_requests=True)
        finally:
            self.grpc.close()
