"""gRPC client for the FV2ES Triton ensemble: `Fv2esClient(url).analyze(path_or_bytes)`, and for live
streams `Fv2esClient(url).stream(chunks)` with the byte sources of `fv2es_client.sources`."""

from .client import (
    Fv2esClient, Fv2esError, InputTooLargeError, ModelNotReadyError, PersonSummary, Segment, ServerLimits,
    ServerUnavailableError, VideoResult,
)

__all__ = [
    "Fv2esClient", "Fv2esError", "InputTooLargeError", "ModelNotReadyError", "PersonSummary", "Segment", "ServerLimits",
    "ServerUnavailableError", "VideoResult",
]
