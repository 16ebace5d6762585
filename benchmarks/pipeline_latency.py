"""End-to-end latency of one video through the embedded server, and where the time goes per stage.

    .venv/bin/python benchmarks/pipeline_latency.py --duration 60 --width 1280 --height 720 --fps 30 --runs 5

Generates a talking-head clip (astronaut face + espeak-ng speech), starts tritonserver, sends the
clip sequentially `--runs` times after one warm-up, and prints the median end-to-end time and, per
model, the median time of one execution (Triton's compute_input + compute_infer + compute_output,
from /v2/models/<m>/stats, whose per-request deltas are taken after each run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_backend"))
sys.path.insert(0, str(ROOT / "client"))

import tritonclient.grpc as grpcclient  # noqa: E402

from fv2es import synth  # noqa: E402
from fv2es.tritonserver import EmbeddedServer  # noqa: E402
from fv2es_client import Fv2esClient  # noqa: E402

STAGES = ("demux", "face_crop", "asr", "assign_faces", "mel", "audio_encoder", "visual_encoder", "text_encoder", "fusion", "aggregate")


def stage_ns(stats_client) -> dict[str, int]:
    """Cumulative compute nanoseconds of each stage."""
    totals = {}
    for stage in STAGES:
        s = stats_client.get_inference_statistics(stage, as_json=True)["model_stats"][0]["inference_stats"]
        totals[stage] = sum(int(s[k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    t0 = time.monotonic()
    video = synth.talking_head_video(args.duration, width=args.width, height=args.height, fps=args.fps)
    print(f"clip: {args.duration:.0f} s {args.width}x{args.height} {args.fps} fps, {len(video) / 1e6:.1f} MB "
          f"(generated in {time.monotonic() - t0:.1f} s)")
    with EmbeddedServer() as server, Fv2esClient(server.grpc_url) as client:
        stats_client = grpcclient.InferenceServerClient(server.grpc_url)
        client.analyze(video)  # warm-up
        totals, per_stage = [], {stage: [] for stage in STAGES}
        for _ in range(args.runs):
            before = stage_ns(stats_client)
            start = time.perf_counter()
            result = client.analyze(video)
            totals.append(time.perf_counter() - start)
            after = stage_ns(stats_client)
            for stage in STAGES:
                per_stage[stage].append((after[stage] - before[stage]) / 1e9)
    median = statistics.median(totals)
    print(f"segments: {len(result.segments)}, overall emotion: {result.emotion}")
    print(f"end to end: median {median:.2f} s over {args.runs} runs "
          f"(min {min(totals):.2f}, max {max(totals):.2f}); real-time factor {median / args.duration:.3f}")
    print(f"{'stage':<16}{'median s':>10}{'share':>8}")
    for stage in STAGES:
        m = statistics.median(per_stage[stage])
        print(f"{stage:<16}{m:>10.3f}{m / median:>8.1%}")


if __name__ == "__main__":
    main()
