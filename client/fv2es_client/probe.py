"""fv2es-probe: a health check that runs a real inference, for docker-compose and Kubernetes probes.

Triton's /v2/health/ready says whether the models are loaded, not whether they answer: a Python
stub that died leaves the ready endpoint at 200 while every request fails. This probe sends a short
video through the whole ensemble and checks that a complete result comes back.

Exit status: 0 healthy, 1 not (the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .client import DEFAULT_URL, MODEL_NAME, Fv2esClient, Fv2esError

# The repository's sample, when the client runs from a checkout (or the NGC container's /workspace).
DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "samples" / "talking_head.mp4"
PROBE_TIMEOUT_S = 30.0


def probe(url: str, video: Path, *, model: str = MODEL_NAME, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Analyses `video`; returns a one-line summary, raises RuntimeError when the answer is not a good one."""
    with Fv2esClient(url, model=model, timeout_s=timeout_s, retries=0) as client:
        try:
            result = client.analyze(video)
        except Fv2esError as exc:
            raise RuntimeError(f"[{exc.status()}] {exc.message()}") from None
    scores = np.asarray(list(result.scores.values()), dtype=np.float64)
    if not result.segments or scores.size == 0 or not np.isfinite(scores).all():
        raise RuntimeError(f"incomplete result: {len(result.segments)} segments, scores {scores.tolist()}")
    return f"{len(result.segments)} segments, {result.emotion} {result.score:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fv2es-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the server (default {DEFAULT_URL})")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--video", type=Path, default=Path(os.environ.get("FV2ES_PROBE_VIDEO", DEFAULT_VIDEO)),
                        help="a short video to analyse (default: FV2ES_PROBE_VIDEO, else the repository's sample)")
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S, metavar="SECONDS")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        summary = probe(args.url, args.video, model=args.model, timeout_s=args.timeout)
    except (RuntimeError, OSError) as exc:
        print(f"fv2es-probe: unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"fv2es-probe: healthy ({summary}, {time.monotonic() - started:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
