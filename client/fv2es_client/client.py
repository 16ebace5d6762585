"""Sends a video's bytes to the `fv2es` ensemble over gRPC and returns typed results."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

MODEL_NAME = "fv2es"
OUTPUTS = ("SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE",
           "VIDEO_SCORES", "LABELS", "MODEL_INFO")
# gRPC's default 4 MB limit is far below a video file: the client allows up to 1 GiB each way.
MAX_MESSAGE_BYTES = 1 << 30


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


@dataclass
class VideoResult:
    emotion: str
    scores: dict[str, float]
    segments: list[Segment]
    labels: list[str]
    model_info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


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


class Fv2esClient:
    def __init__(self, url: str = "127.0.0.1:8001", *, model: str = MODEL_NAME, timeout_s: float | None = 600.0):
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.client = grpcclient.InferenceServerClient(url, channel_args=options)
        self.model = model
        self.timeout_s = timeout_s

    def analyze(self, video: str | Path | bytes) -> VideoResult:
        """Classifies one video, given as a path or as the bytes of the file."""
        data = video if isinstance(video, (bytes, bytearray)) else Path(video).read_bytes()
        return parse_response(self.infer_raw(bytes(data)))

    def infer_raw(self, data: bytes) -> dict[str, np.ndarray]:
        tensor = grpcclient.InferInput("VIDEO", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        result = self.client.infer(self.model, [tensor], outputs=outputs, client_timeout=self.timeout_s)
        return {name: result.as_numpy(name) for name in OUTPUTS}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Fv2esClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
