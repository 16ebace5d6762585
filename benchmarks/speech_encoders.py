"""The audio branch on two Whisper encoders side by side: the served tiny.en (English only, 384-d
states) and a multilingual Whisper base (512-d), on the same clips, the same training and the same
tests, in one run; and each encoder's time on the speech of the bench's 60 s clip.

    .venv/bin/python benchmarks/speech_encoders.py [--output docs/speech_encoders.md]

Both are config.ASR_MODELS entries: base is "packaged:whisper-base" (fv2es/asr.py joins its two
PyPI halves in memory and checks the sha256 of Systran/faster-whisper-base's model.bin). To keep the
comparison affordable each clip is encoded once, alone (no packed or channel-augmented variants: the
shipped branch has those), so the numbers compare the encoders, not the shipped model. Tests: each
corpus's held-out speakers (branch trained on the three corpora) and each corpus held out whole
(trained on the other two), as in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import bench_settings  # benchmarks/, beside this script
from fv2es import config
from fv2es.asr import SpeechRecognizer
from fv2es.media import demux
from fv2es_build import settings, synth
from fv2es_build.machine import cpu_description
from fv2es_build.training import speech
from fv2es_build.training.loop import fit
from fv2es_build.training.metrics import format_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "out"
CLIP_S = 60  # the bench's 60 s clip (make bench), generated as benchmarks/run.py does
ENCODERS = {"tiny.en (served)": "packaged:whisper-tiny.en", "base (multilingual)": "packaged:whisper-base"}


def bench_clip(seconds: int) -> bytes:
    """The bench's generated clip (benchmarks/run.py keeps it in benchmarks/out/clips/), made here if absent."""
    width, height, fps = bench_settings.BENCH_CLIP_FORMAT
    path = ROOT / "benchmarks" / "out" / "clips" / f"talking_head_{seconds}s_{width}x{height}_{fps}fps.mp4"
    if path.exists():
        return path.read_bytes()
    return synth.talking_head_video(seconds, width=width, height=height, fps=fps)


def speech_seconds(model: str, audio, runs: int) -> float:
    """Median seconds of the ASR step (VAD, transcription, the encoder states) on `audio`, after a warm-up."""
    asr = SpeechRecognizer(model, cpu_threads=config.ASR_CPU_THREADS, language=config.ASR_LANGUAGE)
    asr.listen(audio)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        asr.listen(audio)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(name: str, data_dir: Path, hp: dict, seed: int) -> dict:
    """Held-out speakers (trained on all three corpora) and each corpus held out, for the current encoder."""
    started = time.monotonic()
    task = speech.speech_audio_task(data_dir, False)  # encodes (cached) each clip alone
    encode_min = (time.monotonic() - started) / 60
    best = fit(task, hp, OUT / "encoders" / name / "all", seed=seed)
    result = {"encode_min": encode_min, "held_out_speakers": best["metrics"]["per_corpus"], "held_out_corpus": {}}
    print(format_metrics(f"{name}: held-out speakers", best["metrics"]))
    for corpus in speech.SPEECH_TRAINING_CORPORA:
        others = tuple(c for c in speech.SPEECH_TRAINING_CORPORA if c != corpus)
        loco = speech.speech_audio_task(data_dir, False, others)
        fit(loco, hp, OUT / "encoders" / name / f"without-{corpus}", seed=seed)
        result["held_out_corpus"][corpus] = speech.held_out_corpus_metrics(loco.model, corpus, data_dir, False)
        print(format_metrics(f"{name}: {corpus} held out", result["held_out_corpus"][corpus]))
    return result


def report(results: dict, seconds: dict, clip_s: float) -> str:
    lines = ["# Whisper tiny.en against a multilingual Whisper base for the audio branch", "",
             f"Written by `benchmarks/speech_encoders.py` on {datetime.date.today()}, on {cpu_description()}. Each clip "
             "encoded once, alone (no packed or augmented variants), the branch trained "
             f"{settings.TRAINING['audio']['epochs']} epochs as `TRAINING['audio']`; accuracy in each corpus's own classes.", "",
             "| encoder | RAVDESS speakers | EmoDB speakers | TurEV speakers | RAVDESS held out | EmoDB held out | TurEV held out | "
             f"ASR step on the {clip_s:.0f} s clip's speech (median) | encoding the corpora |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        speakers = [f"{r['held_out_speakers'][c]['accuracy']:.3f}" for c in speech.SPEECH_TRAINING_CORPORA]
        corpora = [f"{r['held_out_corpus'][c]['accuracy']:.3f} ({r['held_out_corpus'][c]['most_predicted']['share']:.0%} one class)"
                   for c in speech.SPEECH_TRAINING_CORPORA]
        encoding = f"{r['encode_min']:.0f} min" if r["encode_min"] >= 0.5 else "cached (by fv2es-train)"
        lines.append(f"| {name} | " + " | ".join(speakers + corpora) + f" | {seconds[name]:.2f} s | {encoding} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / settings.DATA_DIR)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of the ASR step per encoder")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "speech_encoders.md")
    args = parser.parse_args()
    speech.PACKINGS = speech.AUGMENTED_PACKINGS = 0
    audio = demux(bench_clip(CLIP_S)).audio
    results, seconds = {}, {}
    for name, model in ENCODERS.items():
        with settings.asr_model_set(model):
            seconds[name] = speech_seconds(model, audio, args.runs)
            print(f"{name}: ASR step on {CLIP_S} s of speech, median {seconds[name]:.2f} s", flush=True)
            results[name] = compare(name.split()[0], args.data, dict(settings.TRAINING["audio"]), settings.TRAIN_SEED)
    text = report(results, seconds, CLIP_S)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
