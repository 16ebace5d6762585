"""fv2es_stream: a live stream's bytes in, each segment's emotions out as soon as the segment is final.

A decoupled model. A client sends a growing container stream (MPEG-TS, Matroska/WebM, fragmented
MP4: formats that can be read while they are written) as requests of one sequence (gRPC stream,
sequence id, start and end flags), CHUNK = the next bytes. Only bytes: the server opens no URL.

For each stream the model decodes audio and sampled frames as they arrive (fv2es.livemedia), finds
the faces frame by frame with the ensemble's own code (fv2es.faces.FaceRows: same batches, same
tracking, same persons), and cuts the timeline into stretches (fv2es.stretches): in "exact" mode
with the ensemble's own rule, in "low_latency" mode (the default, config.STREAM_MODE; a stream picks
its mode with STREAM_MODE on its first request) at every pause. When a stretch's cut is known and
its frames are searched, the steps of the ensemble after demux and face detection run on it, model
by model (BLS, `pipeline.plan`): in exact mode the stretch's segments are those the whole file gets,
with the same scores; in low-latency mode each segment is answered within seconds of its end, from
its own speech. Each segment goes out as a "segment" response; after the last request, one "end"
response has the whole stream's scores.

Who owns a stream is the key the first response ("open") gives, not the client's sequence id; the
slots, limits and key checks are fv2es.streams.StreamTable's. Any error ends the stream whose key the
failing request carried, and no other.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import checks, config, modalities, pipeline, stretches
from ..errors import InputError
from ..faces import FaceRows, make_face_detector
from ..livemedia import LiveMedia
from ..people import person_scores
from ..scene import SceneRows
from ..segments import aggregate_scores
from ..stages import face_rows
from ..streams import StreamError, StreamLimits, StreamTable, Worker
from ..watchdog import own_shm_region, shm_bytes
from .base import _error, bytes_input, input_limits, short


# Triton's gRPC status for each python-backend error code (as the server's GrpcStatusUtil maps them).
GRPC_STATUS = {"INVALID_ARG": "INVALID_ARGUMENT", "UNAVAILABLE": "UNAVAILABLE", "INTERNAL": "INTERNAL",
               "NOT_FOUND": "NOT_FOUND", "UNSUPPORTED": "UNIMPLEMENTED", "ALREADY_EXISTS": "ALREADY_EXISTS",
               "CANCELLED": "CANCELLED", "UNKNOWN": "UNKNOWN"}


class StepError(Exception):
    """A step's model failed for a reason other than the stream's content (not loaded, a fault of
    its own): the stream ends with that model's error code (a GRPC_STATUS key), not as a bad input."""

    def __init__(self, message: str, code_name: str):
        super().__init__(message)
        self.code_name = code_name


def stream_error(message: str, code_name: str) -> "pb_utils.TritonError":
    """The error a stream ends with. Clients read streams without `triton_grpc_error` (see execute), and
    then Triton sends only the message: it starts with the gRPC status name in brackets."""
    return _error(short(f"[{GRPC_STATUS[code_name]}] {message}"), code_name)


def tensor_text(request, name: str) -> str | None:
    """An optional TYPE_STRING [1] input as text; None when the request has none."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = bytes_input(tensor.as_numpy(), name)
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        expected = "the text the stream's first response gave" if name == "STREAM_KEY" else "ASCII text"
        raise InputError(f"{name} must be {expected}") from None


class StreamMetrics:
    """Gauges and a counter on Triton's metrics endpoint: open streams, whether the model is draining
    (the stub watchdog reads it: fv2es/watchdog.py), and streams ended by outcome. Labelled with the
    stub's pid: an in-place reload runs two stubs of the model for a while, each with its own."""

    def __init__(self, model: str):
        labels = {"model": model, "pid": str(os.getpid())}
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        self._families = {
            "open": pb_utils.MetricFamily(config.STREAM_OPEN_METRIC, "Live streams open", gauge),
            "draining": pb_utils.MetricFamily(config.STREAM_DRAINING_METRIC, "1 while the stream model takes no new "
                                              "stream so that it can be reloaded", gauge),
            "ended": pb_utils.MetricFamily(config.STREAM_ENDED_METRIC, "Live streams ended, by outcome", counter),
        }
        self._open = self._families["open"].Metric(labels=labels)
        self._draining = self._families["draining"].Metric(labels=labels)
        self._draining.set(0)
        self._draining_on = False
        self._ended = {outcome: self._families["ended"].Metric(labels={**labels, "outcome": outcome})
                       for outcome in ("ended", "failed", "expired", "evicted")}

    def open(self, count: int) -> None:
        self._open.set(count)

    def draining(self, on: bool) -> None:
        """Sends the gauge only when it changes (this runs after every request)."""
        if on != self._draining_on:
            self._draining.set(1 if on else 0)
            self._draining_on = on

    def ended(self, outcome: str) -> None:
        self._ended[outcome].increment(1)

    def close(self) -> None:
        """Takes this stub's metrics off the endpoint (a replaced stub's would stay there): the
        metrics before their families, as the python backend requires."""
        self._open = self._draining = None
        self._ended = {}
        self._families = {}


@dataclass
class Chunk:
    """A request of a stream as its worker gets it: the bytes, or the error it is answered with."""
    sender: object  # the request's response sender
    data: bytes = b""
    last: bool = False
    error: "pb_utils.TritonError | None" = None


class ChunkRefused(Exception):
    """A chunk refused when it came (too large, too much waiting): its error ends the stream in turn."""

    def __init__(self, error):
        super().__init__(error.message())
        self.error = error


class SharedDetector:
    """The model's one face detector, used by every stream's worker in turn: OpenCV's cascade is not
    documented as safe to call from several threads at once, and MTCNN runs on one CPU thread."""

    def __init__(self, detector):
        self._detector = detector
        self._lock = threading.Lock()
        self.batch_size = detector.batch_size

    def all_faces(self, *args, **kwargs):
        with self._lock:
            return self._detector.all_faces(*args, **kwargs)

    def largest_face(self, *args, **kwargs):
        with self._lock:
            return self._detector.largest_face(*args, **kwargs)


FACE_KEYS = ("FACES", "FACE_TIMES", "FACE_PERSON", "FACE_MAIN", "FACE_MOUTH")
STRETCH_OUTPUTS = (*pipeline.STREAM_SEGMENT_OUTPUTS[1:], "LABELS", "MODEL_INFO")


class Stream:
    """One live stream: its decoder, its faces, and the stretches not yet answered."""

    def __init__(self, detector, limits: checks.Limits, rule: stretches.StretchRule):
        self.live = LiveMedia(limits=limits)
        self.faces = FaceRows(detector)
        self.scenes = SceneRows()  # the frames at low resolution not yet given to a stretch
        self.rows: list[dict[str, np.ndarray]] = []  # face rows not yet given to a stretch
        self.cut = 0  # sample where the first stretch not yet answered starts
        self.cutter = stretches.Cutter(rule)  # keeps the open stretch's speech probabilities between chunks
        self.low_latency = rule.each_chunk  # a cut does not wait for the face search's batch to fill
        self.cuts: list[int] = []  # cuts decided, their stretches not yet answered
        self.segment_times: list[np.ndarray] = []
        self.segment_scores: list[np.ndarray] = []
        self.group_scores: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []
        self.pair_scores: list[np.ndarray] = []
        self.labels = self.model_info = None
        self.worker: Worker[Chunk] | None = None  # runs the stream's chunks (fv2es.streams.Worker)
        self.key = ""  # the key the table gave it

    @property
    def n_segments(self) -> int:
        return sum(len(t) for t in self.segment_times)

    def take_faces(self, final: bool) -> None:
        for t, grey in self.live.take_frames():
            self.scenes.add(t, grey)
            self.add_rows(self.faces.add(t, grey))
        if final:
            self.add_rows(self.faces.finish())

    def add_rows(self, rows) -> None:
        if rows is not None and len(rows["FACE_TIMES"]):
            self.rows.append(rows)

    def faces_until(self, end_s: float | None) -> dict[str, np.ndarray]:
        """The face rows and scene frames before `end_s` (all of them when None), removed from the pending ones."""
        return {**self._face_rows_until(end_s), **self.scenes.take(end_s)}

    def _face_rows_until(self, end_s: float | None) -> dict[str, np.ndarray]:
        if not self.rows:
            return face_rows({k: np.zeros((0, 1, config.FACE_SIZE, config.FACE_SIZE) if k == "FACES" else 0) for k in FACE_KEYS})
        rows = {k: np.concatenate([r[k] for r in self.rows]) for k in FACE_KEYS}
        before = np.ones(len(rows["FACE_TIMES"]), bool) if end_s is None else rows["FACE_TIMES"] < end_s
        rest = {k: v[~before] for k, v in rows.items()}
        self.rows = [rest] if len(rest["FACE_TIMES"]) else []
        return face_rows({k: v[before] for k, v in rows.items()})

    def stop(self) -> None:
        self.live.stop()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import json

        self.model_config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.parameters = {k: v["string_value"] for k, v in self.model_config.get("parameters", {}).items()}
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        if self.parameter("detector", config.FACE_DETECTOR) == "mtcnn" and device == "cpu":
            import torch

            torch.set_num_threads(config.MTCNN_CPU_THREADS)
        self.detector = SharedDetector(make_face_detector(self.parameter("detector", config.FACE_DETECTOR), device,
                                                          self.parameter("cascade", config.FACE_CASCADE)))
        self.opened = 0  # streams opened (names the workers' threads)
        self.limits = input_limits(self)
        self.table: StreamTable[Stream] = StreamTable(StreamLimits.from_parameters(self.parameter))
        self.steps = pipeline.steps(modalities=modalities.from_model(self.parameter),
                                    sparse_visual=self.parameter(pipeline.SPARSE_PARAMETER, "false") == "true")
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.model_config["output"]}
        self.shm_region = own_shm_region()
        self.metrics = StreamMetrics(self.name)
        self.closing = threading.Event()
        self.reaper = threading.Thread(target=self._reap, name="fv2es-stream-reaper", daemon=True)
        self.reaper.start()

    def parameter(self, name: str, default: str) -> str:
        return self.parameters.get(name, default) or default

    # --- Requests -------------------------------------------------------------------------------

    def execute(self, requests):
        """Hands each request to its stream's worker and returns: streams do not wait for each other
        (a decoupled model answers from any thread). Only what names the stream is read here."""
        for request in requests:
            self._hand_over(request)
        self._after_requests()
        return None

    def _hand_over(self, request) -> None:
        sender = request.get_response_sender()
        key = None
        try:
            key, stream = self._stream_of(request, sender)
            chunk = self._chunk_of(request, stream, sender)
        except Exception as exc:  # noqa: BLE001 - every request gets its answer; the server keeps serving
            if isinstance(exc, (InputError, StreamError)):
                error = stream_error(f"{self.name}: {exc}", getattr(exc, "code_name", "INVALID_ARG"))
            else:
                pb_utils.Logger.log_error(f"{self.name}: internal error: {traceback.format_exc()}")
                error = stream_error(f"{self.name}: internal error (details in the server log)", "INTERNAL")
            if key is None:  # no stream proven: nothing to end, nothing to keep in order
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            chunk = Chunk(sender, error=error)  # after the stream's earlier chunks, and it ends the stream
        if not stream.worker.submit(chunk, len(chunk.data)):
            self._answer_ended(key, sender)

    def _chunk_of(self, request, stream: "Stream", sender) -> "Chunk":
        last = bool(request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        tensor = pb_utils.get_input_tensor_by_name(request, "CHUNK")
        if tensor is None:
            raise InputError("CHUNK is missing: send the stream's next bytes")
        data = bytes_input(tensor.as_numpy(), "CHUNK")
        limits = self.table.limits
        if len(data) > limits.max_chunk_bytes:  # before the stream keeps any of it
            raise InputError(f"a chunk of {len(data)} bytes is over the limit of {limits.max_chunk_bytes} bytes "
                             "per chunk: send the stream in smaller chunks")
        waiting = stream.worker.waiting_bytes
        if waiting and waiting + len(data) > limits.max_pending_bytes:  # one chunk alone is bounded above
            raise InputError(f"over {limits.max_pending_bytes} bytes of the stream's chunks are waiting to be "
                             "analysed: wait for the answers to earlier chunks before sending more")
        return Chunk(sender, data=data, last=last)

    def _stream_of(self, request, sender) -> tuple[str, "Stream"]:
        """The stream a request's chunk belongs to: a new one (sequence_start), else the one its
        STREAM_KEY names."""
        mode = tensor_text(request, "STREAM_MODE")
        if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            return self._open(sender, mode or self.parameter("stream_mode", config.STREAM_MODE))
        if mode is not None:
            raise InputError("STREAM_MODE is chosen on a stream's first request only")
        key = tensor_text(request, "STREAM_KEY")
        return key, self.table.get(key, ending=True)  # an ended stream's worker answers why, in order

    def _answer_ended(self, key: str, sender) -> None:
        """A chunk for a stream whose worker has already ended: the reason the stream ended."""
        try:
            self.table.get(key, touch=False)
            message = "the stream has ended"  # not reached: a worker ends after its stream is closed
        except StreamError as exc:
            message = str(exc)
        sender.send(pb_utils.InferenceResponse(error=stream_error(f"{self.name}: {message}", "INVALID_ARG")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _run_chunk(self, stream: "Stream", chunk: "Chunk") -> None:
        """On the stream's worker: feeds the chunk and answers what became final; any error ends the
        stream (and no other). The chunk's request always gets its final response."""
        key = stream.key
        try:
            self.table.get(key, touch=False)  # still open (not failed, expired or evicted meanwhile)
            if chunk.error is not None:
                raise ChunkRefused(chunk.error)
            with self.table.working(key):
                if self._take(chunk, stream):
                    self._close(key, "it ended", "ended")
            chunk.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        except ChunkRefused as exc:
            error = exc.error
        except StreamError as exc:  # the stream had already ended: say why, end nothing
            chunk.sender.send(pb_utils.InferenceResponse(error=stream_error(f"{self.name}: {exc}", exc.code_name)),
                              flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        except InputError as exc:
            error = stream_error(f"{self.name}: {exc}", "INVALID_ARG")
        except StepError as exc:
            pb_utils.Logger.log_error(f"{self.name}: {exc}")
            error = stream_error(f"{self.name}: {exc}", exc.code_name)
        except Exception:  # noqa: BLE001 - logged; a short reply; the server keeps serving
            pb_utils.Logger.log_error(f"{self.name}: internal error: {traceback.format_exc()}")
            error = stream_error(f"{self.name}: internal error (details in the server log)", "INTERNAL")
        self._close(key, "it failed: " + error.message(), "failed")
        # The error and the final flag in one response (a final flag after an error response is a
        # use-after-free in tritonserver 2.51 on a stream opened with triton_grpc_error; server PR 8708).
        chunk.sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _take(self, chunk: "Chunk", stream: "Stream") -> bool:
        """Feeds the chunk's bytes to its stream and answers what became final; True at the end."""
        if chunk.data:
            stream.live.feed(chunk.data)
        if chunk.last:
            stream.live.close()
        self._advance(stream, chunk.sender, chunk.last)
        return chunk.last

    def _open(self, sender, mode: str) -> tuple[str, "Stream"]:
        if mode not in stretches.RULES:
            raise InputError(f"STREAM_MODE {mode[:40]!r} is not one of {', '.join(config.STREAM_MODES)}")
        stream = Stream(self.detector, self.limits, stretches.RULES[mode])
        # The worker exists before the table lists the stream (the reaper may close it at once).
        stream.worker = Worker(f"fv2es-stream-{self.opened}", lambda chunk: self._run_chunk(stream, chunk),
                               lambda: self._stop(stream),
                               on_error=lambda exc: pb_utils.Logger.log_error(f"{self.name}: a stream's answer failed: {exc!r}"))
        self.opened += 1
        try:
            stream.key, evicted = self.table.open(stream, lambda: stream.live.media_s)
        except BaseException:
            stream.worker.close()  # it stops the stream
            raise
        for old, reason in evicted:
            old.worker.close()
            self.metrics.ended("evicted")
            pb_utils.Logger.log_info(f"{self.name}: a stream was ended to free a slot: it {reason}")
        self.metrics.open(len(self.table))
        sender.send(self._response({"EVENT": np.array([b"open"], np.object_), "STREAM_KEY": np.array([stream.key.encode()], np.object_)}))
        return stream.key, stream

    def _stop(self, stream: "Stream") -> None:
        """The stream's worker has answered its last chunk: the stream's memory goes."""
        self.table.finished(stream)
        stream.stop()

    def _close(self, key: str, reason: str, outcome: str) -> None:
        stream = self.table.close(key, reason)
        if stream is not None:
            stream.worker.close()  # its waiting chunks get the reason; then it stops the stream
            self.metrics.ended(outcome)
            self.metrics.open(len(self.table))

    def _reap(self) -> None:
        """Ends the streams over their idle or wall-time limit; drains an oversized model."""
        while not self.closing.wait(config.STREAM_REAP_INTERVAL_S):
            try:
                expired = self.table.expired()
                for stream, reason in expired:
                    stream.worker.close()
                    self.metrics.ended("expired")
                    pb_utils.Logger.log_info(f"{self.name}: a stream was ended: {reason}")
                if expired:
                    self.metrics.open(len(self.table))
                self._after_requests()
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad round
                pb_utils.Logger.log_error(f"{self.name}: reaper: {traceback.format_exc()}")

    def _after_requests(self) -> None:
        """Once this stub's shared memory is over the watchdog's limit (a large chunk grew it), take
        no new stream when none is open: the watchdog then reloads the model, losing no stream."""
        if not self.table.draining and self.shm_region and shm_bytes(self.shm_region) > config.SHM_REGION_RESET_BYTES:
            if self.table.drain_if_empty():
                pb_utils.Logger.log_info(f"{self.name}: shared memory over {config.SHM_REGION_RESET_BYTES >> 20} MiB and "
                                         "no stream open: taking no new stream until the watchdog reloads the model")
        self.metrics.draining(self.table.draining)

    # --- Stretches ------------------------------------------------------------------------------

    def _advance(self, stream: Stream, sender, last: bool) -> None:
        """Answers every stretch whose cut is known and whose frames have all been searched."""
        stream.take_faces(final=last)
        audio = stream.live.audio
        stream.cuts.extend(stream.cutter.cuts(audio))
        while stream.cuts:
            cut = stream.cuts[0]
            end_s = cut / config.SAMPLE_RATE
            # every frame before the cut decoded (frames_until) and searched (done_until)
            if not last and stream.low_latency and stream.live.frames_until >= end_s > stream.faces.done_until:
                stream.add_rows(stream.faces.flush_until(end_s))
            if not last and min(stream.live.frames_until, stream.faces.done_until) < end_s:
                return
            self._stretch(stream, sender, audio[stream.cut : cut], end_s, faces=stream.faces_until(end_s),
                          probs=stream.cutter.stretch_probs.pop(0))
            stream.cut = stream.cuts.pop(0)
        if last:
            self._stretch(stream, sender, audio[stream.cut :], float(stream.live.duration), faces=stream.faces_until(None),
                          probs=stream.cutter.rest(audio))
            self._end(stream, sender)

    def _stretch(self, stream: Stream, sender, audio: np.ndarray, end_s: float, faces: dict, probs: np.ndarray) -> None:
        """Runs the steps on one stretch; `probs`: its VAD probabilities, which the cutter computed."""
        tensors = {"AUDIO": np.ascontiguousarray(audio, np.float32), "AUDIO_START": np.array([stream.cut], np.int64),
                   "DURATION": np.array([end_s], np.float32), "SPEECH_PROBS": np.ascontiguousarray(probs, np.float32), **faces}
        out = self._run(tensors, STRETCH_OUTPUTS)
        first = stream.n_segments
        pairs = out["PERSON_SEGMENTS"].copy()
        pairs[:, 1] += first
        for i in range(len(out["SEGMENT_TIMES"])):
            mine = pairs[:, 1] == first + i
            segment = {"EVENT": np.array([b"segment"], np.object_), "SEGMENT_INDEX": np.array([first + i], np.int64),
                       "PERSON_SEGMENTS": pairs[mine], "PERSON_SEGMENT_SCORES": out["PERSON_SEGMENT_SCORES"][mine]}
            for name in pipeline.STREAM_SEGMENT_OUTPUTS[1:]:
                segment.setdefault(name, out[name][i : i + 1])
            sender.send(self._response(segment))
        stream.segment_times.append(out["SEGMENT_TIMES"])
        stream.segment_scores.append(out["SEGMENT_SCORES"])
        stream.group_scores.append(out["GROUP_SEGMENT_SCORES"])
        stream.pairs.append(pairs)
        stream.pair_scores.append(out["PERSON_SEGMENT_SCORES"])
        stream.labels, stream.model_info = out["LABELS"], out["MODEL_INFO"]

    def _end(self, stream: Stream, sender) -> None:
        times, scores = np.concatenate(stream.segment_times), np.concatenate(stream.segment_scores)
        _, _, people = person_scores(np.concatenate(stream.pairs).reshape(-1, 2),
                                     np.concatenate(stream.pair_scores).reshape(-1, scores.shape[1]), times)
        sender.send(self._response({
            "EVENT": np.array([b"end"], np.object_), "VIDEO_SCORES": aggregate_scores(scores, times), "PERSON_SCORES": people,
            "LABELS": stream.labels, "MODEL_INFO": stream.model_info,
            "DURATION": np.array([stream.live.duration], np.float32),
            "GROUP_SCORES": aggregate_scores(np.concatenate(stream.group_scores), times),
        }))

    def _run(self, tensors: dict[str, np.ndarray], wanted) -> dict[str, np.ndarray]:
        """The ensemble's steps that make `wanted` from `tensors`, one model call each (BLS)."""
        tensors = dict(tensors)
        for step in pipeline.plan(self.steps, set(tensors), wanted):
            inputs = [pb_utils.Tensor(i.name, np.ascontiguousarray(tensors[step.source(i.name)])) for i in step.inputs_from(tensors)]
            request = pb_utils.InferenceRequest(model_name=step.model_name, inputs=inputs,
                                                requested_output_names=[o.name for o in step.outputs])
            response = request.exec()
            if response.has_error():
                error = response.error()
                code = error.code() if hasattr(error, "code") else None  # python_backend >= 23.09
                if code is None or code == pb_utils.TritonError.INVALID_ARG:
                    # The models check what they get: their INVALID_ARG is the stream's content (too long, ...).
                    raise InputError(error.message())
                message = error.message()  # our models' own errors start with their name
                code_name = next((n for n in GRPC_STATUS if getattr(pb_utils.TritonError, n, None) == code), "UNKNOWN")
                raise StepError(message if message.startswith(f"{step.model_name}:") else f"{step.model_name}: {message}", code_name)
            for o in step.outputs:
                tensors[step.target(o.name)] = pb_utils.get_output_tensor_by_name(response, o.name).as_numpy()
        return {name: tensors[name] for name in wanted}

    def _response(self, outputs: dict[str, np.ndarray]):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, np.asarray(value, dtype=self.output_dtypes[name])) for name, value in outputs.items()])

    def finalize(self) -> None:
        # No thread of ours may still talk to the server (a metric update is a message the stub waits
        # on) while the stub tears down: the reaper ends first.
        self.closing.set()
        self.reaper.join(timeout=config.STREAM_REAP_INTERVAL_S + 5)
        streams = self.table.remove_all("the server is unloading the stream model")
        for stream in streams:
            stream.worker.close()
        deadline = time.monotonic() + config.STREAM_WORKER_JOIN_S
        busy = sum(not stream.worker.join(timeout=max(0.0, deadline - time.monotonic())) for stream in streams)
        if busy:
            pb_utils.Logger.log_error(f"{self.name}: {busy} streams' workers were still busy {config.STREAM_WORKER_JOIN_S:g} s "
                                      "after the model began to unload")
        self.metrics.close()
