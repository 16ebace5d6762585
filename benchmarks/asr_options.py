"""Decoding options of the ASR step: speed against what the text branch makes of the transcripts.

    .venv/bin/python benchmarks/asr_options.py [--utterances 120] [--data ../shared/data]

MELD dev utterances (the same number of each class where it has them, seed 0) read by espeak-ng,
each transcribed alone through fv2es.asr.SpeechRecognizer (VAD, one Whisper window: as a segment of
a low-latency stream is), once per option set, in turns. For each: the ASR time, the word error rate
against the MELD text (jiwer; lower case, no punctuation), and the shipped text branch's weighted and
macro F1 on the transcripts against MELD's labels (the judge), beside its F1 on the MELD texts
themselves. Then each option set on the benchmark's 60 s clip (dense speech: decoding weighs more
there than on one short segment), the median of 3 in turns. Also: two 30 s Whisper windows encoded in
one batch against one after the other (what batching a file's windows would save). Prints markdown
tables (docs/asr_options.md has one run).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fv2es import config
import run  # noqa: F401 - the benchmark's clips (and import paths)
from fv2es.asr import SpeechRecognizer
from fv2es.media import demux
from fv2es.text import load_tokenizer, tokenize
from fv2es_build import settings, synth
from fv2es_build.training import data
from fv2es_build.training.weights import load_branch
from fv2es_client.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]
# name -> SpeechRecognizer keyword arguments; the first is what the server runs.
OPTIONS = {
    "greedy, int8 (shipped)": {},
    "beam 5, int8": {"beam_size": 5},
    "greedy, float32": {"compute_type": "float32"},
    "greedy, int8, without timestamps": {"without_timestamps": True},
}


def sample(split, per_class: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:per_class] for c in range(len(split.classes))]
    return sorted(int(i) for i in np.concatenate(chosen))


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def text_scores(branch, texts: list[str], targets: np.ndarray, classes) -> dict:
    ids, mask = tokenize(load_tokenizer(), texts)
    with torch.no_grad():
        predicted = branch(torch.from_numpy(ids), torch.from_numpy(mask)).argmax(1).numpy()
    m = classification_metrics(targets, predicted, classes)
    return {"weighted_f1": m["weighted_f1"], "macro_f1": m["macro_f1"]}


def batched_windows(recognizer: SpeechRecognizer, audio: np.ndarray, runs: int = 5) -> dict:
    """Two 30 s windows: encoded in one batch, and one after the other (median seconds)."""
    windows = [audio[: 30 * config.SAMPLE_RATE], audio[30 * config.SAMPLE_RATE : 60 * config.SAMPLE_RATE]]
    one_by_one, together = [], []
    for _ in range(runs):
        t = time.perf_counter()
        for w in windows:
            recognizer.encode_blocks([w])
        one_by_one.append(time.perf_counter() - t)
        t = time.perf_counter()
        recognizer.encode_blocks(windows)
        together.append(time.perf_counter() - t)
    return {"one_by_one_s": statistics.median(one_by_one), "batched_s": statistics.median(together)}


def main() -> None:
    import jiwer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=120, help="about this many (the same number per class)")
    parser.add_argument("--data", type=Path, default=ROOT / settings.DATA_DIR)
    args = parser.parse_args()
    split = data.load_meld(args.data, validation=True)
    index = sample(split, max(1, args.utterances // len(split.classes)))
    texts = [split.inputs[i] for i in index]
    targets = np.asarray(split.targets)[index]
    speech = [synth.speak(t) for t in texts]
    print(f"{len(texts)} utterances, {sum(len(s) for s in speech) / config.SAMPLE_RATE:.0f} s of speech", flush=True)
    branch = load_branch("text", ROOT / settings.WEIGHTS_DIR)
    rows = {"MELD text (no ASR)": {"seconds": 0.0, "wer": 0.0, **text_scores(branch, texts, targets, split.classes)}}
    recognizers = {name: SpeechRecognizer(**kwargs) for name, kwargs in OPTIONS.items()}
    transcripts = {name: [] for name in OPTIONS}
    seconds = dict.fromkeys(OPTIONS, 0.0)
    for audio in speech:  # option sets in turns, utterance by utterance (drift hits all alike)
        for name, recognizer in recognizers.items():
            t = time.perf_counter()
            found = recognizer.transcribe(audio)
            seconds[name] += time.perf_counter() - t
            transcripts[name].append(" ".join(s.text for s in found))
    reference = [words(t) for t in texts]
    for name in OPTIONS:
        hypothesis = [words(t) for t in transcripts[name]]
        rows[name] = {"seconds": seconds[name], "wer": float(jiwer.wer(reference, hypothesis)),
                      **text_scores(branch, transcripts[name], targets, split.classes)}
    lines = ["| decoding | ASR s (all utterances) | x shipped | WER | text branch weighted F1 | macro F1 |",
             "|---|---|---|---|---|---|"]
    base = rows["greedy, int8 (shipped)"]["seconds"]
    for name, r in rows.items():
        ratio = f"{r['seconds'] / base:.2f}x" if r["seconds"] else "-"
        lines.append(f"| {name} | {r['seconds']:.1f} | {ratio} | {r['wer']:.3f} | {r['weighted_f1']:.3f} | {r['macro_f1']:.3f} |")
    print("\n".join(lines))
    audio = demux(run.clip(60)).audio
    clip_times = {name: [] for name in OPTIONS}
    for _ in range(3):
        for name, recognizer in recognizers.items():
            t = time.perf_counter()
            recognizer.transcribe(audio)
            clip_times[name].append(time.perf_counter() - t)
    print("| decoding | ASR of the 60 s clip, s | x shipped |\n|---|---|---|")
    shipped = statistics.median(clip_times["greedy, int8 (shipped)"])
    for name, t in clip_times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {statistics.median(t) / shipped:.2f}x |")
    clip = np.concatenate(speech)
    clip = np.tile(clip, int(np.ceil(60 * config.SAMPLE_RATE / len(clip))))[: 60 * config.SAMPLE_RATE]
    w = batched_windows(recognizers["greedy, int8 (shipped)"], clip)
    print(f"two 30 s windows: one by one {w['one_by_one_s']:.3f} s, in one batch {w['batched_s']:.3f} s "
          f"({w['batched_s'] / w['one_by_one_s']:.2f}x)")


if __name__ == "__main__":
    main()
