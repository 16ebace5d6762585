"""The served pipeline with each ASR model of config.ASR_MODELS, end to end, in one run: the built
repository (config.ASR_MODEL) and one built for the other model (fv2es_build.repository.asr_model_variant),
served at once; the bench's 60 s clip is sent to one then the other, in turns (benchmarks/earlier.py's
`in_turns`), and each model's compute time per request is read from Triton's statistics.

    .venv/bin/python benchmarks/asr_models.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys

import bench_settings  # benchmarks/, beside this script
from earlier import in_turns
from fv2es import config
from fv2es.tritonserver import REPOSITORY
from fv2es_build.machine import cpu_description
from fv2es_build.repository import ROOT, asr_model_variant
from speech_encoders import CLIP_S, bench_clip

OUT = ROOT / "benchmarks" / "out" / "asr_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=bench_settings.BENCH_EARLIER_ROUNDS)
    args = parser.parse_args()
    repositories = {config.ASR_MODEL: REPOSITORY}
    for name in config.ASR_MODELS:
        if name != config.ASR_MODEL:
            repositories[name] = asr_model_variant(OUT / name.replace(":", "_") / "models", name)
    times, model_s = in_turns(repositories, bench_clip(CLIP_S), args.rounds)
    served = statistics.median(times[config.ASR_MODEL])
    print(f"{CLIP_S} s clip, {args.rounds} rounds after one warm-up each, {datetime.date.today()}, {cpu_description()}\n")
    print("| ASR model | median s | min s | max s | real-time factor | x served | asr step s |\n|---|---|---|---|---|---|---|")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"| {name}{' (served)' if name == config.ASR_MODEL else ''} | {median:.2f} | {min(t):.2f} | {max(t):.2f} | "
              f"{median / CLIP_S:.3f} | {median / served:.2f}x | {model_s[name].get('asr', 0.0):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
