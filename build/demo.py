"""The README's first command: start the embedded tritonserver, classify the sample video, stop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fv2es_client.cli import format_result
from fv2es_client.client import Fv2esClient

from fv2es.tritonserver import REPOSITORY, EmbeddedServer

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "talking_head.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("videos", nargs="*", type=Path, default=[SAMPLE])
    args = parser.parse_args()
    started = time.monotonic()
    with EmbeddedServer(REPOSITORY) as server:
        print(f"tritonserver ready in {time.monotonic() - started:.1f} s (gRPC {server.grpc_url})")
        with Fv2esClient(server.grpc_url) as client:
            for video in args.videos:
                t0 = time.monotonic()
                result = client.analyze(video)
                print(format_result(str(video), result))
                print(f"  ({time.monotonic() - t0:.2f} s end to end)")
    print("tritonserver stopped")


if __name__ == "__main__":
    main()
