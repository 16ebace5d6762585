"""gRPC client for the FV2ES Triton ensemble: `Fv2esClient(url).analyze(path_or_bytes)`."""

from .client import Fv2esClient, Segment, VideoResult

__all__ = ["Fv2esClient", "Segment", "VideoResult"]
