"""Sends a video's bytes to the `fv2es` ensemble over gRPC and returns typed results.

    with Fv2esClient("127.0.0.1:8001") as client:
        result = client.analyze("video.mp4")      # or the bytes of the file

Before the first request the client checks that the server is live and the model ready, reads the
model's input limits (`max_input_bytes`, `max_duration_s` in the ensemble's config parameters) and
opens a gRPC channel sized for the largest input the server accepts. Files over that limit are
refused before they are sent. Every error the client raises is an `Fv2esError` (a tritonclient
`InferenceServerException`) with a `code`: the gRPC status name for errors from the server
(e.g. `INVALID_ARGUMENT`), or one of the client's own codes below. Unreadable files raise `OSError`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

DEFAULT_URL = "127.0.0.1:8001"
MODEL_NAME = "fv2es"
OUTPUTS = ("SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE",
           "VIDEO_SCORES", "LABELS", "MODEL_INFO")
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


@dataclass
class Segment:
    start: float
    end: float
    transcript: str
    scores: dict[str, float]
    has_speech: bool
    has_face: bool

    @property
    def emotion(self) -> str:
        return max(self.scores, key=self.scores.get)

    @property
    def score(self) -> float:
        return self.scores[self.emotion]

    def to_dict(self) -> dict:
        return {**asdict(self), "emotion": self.emotion, "score": self.score}


@dataclass
class VideoResult:
    emotion: str
    scores: dict[str, float]
    segments: list[Segment]
    labels: list[str]
    model_info: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.scores[self.emotion]

    def to_dict(self) -> dict:
        return {
            "emotion": self.emotion,
            "score": self.score,
            "scores": dict(self.scores),
            "labels": list(self.labels),
            "segments": [s.to_dict() for s in self.segments],
            "model_info": self.model_info,
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


def parse_response(outputs: dict[str, np.ndarray]) -> VideoResult:
    labels = [label.decode() for label in outputs["LABELS"]]
    video_scores = {label: float(s) for label, s in zip(labels, outputs["VIDEO_SCORES"])}
    segments = [
        Segment(
            start=float(times[0]),
            end=float(times[1]),
            transcript=text.decode("utf-8"),
            scores={label: float(s) for label, s in zip(labels, scores)},
            has_speech=bool(speech),
            has_face=bool(face),
        )
        for times, text, scores, speech, face in zip(
            outputs["SEGMENT_TIMES"], outputs["TRANSCRIPTS"], outputs["SEGMENT_SCORES"],
            outputs["SEGMENT_HAS_SPEECH"], outputs["SEGMENT_HAS_FACE"],
        )
    ]
    return VideoResult(
        emotion=max(video_scores, key=video_scores.get),
        scores=video_scores,
        segments=segments,
        labels=labels,
        model_info=json.loads(outputs["MODEL_INFO"][0].decode()),
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


T = TypeVar("T")


class Fv2esClient:
    """One gRPC connection to an FV2ES server. Use one client per thread."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = MODEL_NAME,
        model_version: str = "",
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
        self.timeout_s = timeout_s
        self.retries = retries
        self.ssl = ssl or any(p is not None for p in (root_certificates, private_key, certificate_chain))
        self.tls_files = {
            "root_certificates": root_certificates, "private_key": private_key, "certificate_chain": certificate_chain,
        }
        self.default_max_input_bytes = default_max_input_bytes
        self.limits: ServerLimits | None = None
        self.client: grpcclient.InferenceServerClient | None = None

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
        probe = self._open(MESSAGE_HEADROOM_BYTES)
        try:
            try:
                live = self._retrying(lambda: probe.is_server_live(client_timeout=HEALTH_TIMEOUT_S))
            except InferenceServerException as exc:
                raise ServerUnavailableError(SERVER_UNAVAILABLE, self._unavailable_message(exc)) from None
            if not live:
                raise ServerUnavailableError(SERVER_UNAVAILABLE, f"the server at {self.url} answers but is not live")
            self._check_model_ready(probe)
            config = self._retrying(lambda: probe.get_model_config(
                self.model, self.model_version, as_json=True, client_timeout=HEALTH_TIMEOUT_S))
        except Fv2esError:
            raise
        except InferenceServerException as exc:
            if status_name(exc) == "UNAVAILABLE":
                raise ServerUnavailableError(SERVER_UNAVAILABLE, self._unavailable_message(exc)) from None
            raise Fv2esError(status_name(exc), exc.message()) from None
        finally:
            probe.close()
        limits = parse_limits(config.get("config", {}), self.default_max_input_bytes)
        self.client = self._open(limits.channel_bytes)
        self.limits = limits
        return limits

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

    def _check_model_ready(self, probe: grpcclient.InferenceServerClient) -> None:
        name = self.model + (f" version {self.model_version}" if self.model_version else "")
        try:
            if self._retrying(lambda: probe.is_model_ready(self.model, self.model_version, client_timeout=HEALTH_TIMEOUT_S)):
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
                probe.get_model_metadata(self.model, client_timeout=HEALTH_TIMEOUT_S)  # any version of it
            except InferenceServerException as exc:
                if "unknown model" in (exc.message() or "").lower():
                    raise ModelNotReadyError(
                        MODEL_NOT_FOUND, f"the server at {self.url} does not serve model '{name}': pass --model") from None
            raise ModelNotReadyError(MODEL_NOT_READY, f"the server at {self.url} answers but model '{name}' is not ready")
        models = index.get("models", [])
        entries = [m for m in models if m.get("name") == self.model]
        if not entries:
            served = ", ".join(sorted({m.get("name", "?") for m in models})) or "none"
            raise ModelNotReadyError(
                MODEL_NOT_FOUND, f"the server at {self.url} does not serve model '{name}' (models: {served}): pass --model")
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
        return parse_response(self.infer_raw(data))

    def infer_raw(self, data: bytes) -> dict[str, np.ndarray]:
        """Sends the bytes as they are (no size check) and returns the ensemble's outputs."""
        self.connect()
        tensor = grpcclient.InferInput("VIDEO", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            result = self._retrying(lambda: self.client.infer(
                self.model, [tensor], model_version=self.model_version, outputs=outputs, client_timeout=self.timeout_s))
        except InferenceServerException as exc:
            raise Fv2esError(status_name(exc), exc.message()) from None
        return {name: result.as_numpy(name) for name in OUTPUTS}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.limits = None

    def __enter__(self) -> "Fv2esClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
