"""Sends a video's bytes to the `fv2es` ensemble over gRPC and returns typed results.

    with Fv2esClient("127.0.0.1:8001") as client:
        result = client.analyze("video.mp4")      # or the bytes of the file

Before the first request the client checks that the server is live and the model ready, reads the
model's input limits (`max_input_bytes`, `max_duration_s` in the ensemble's config parameters) and
opens a gRPC channel sized for the largest input the server accepts. Files over that limit are
refused before they are sent. Every error the client raises is an `Fv2esError` (a tritonclient
`InferenceServerException`) with a `code`: the gRPC status name for errors from the server
(e.g. `INVALID_ARGUMENT`), or one of the client's own codes below. Unreadable files raise `OSError`.

Live streams go to the decoupled `fv2es_stream` model instead (`client.stream(chunks)`, see
`fv2es_client.stream`): each segment is yielded as soon as the server has it, the whole result last.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

DEFAULT_URL = "127.0.0.1:8001"
MODEL_NAME = "fv2es"
STREAM_MODEL_NAME = "fv2es_stream"
OUTPUTS = ("SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE",
           "VIDEO_SCORES", "LABELS", "MODEL_INFO")
# One timeline per person: requested only when the model's metadata lists them (older servers do not
# have them; their results then have no people).
PERSON_OUTPUTS = ("SEGMENT_SPEAKER", "PERSON_SEGMENTS", "PERSON_SEGMENT_SCORES", "PERSON_SCORES")
# The group's emotion (one answer for everyone in view), requested where the model has it. Its classes,
# in the order of the server's group_labels.txt (VGAF's).
GROUP_OUTPUTS = ("GROUP_SEGMENT_SCORES", "GROUP_SCORES")
GROUP_LABELS = ("positive", "neutral", "negative")
NO_SPEAKER = -1  # SEGMENT_SPEAKER of a segment whose speaker is unknown or that has none
DEFAULT_TIMEOUT_S = 600.0  # per video, end to end
DEFAULT_RETRIES = 3  # extra attempts after an UNAVAILABLE answer (no other status is retried)
RETRY_BACKOFF_S = 0.5  # first wait; doubled after each attempt
RETRY_BACKOFF_MAX_S = 8.0
HEALTH_TIMEOUT_S = 10.0  # per health / config call
MiB = 1 << 20
# Used when the model config carries no `max_input_bytes` (a deployment of other configs).
DEFAULT_MAX_INPUT_BYTES = 512 * MiB
# Room for the request's metadata and protobuf framing above the video bytes.
MESSAGE_HEADROOM_BYTES = 1 * MiB
# gRPC (and Triton's gRPC endpoint, hard-coded) cannot take messages of 2 GiB or more.
GRPC_MAX_MESSAGE_BYTES = (1 << 31) - 1

# The client's own error codes (server errors carry the gRPC status name).
SERVER_UNAVAILABLE = "UNAVAILABLE"
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
MODEL_NOT_READY = "MODEL_NOT_READY"
INPUT_TOO_LARGE = "INPUT_TOO_LARGE"


class Fv2esError(InferenceServerException):
    """An error with a status `code` and a message; `status()` returns the code too."""

    def __init__(self, code: str, message: str):
        super().__init__(msg=message, status=code)
        self.code = code


class ServerUnavailableError(Fv2esError):
    """No server answers at the address (refused, timed out, TLS handshake failed)."""


class ModelNotReadyError(Fv2esError):
    """The server answers but the model is not served or not ready."""


class InputTooLargeError(Fv2esError):
    """The input is over the server's `max_input_bytes`; it was not sent."""


def status_name(exc: InferenceServerException) -> str:
    """`StatusCode.INVALID_ARGUMENT` -> `INVALID_ARGUMENT`."""
    return str(exc.status() or "UNKNOWN").removeprefix("StatusCode.")


def mib(n: int) -> str:
    return f"{n / MiB:.2f} MiB"


def person_name(person: int) -> str:
    """How a person id is shown: `person 0`, `person 1`, ..."""
    return f"person {person}"


def top(scores: dict[str, float]) -> tuple[str, float]:
    """(label, score) of the highest score."""
    label = max(scores, key=scores.get)
    return label, scores[label]


@dataclass
class Segment:
    start: float
    end: float
    transcript: str
    scores: dict[str, float]
    has_speech: bool
    has_face: bool
    speaker: int = NO_SPEAKER  # person id of who speaks in the segment; -1: unknown or nobody
    people: dict[int, dict[str, float]] = field(default_factory=dict)  # person id -> scores in this segment
    index: int = -1  # position in the video's timeline (0, 1, ...)
    unsure_below: float | None = None  # the server's `unsure_below` (None: a server without one)
    group: dict[str, float] | None = None  # the group's scores over GROUP_LABELS (None: a server without them)

    @property
    def emotion(self) -> str:
        return max(self.scores, key=self.scores.get)

    @property
    def unsure(self) -> bool:
        """The top score is below the server's threshold: a guess, not an answer."""
        return self.unsure_below is not None and self.score < self.unsure_below

    @property
    def score(self) -> float:
        return self.scores[self.emotion]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict:
        """JSON-shaped: `people` keyed by the person id as a string, each {emotion, score, scores}."""
        people = {}
        for person, scores in sorted(self.people.items()):
            emotion, score = top(scores)
            people[str(person)] = {"emotion": emotion, "score": score, "scores": dict(scores)}
        return {
            "index": self.index, "start": self.start, "end": self.end, "transcript": self.transcript,
            "scores": dict(self.scores), "has_speech": self.has_speech, "has_face": self.has_face,
            "speaker": self.speaker, "people": people, "emotion": self.emotion, "score": self.score,
            "unsure": self.unsure, "group": group_dict(self.group),
        }


@dataclass
class PersonSummary:
    """One person over the whole video: overall scores, time on screen, segments where they speak."""

    person: int
    scores: dict[str, float]
    seconds: float  # total duration of the segments the person is seen in
    speaking_segments: list[int]  # indices of the segments whose speaker they are

    @property
    def emotion(self) -> str:
        return top(self.scores)[0]

    @property
    def score(self) -> float:
        return top(self.scores)[1]

    def speaking_seconds(self, segments: Sequence[Segment]) -> float:
        return sum(segments[i].duration for i in self.speaking_segments)

    def to_dict(self) -> dict:
        return {"person": self.person, "emotion": self.emotion, "score": self.score, "scores": dict(self.scores),
                "seconds": self.seconds, "speaking_segments": list(self.speaking_segments)}


@dataclass
class VideoResult:
    emotion: str
    scores: dict[str, float]
    segments: list[Segment]
    labels: list[str]
    model_info: dict = field(default_factory=dict)
    people: dict[int, dict[str, float]] = field(default_factory=dict)  # person id -> overall scores
    duration: float | None = None  # seconds of media, when the server says (live streams)
    unsure_below: float | None = None  # the server's `unsure_below` (None: a server without one)
    group: dict[str, float] | None = None  # the whole video's group scores over GROUP_LABELS

    @property
    def score(self) -> float:
        return self.scores[self.emotion]

    @property
    def unsure(self) -> bool:
        return self.unsure_below is not None and self.score < self.unsure_below

    def mark_unsure(self, threshold: float | None) -> "VideoResult":
        """Sets the server's threshold on the result and its segments (their `unsure`)."""
        self.unsure_below = threshold
        for segment in self.segments:
            segment.unsure_below = threshold
        return self

    def person_summaries(self) -> list[PersonSummary]:
        """Every person of PERSON_SCORES (ids 0..P-1), and anyone seen in a segment, in id order."""
        ids = sorted(set(self.people) | {p for s in self.segments for p in s.people})
        summaries = []
        for person in ids:
            seen = [s for s in self.segments if person in s.people]
            scores = self.people.get(person)
            if scores is None:  # seen, but no overall row: the duration-weighted mean of their segments
                total = sum(s.duration for s in seen) or 1.0
                scores = {label: sum(s.people[person][label] * s.duration for s in seen) / total for label in self.labels}
            summaries.append(PersonSummary(
                person=person, scores=dict(scores), seconds=sum(s.duration for s in seen),
                speaking_segments=[i for i, s in enumerate(self.segments) if s.speaker == person],
            ))
        return summaries

    def to_dict(self) -> dict:
        return {
            "emotion": self.emotion,
            "score": self.score,
            "scores": dict(self.scores),
            "labels": list(self.labels),
            "segments": [s.to_dict() for s in self.segments],
            "people": [p.to_dict() for p in self.person_summaries()],
            "model_info": self.model_info,
            "unsure": self.unsure,
            "unsure_below": self.unsure_below,
            "group": group_dict(self.group),
        }


@dataclass
class ServerLimits:
    """The model's input limits; `from_server` is False when the config had no `max_input_bytes`."""

    max_input_bytes: int
    max_duration_s: float | None
    from_server: bool

    @property
    def channel_bytes(self) -> int:
        return min(self.max_input_bytes + MESSAGE_HEADROOM_BYTES, GRPC_MAX_MESSAGE_BYTES)


def _label_scores(labels: Sequence[str], row) -> dict[str, float]:
    return {label: float(v) for label, v in zip(labels, row)}


def group_scores(rows: np.ndarray | None, n: int) -> list[dict[str, float] | None]:
    """GROUP_SEGMENT_SCORES [n, 3] (or GROUP_SCORES as [1, 3]) -> scores over GROUP_LABELS per row;
    all None when the server sent none."""
    if rows is None:
        return [None] * n
    rows = np.asarray(rows, np.float32).reshape(-1, len(GROUP_LABELS))
    if len(rows) != n:
        raise ValueError(f"group scores have {len(rows)} rows for {n} segments")
    return [_label_scores(GROUP_LABELS, row) for row in rows]


def group_dict(scores: dict[str, float] | None) -> dict | None:
    """JSON-shaped group scores: {emotion, score, scores}, or None."""
    if scores is None:
        return None
    emotion, score = top(scores)
    return {"emotion": emotion, "score": score, "scores": dict(scores)}


def person_rows(pairs: np.ndarray | None, pair_scores: np.ndarray | None, labels: Sequence[str],
                n_segments: int, first_segment: int = 0) -> list[dict[int, dict[str, float]]]:
    """PERSON_SEGMENTS [R, 2] (person, segment) and PERSON_SEGMENT_SCORES [R, C] -> for each of the
    `n_segments` segments from `first_segment` on, {person id: scores}."""
    people: list[dict[int, dict[str, float]]] = [{} for _ in range(n_segments)]
    if pairs is None or pair_scores is None:
        return people
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return people
    pair_scores = np.asarray(pair_scores, np.float32)
    if pair_scores.shape != (len(pairs), len(labels)):
        raise ValueError(f"PERSON_SEGMENT_SCORES is {list(pair_scores.shape)} for {len(pairs)} rows of "
                         f"PERSON_SEGMENTS and {len(labels)} labels")
    for (person, segment), row in zip(pairs, pair_scores):
        position = int(segment) - first_segment
        if not 0 <= position < n_segments or person < 0:
            raise ValueError(f"PERSON_SEGMENTS names person {int(person)} in segment {int(segment)}, "
                             f"outside segments {first_segment}..{first_segment + n_segments - 1}")
        people[position][int(person)] = _label_scores(labels, row)
    return people


def overall_people(person_scores: np.ndarray | None, labels: Sequence[str]) -> dict[int, dict[str, float]]:
    """PERSON_SCORES [P, C] -> {person id: scores}, ids 0..P-1."""
    if person_scores is None:
        return {}
    rows = np.asarray(person_scores, np.float32)
    if rows.size == 0:
        return {}
    if rows.ndim != 2 or rows.shape[1] != len(labels):
        raise ValueError(f"PERSON_SCORES is {list(rows.shape)} for {len(labels)} labels")
    return {person: _label_scores(labels, row) for person, row in enumerate(rows)}


def parse_response(outputs: dict[str, np.ndarray]) -> VideoResult:
    """The `fv2es` ensemble's outputs -> VideoResult; the person outputs are optional (no people)."""
    labels = [label.decode() for label in outputs["LABELS"]]
    video_scores = _label_scores(labels, outputs["VIDEO_SCORES"])
    n = len(outputs["SEGMENT_TIMES"])
    speakers = outputs.get("SEGMENT_SPEAKER")
    speakers = np.full(n, NO_SPEAKER, np.int64) if speakers is None else np.asarray(speakers).reshape(-1)
    if len(speakers) != n:
        raise ValueError(f"SEGMENT_SPEAKER has {len(speakers)} entries for {n} segments")
    people = person_rows(outputs.get("PERSON_SEGMENTS"), outputs.get("PERSON_SEGMENT_SCORES"), labels, n)
    groups = group_scores(outputs.get("GROUP_SEGMENT_SCORES"), n)
    segments = [
        Segment(
            start=float(times[0]),
            end=float(times[1]),
            transcript=text.decode("utf-8"),
            scores=_label_scores(labels, scores),
            has_speech=bool(speech),
            has_face=bool(face),
            speaker=int(speaker),
            people=persons,
            index=i,
            group=group,
        )
        for i, (times, text, scores, speech, face, speaker, persons, group) in enumerate(zip(
            outputs["SEGMENT_TIMES"], outputs["TRANSCRIPTS"], outputs["SEGMENT_SCORES"],
            outputs["SEGMENT_HAS_SPEECH"], outputs["SEGMENT_HAS_FACE"], speakers, people, groups,
        ))
    ]
    return VideoResult(
        emotion=max(video_scores, key=video_scores.get),
        scores=video_scores,
        segments=segments,
        labels=labels,
        model_info=json.loads(outputs["MODEL_INFO"][0].decode()),
        people=overall_people(outputs.get("PERSON_SCORES"), labels),
        group=group_scores(outputs.get("GROUP_SCORES"), 1)[0],
    )


def parse_limits(config: dict, default_max_input_bytes: int) -> ServerLimits:
    """Reads `max_input_bytes` and `max_duration_s` from a model config (get_model_config as JSON)."""
    parameters = config.get("parameters", {})

    def value(key: str) -> str | None:
        return parameters.get(key, {}).get("string_value")

    try:
        max_bytes = int(value("max_input_bytes"))
        from_server = True
    except (TypeError, ValueError):
        max_bytes, from_server = default_max_input_bytes, False
    try:
        max_duration = float(value("max_duration_s"))
    except (TypeError, ValueError):
        max_duration = None
    return ServerLimits(max_bytes, max_duration, from_server)


def unsure_threshold(config: dict) -> float | None:
    """The `unsure_below` parameter of a model config (get_model_config as JSON); None when absent."""
    try:
        return float(config.get("parameters", {}).get("unsure_below", {}).get("string_value"))
    except (TypeError, ValueError):
        return None


def requested_outputs(metadata: dict) -> tuple[str, ...]:
    """The ensemble outputs to ask for, from its metadata: OUTPUTS, and the person outputs where the
    model has them (a server from before them has not, and Triton refuses a request for an output
    the model lacks)."""
    served = {o.get("name") for o in metadata.get("outputs", [])}
    return OUTPUTS + tuple(name for name in PERSON_OUTPUTS + GROUP_OUTPUTS if name in served)


T = TypeVar("T")


class Fv2esClient:
    """One gRPC connection to an FV2ES server. Use one client per thread."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = MODEL_NAME,
        model_version: str = "",
        stream_model: str = STREAM_MODEL_NAME,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        default_max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    ):
        self.url = url
        self.model = model
        self.model_version = model_version
        self.stream_model = stream_model
        self.timeout_s = timeout_s
        self.retries = retries
        self.ssl = ssl or any(p is not None for p in (root_certificates, private_key, certificate_chain))
        self.tls_files = {
            "root_certificates": root_certificates, "private_key": private_key, "certificate_chain": certificate_chain,
        }
        self.default_max_input_bytes = default_max_input_bytes
        self.limits: ServerLimits | None = None
        self.unsure_below: float | None = None  # from the model config, on connect
        self.client: grpcclient.InferenceServerClient | None = None
        self.outputs: tuple[str, ...] = OUTPUTS  # what infer_raw requests: OUTPUTS and the person outputs served
        self.stream_config: dict | None = None  # the stream model's config, once it was found ready

    # -- connection ---------------------------------------------------------------------------

    def _open(self, message_bytes: int) -> grpcclient.InferenceServerClient:
        options = [("grpc.max_send_message_length", message_bytes), ("grpc.max_receive_message_length", message_bytes)]
        tls = {k: (str(v) if v is not None else None) for k, v in self.tls_files.items()}
        return grpcclient.InferenceServerClient(self.url, ssl=self.ssl, channel_args=options, **tls)

    def _retrying(self, call: Callable[[], T]) -> T:
        """Runs `call`, again after an UNAVAILABLE answer, up to `retries` times with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return call()
            except InferenceServerException as exc:
                if status_name(exc) != "UNAVAILABLE" or attempt == self.retries:
                    raise
            time.sleep(min(RETRY_BACKOFF_S * 2**attempt, RETRY_BACKOFF_MAX_S))
        raise AssertionError("unreachable")

    def connect(self) -> ServerLimits:
        """Health check (server live, model ready), reads the limits, opens the sized channel. Once."""
        if self.limits is not None:
            return self.limits
        with self._probing() as probe:
            self._check_model_ready(probe)
            config = self._retrying(lambda: probe.get_model_config(
                self.model, self.model_version, as_json=True, client_timeout=HEALTH_TIMEOUT_S))
            try:
                metadata = self._retrying(lambda: probe.get_model_metadata(
                    self.model, self.model_version, as_json=True, client_timeout=HEALTH_TIMEOUT_S))
            except InferenceServerException as exc:
                if status_name(exc) == "UNAVAILABLE":
                    raise
                metadata = {}
        self.outputs = requested_outputs(metadata)
        limits = parse_limits(config.get("config", {}), self.default_max_input_bytes)
        self.unsure_below = unsure_threshold(config.get("config", {}))
        self.client = self._open(limits.channel_bytes)
        self.limits = limits
        return limits

    def connect_stream(self) -> dict:
        """Health check for live streams (server live, the stream model ready); returns its config. Once."""
        if self.stream_config is not None:
            return self.stream_config
        with self._probing() as probe:
            self._check_model_ready(probe, self.stream_model, "", option="--stream-model")
            config = self._retrying(lambda: probe.get_model_config(
                self.stream_model, as_json=True, client_timeout=HEALTH_TIMEOUT_S))
        self.stream_config = config.get("config", {})
        return self.stream_config

    @contextlib.contextmanager
    def _probing(self) -> Iterator[grpcclient.InferenceServerClient]:
        """A small channel for health and config calls, with the server's liveness checked; every
        tritonclient error inside becomes an Fv2esError (UNAVAILABLE: a ServerUnavailableError)."""
        probe = self._open(MESSAGE_HEADROOM_BYTES)
        try:
            try:
                live = self._retrying(lambda: probe.is_server_live(client_timeout=HEALTH_TIMEOUT_S))
            except InferenceServerException as exc:
                raise ServerUnavailableError(SERVER_UNAVAILABLE, self._unavailable_message(exc)) from None
            if not live:
                raise ServerUnavailableError(SERVER_UNAVAILABLE, f"the server at {self.url} answers but is not live")
            yield probe
        except Fv2esError:
            raise
        except InferenceServerException as exc:
            if status_name(exc) == "UNAVAILABLE":
                raise ServerUnavailableError(SERVER_UNAVAILABLE, self._unavailable_message(exc)) from None
            raise Fv2esError(status_name(exc), exc.message()) from None
        finally:
            probe.close()

    def _unavailable_message(self, exc: InferenceServerException) -> str:
        details = exc.message() or ""
        lowered = details.lower()
        advice = "start one with `make serve` or pass --url"
        if "connection refused" in lowered:
            reason = "connection refused"
        elif status_name(exc) == "DEADLINE_EXCEEDED" or "deadline" in lowered:
            reason = f"no answer within {HEALTH_TIMEOUT_S:.0f} s"
        elif "socket closed" in lowered and not self.ssl:  # what a TLS port does to a plain connection
            reason = "the connection was closed by the other end"
            advice = "if the server's gRPC port uses TLS, pass --ssl (and --root-certs); otherwise check --url"
        elif "ssl" in lowered or "tls" in lowered or "handshake" in lowered:
            reason = f"TLS handshake failed: {details}"
            advice = "check --ssl (is the server's gRPC on TLS?) and --root-certs"
        else:
            reason = details
        return f"no FV2ES server answers at {self.url} ({reason}): {advice}"

    def _check_model_ready(self, probe: grpcclient.InferenceServerClient, model: str | None = None,
                           version: str | None = None, option: str = "--model") -> None:
        """Raises ModelNotReadyError (MODEL_NOT_FOUND or MODEL_NOT_READY) unless `model` (default: the
        client's) is ready; `option` is the command-line option the message suggests."""
        model = self.model if model is None else model
        version = self.model_version if version is None else version
        name = model + (f" version {version}" if version else "")
        try:
            if self._retrying(lambda: probe.is_model_ready(model, version, client_timeout=HEALTH_TIMEOUT_S)):
                return
        except InferenceServerException as exc:
            if status_name(exc) == "UNAVAILABLE":
                raise
        # The repository index says why; servers that keep it behind an admin key (ours do) refuse
        # it, and then the model's metadata (always open) tells a missing model from an unready one.
        try:
            index = probe.get_model_repository_index(as_json=True, client_timeout=HEALTH_TIMEOUT_S)
        except InferenceServerException:
            index = None
        if index is None:
            try:
                probe.get_model_metadata(model, client_timeout=HEALTH_TIMEOUT_S)  # any version of it
            except InferenceServerException as exc:
                if "unknown model" in (exc.message() or "").lower():
                    raise ModelNotReadyError(
                        MODEL_NOT_FOUND, f"the server at {self.url} does not serve model '{name}': pass {option}") from None
            raise ModelNotReadyError(MODEL_NOT_READY, f"the server at {self.url} answers but model '{name}' is not ready")
        models = index.get("models", [])
        entries = [m for m in models if m.get("name") == model]
        if not entries:
            served = ", ".join(sorted({m.get("name", "?") for m in models})) or "none"
            raise ModelNotReadyError(
                MODEL_NOT_FOUND, f"the server at {self.url} does not serve model '{name}' (models: {served}): pass {option}")
        states = "; ".join(
            f"version {m.get('version', '?')}: {m.get('state', 'UNKNOWN')}" + (f" ({m['reason']})" if m.get("reason") else "")
            for m in entries
        )
        raise ModelNotReadyError(
            MODEL_NOT_READY, f"the server at {self.url} answers but model '{name}' is not ready ({states})")

    # -- requests -----------------------------------------------------------------------------

    def check_size(self, size: int, name: str = "input") -> None:
        """Raises InputTooLargeError when `size` bytes are over the server's limit."""
        limits = self.connect()
        if limits.from_server:
            source = f"parameter max_input_bytes of model '{self.model}'"
        else:
            source = "the client's default: the model config has no max_input_bytes"
        if size > limits.max_input_bytes:
            raise InputTooLargeError(
                INPUT_TOO_LARGE, f"{name} is {mib(size)} ({size} bytes), over the server's limit of "
                f"{mib(limits.max_input_bytes)} ({limits.max_input_bytes} bytes, {source}): not sent")
        if size > GRPC_MAX_MESSAGE_BYTES - MESSAGE_HEADROOM_BYTES:
            raise InputTooLargeError(
                INPUT_TOO_LARGE, f"{name} is {mib(size)}, over gRPC's 2 GiB message limit: not sent")

    def analyze(self, video: str | Path | bytes) -> VideoResult:
        """Classifies one video, given as a path or as the bytes of the file."""
        if isinstance(video, (bytes, bytearray, memoryview)):
            data = bytes(video)
            self.check_size(len(data))
        else:
            path = Path(video)
            self.check_size(path.stat().st_size, str(path))  # before reading it
            data = path.read_bytes()
        result = parse_response(self.infer_raw(data))  # connects first: the threshold is known
        return result.mark_unsure(self.unsure_below)

    def infer_raw(self, data: bytes) -> dict[str, np.ndarray]:
        """Sends the bytes as they are (no size check) and returns the ensemble's outputs."""
        self.connect()
        tensor = grpcclient.InferInput("VIDEO", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        names = self.outputs
        outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        try:
            result = self._retrying(lambda: self.client.infer(
                self.model, [tensor], model_version=self.model_version, outputs=outputs, client_timeout=self.timeout_s))
        except InferenceServerException as exc:
            raise Fv2esError(status_name(exc), exc.message()) from None
        return {name: result.as_numpy(name) for name in names}

    def stream(self, chunks: Iterable[bytes], *, timeout_s: float | None = None,
               stop: threading.Event | None = None, mode: str | None = None) -> Iterator[Segment | VideoResult]:
        """Sends a growing container stream (MPEG-TS, Matroska/WebM, fragmented MP4), chunk after chunk,
        to the `fv2es_stream` model on one gRPC stream; yields each Segment as soon as the server has it,
        then the whole VideoResult last.

        The chunks are read and sent from a thread of their own, so segments come while chunks are still
        being sent. `timeout_s` (default: the client's) bounds each wait on the server: for an earlier
        chunk to be taken, and for the end once every chunk is sent. Setting `stop` ends the stream
        early: no more chunks are read, and the server still sends the rest and the result. A server
        error raises Fv2esError with its gRPC status name and message. The stream model's readiness is
        checked here, before anything is sent (ModelNotReadyError otherwise). `mode`: "low_latency"
        (each segment as soon as its pause ends it) or "exact" (the whole file's segments and scores,
        each up to a stretch late); None: the server's default (low_latency).
        """
        from .stream import run_stream  # noqa: PLC0415 - one module per feature

        config = self.connect_stream()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return run_stream(self, config, chunks, timeout_s=timeout, stop=stop, mode=mode)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.limits = None
        self.stream_config = None

    def __enter__(self) -> "Fv2esClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
