"""A stand-in for tritonserver's gRPC endpoint, for the client's tests that need no real server.

It speaks Triton's own protocol (tritonclient's service_pb2 messages on a real gRPC server on a free
loopback port) with just enough behaviour: health, readiness, config and metadata calls; `fv2es`
answering ModelInfer with a fixed set of arrays (and refusing outputs it does not list, as Triton
does); and `fv2es_stream` answering a gRPC stream the way the decoupled model is specified to:
one "segment" response per non-empty chunk, the "end" response after the last request, Triton's
empty final response per request, and, with the `triton_grpc_error` header, an error as the
stream's gRPC status. It records every request, so tests can check what the client sent.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from concurrent import futures

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype

ERROR_MARKER = b"<fake: not a video>"  # a chunk holding it is refused (random test bytes never do)
LABELS = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
C = len(LABELS)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def strings(*values: str | bytes) -> np.ndarray:
    return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)


def serialize_bytes(array: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in (bytes(x) for x in array.reshape(-1)))


def deserialize_bytes(raw: bytes) -> list[bytes]:
    values, offset = [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        values.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return values


def infer_response(model: str, arrays: dict[str, np.ndarray], final: bool | None = None) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=model, model_version="1")
    for name, value in arrays.items():
        value = np.asarray(value)
        output = response.outputs.add()
        output.name = name
        output.shape.extend(value.shape)
        if value.dtype == np.object_:
            output.datatype = "BYTES"
            response.raw_output_contents.append(serialize_bytes(value))
        else:
            output.datatype = np_to_triton_dtype(value.dtype)
            response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return response


def segment_arrays(index: int, with_people: bool = True) -> dict[str, np.ndarray]:
    """The fake stream's segment `index`: 1 s long; person 0 in every segment, person 1 in the even
    ones; the speaker person 0 in odd segments, nobody in even ones."""
    rng = np.random.default_rng(index)
    arrays = {
        "EVENT": strings("segment"),
        "SEGMENT_INDEX": np.array([index], np.int64),
        "SEGMENT_TIMES": np.array([[index, index + 1.0]], np.float32),
        "TRANSCRIPTS": strings(f"words of segment {index}"),
        "SEGMENT_SCORES": softmax(rng.normal(size=(1, C))),
        "SEGMENT_HAS_SPEECH": np.array([index % 2 == 1]),
        "SEGMENT_HAS_FACE": np.array([True]),
        "SEGMENT_SPEAKER": np.array([0 if index % 2 else -1], np.int64),
    }
    people = [0, 1] if index % 2 == 0 else [0]
    if with_people:
        arrays["PERSON_SEGMENTS"] = np.array([[p, index] for p in people], np.int64).reshape(-1, 2)
        arrays["PERSON_SEGMENT_SCORES"] = softmax(rng.normal(size=(len(people), C)) * 3)
    return arrays


def end_arrays(n_segments: int, labels: list[str] = LABELS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + n_segments)
    return {
        "EVENT": strings("end"),
        "VIDEO_SCORES": softmax(rng.normal(size=C)),
        "PERSON_SCORES": softmax(rng.normal(size=(2 if n_segments else 0, C)) * 3),
        "LABELS": strings(*labels),
        "MODEL_INFO": strings(json.dumps({"weights": "fake weights", "labels": labels})),
        "DURATION": np.array([float(n_segments)], np.float32),
    }


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves `fv2es` (whole files) and `fv2es_stream` (live streams) on 127.0.0.1:<port>."""

    def __init__(self, whole_file: dict[str, np.ndarray] | None = None, *, stream_ready: bool = True,
                 error_marker: bytes = ERROR_MARKER, stream_delay_s: float = 0.0, end_labels: list[str] = LABELS,
                 stream_labels_parameter: str | None = None):
        self.whole_file = whole_file or {}
        self.stream_ready = stream_ready
        self.error_marker = error_marker
        self.stream_delay_s = stream_delay_s
        self.end_labels = end_labels
        self.stream_labels_parameter = stream_labels_parameter
        self.stream_requests: list[dict] = []  # every stream request: sequence id, flags, bytes
        self.infer_requests: list[list[str]] = []  # the outputs each ModelInfer asked for
        self.stream_headers: list[dict] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeTriton":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)

    # -- health, config, metadata ---------------------------------------------------------------

    def models(self) -> dict[str, bool]:
        served = {"fv2es_stream": self.stream_ready} if self.stream_ready is not None else {}
        return {"fv2es": True, **served}

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=bool(self.models().get(request.name)))

    def _unknown(self, name: str, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")

    def ModelConfig(self, request, context):
        if request.name not in self.models():
            self._unknown(request.name, context)
        config = model_config_pb2.ModelConfig(name=request.name)
        if request.name == "fv2es":
            config.parameters["max_input_bytes"].string_value = "1000000"
        elif self.stream_labels_parameter is not None:
            config.parameters["labels"].string_value = self.stream_labels_parameter
        return service_pb2.ModelConfigResponse(config=config)

    def ModelMetadata(self, request, context):
        if request.name not in self.models():
            self._unknown(request.name, context)
        response = service_pb2.ModelMetadataResponse(name=request.name, versions=["1"], platform="ensemble")
        names = list(self.whole_file) if request.name == "fv2es" else []
        for name in names:
            value = np.asarray(self.whole_file[name])
            tensor = response.outputs.add()
            tensor.name, tensor.datatype = name, "BYTES" if value.dtype == np.object_ else np_to_triton_dtype(value.dtype)
            tensor.shape.extend([-1] * value.ndim)
        return response

    # -- inference ------------------------------------------------------------------------------

    def ModelInfer(self, request, context):
        wanted = [o.name for o in request.outputs]
        with self.lock:
            self.infer_requests.append(wanted)
        unknown = [name for name in wanted if name not in self.whole_file]
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected inference output '{unknown[0]}' for model 'fv2es'")
        return infer_response("fv2es", {name: self.whole_file[name] for name in wanted or self.whole_file})

    def ModelStreamInfer(self, request_iterator, context):
        headers = dict(context.invocation_metadata())
        with self.lock:
            self.stream_headers.append(headers)
        grpc_errors = headers.get("triton_grpc_error") == "true"
        segments: dict[int, int] = {}  # sequence id -> segments sent
        for request in request_iterator:
            parameters = request.parameters
            sequence = parameters["sequence_id"].int64_param
            first, last = parameters["sequence_start"].bool_param, parameters["sequence_end"].bool_param
            data = deserialize_bytes(request.raw_input_contents[0])[0] if request.raw_input_contents else b""
            with self.lock:
                self.stream_requests.append({"sequence_id": sequence, "start": first, "end": last, "data": data,
                                             "final_wanted": parameters["triton_enable_empty_final_response"].bool_param,
                                             "at": time.monotonic()})
            if self.stream_delay_s:
                time.sleep(self.stream_delay_s)
            if first:
                segments[sequence] = 0
            if self.error_marker and self.error_marker in data:
                message = "fv2es_stream: the stream is not a readable video (fake)"
                if grpc_errors:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                yield service_pb2.ModelStreamInferResponse(error_message=message)
            elif data:
                index = segments[sequence]
                segments[sequence] += 1
                yield service_pb2.ModelStreamInferResponse(
                    infer_response=infer_response(request.model_name, segment_arrays(index), final=False))
            if last:
                yield service_pb2.ModelStreamInferResponse(infer_response=infer_response(
                    request.model_name, end_arrays(segments.get(sequence, 0), self.end_labels), final=False))
            if parameters["triton_enable_empty_final_response"].bool_param:
                yield service_pb2.ModelStreamInferResponse(infer_response=infer_response(request.model_name, {}, final=True))
