"""fv2es-client VIDEO [VIDEO ...]: classify videos with a running FV2ES server and print the result."""

from __future__ import annotations

import argparse
import json
import sys

from tritonclient.utils import InferenceServerException

from .client import Fv2esClient, VideoResult


def format_result(name: str, result: VideoResult) -> str:
    lines = [f"{name}", f"  {'start':>7} {'end':>7}  {'emotion':<10} {'score':>5}  face speech  transcript"]
    for s in result.segments:
        lines.append(
            f"  {s.start:7.2f} {s.end:7.2f}  {s.emotion:<10} {s.scores[s.emotion]:5.2f}  "
            f"{'yes' if s.has_face else 'no':<4} {'yes' if s.has_speech else 'no':<6}  {s.transcript}"
        )
    ranked = sorted(result.scores.items(), key=lambda kv: -kv[1])
    lines.append("  overall: " + ", ".join(f"{label} {score:.2f}" for label, score in ranked))
    lines.append(f"  overall emotion: {result.emotion}")
    lines.append(f"  model: {result.model_info.get('weights', 'unknown')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address of the server")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    failures = 0
    with Fv2esClient(args.url) as client:
        for video in args.videos:
            try:
                result = client.analyze(video)
            except (InferenceServerException, OSError) as exc:
                failures += 1
                message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
                print(f"{video}: error: {message}", file=sys.stderr)
                continue
            print(json.dumps({"video": video, **result.to_dict()}) if args.json else format_result(video, result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
