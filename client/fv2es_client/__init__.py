"""gRPC client for the FV2ES Triton ensemble: `Fv2esClient(url).analyze(path_or_bytes)`."""

from .client import (
    Fv2esClient, Fv2esError, InputTooLargeError, ModelNotReadyError, Segment, ServerLimits, ServerUnavailableError,
    VideoResult,
)

__all__ = [
    "Fv2esClient", "Fv2esError", "InputTooLargeError", "ModelNotReadyError", "Segment", "ServerLimits",
    "ServerUnavailableError", "VideoResult",
]
