"""Silero VAD, the pipeline's one speech detector: the stretch cuts (fv2es.stretches) and the speech
chunks that ASR transcribes come from it.

The model is the silero-vad package's (MIT; pinned in requirements.txt): its "sequence" ONNX export,
whose documented interface takes a block of 32 ms windows (each with the 4 ms before it) and the
LSTM state (h, c), and returns each window's speech probability and the state after the block. With
the state carried from block to block the probabilities are those of Silero's streaming model,
window by window, whatever the block sizes: so a live stream that computes them chunk by chunk gets
the probabilities of the whole file. tests/test_vad.py checks this, and the chunk rules below,
against the package's own functions. The package's Python module is not imported here: it imports
torch (about 450 MB per process) and sets torch's thread count for the whole process, and the ASR
step runs without torch.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config

WINDOW = 512  # samples per window (16 kHz)
CONTEXT = 64  # samples of the previous window that the model sees with each window
MODEL_FILE = "silero_vad_16k_sequence.onnx"


def model_path() -> Path:
    """The sequence model that the installed silero-vad package ships (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Silero VAD needs the silero-vad package (requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE


@functools.cache
def _session():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])


class Detector:
    """Speech probabilities of an audio that may still be growing, one per whole window from its
    first sample; the model's state runs forward from call to call."""

    def __init__(self):
        self.probs = np.zeros(0, np.float32)
        self._state = ZERO_STATE
        self._saved = [(0, ZERO_STATE)]  # (windows done, the state after them) at each call's start

    def extend(self, audio: np.ndarray, n: int) -> np.ndarray:
        """The probabilities of the first `n` windows of `audio` (the same audio as before, longer)."""
        first = len(self.probs)
        if n > first:
            self._saved.append((first, self._state))
            probs, self._state = _run(audio, first, n, self._state)
            self.probs = np.concatenate([self.probs, probs])
        return self.probs[:n]

    def prefix(self, audio: np.ndarray, length: int) -> np.ndarray:
        """`probabilities(audio[:length])`: the first `length` samples as a whole audio, its last
        window padded with silence, from what was computed (a stretch that a cut ended: only the
        windows since the last saved state are run again)."""
        n_whole, rest = divmod(length, WINDOW)
        self.extend(audio, n_whole)
        if not rest:
            return self.probs[:n_whole].copy()
        done, state = max((s for s in self._saved if s[0] <= n_whole), key=lambda s: s[0])
        tail = np.zeros((n_whole + 1) * WINDOW, np.float32)
        tail[max(0, done * WINDOW - CONTEXT) : length] = audio[max(0, done * WINDOW - CONTEXT) : length]
        last, _ = _run(tail, done, n_whole + 1, state)
        return np.concatenate([self.probs[:done], last])


ZERO_STATE = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))


def _run(audio: np.ndarray, first: int, n: int, state) -> tuple[np.ndarray, tuple]:
    """Windows `first` to `n` of `audio` (each with the CONTEXT samples before it) from `state`: their
    probabilities and the state after them."""
    windows = np.asarray(audio[first * WINDOW : n * WINDOW], np.float32).reshape(-1, WINDOW)
    context = np.zeros((len(windows), CONTEXT), np.float32)
    context[1:] = windows[:-1, -CONTEXT:]
    if first:
        context[0] = audio[first * WINDOW - CONTEXT : first * WINDOW]
    probs, h, c = _session().run(["speech_probs", "hn", "cn"], {"input": np.concatenate([context, windows], 1), "h": state[0], "c": state[1]})
    return np.asarray(probs, np.float32).reshape(-1), (h, c)


def probabilities(audio: np.ndarray) -> np.ndarray:
    """Every window's speech probability; the last window padded with silence (as Silero does)."""
    n = -(-len(audio) // WINDOW)
    padded = np.zeros(n * WINDOW, np.float32)
    padded[: len(audio)] = audio
    return Detector().extend(padded, n)


@dataclass
class Chunk:
    """One stretch of speech, in samples from the audio's start: padded start and end; `closed`
    once silence (or the length limit, or the audio's end) ended it."""

    start: int
    end: int
    closed: bool


def chunks(probs: np.ndarray, audio_length: int | None = None, min_silence_ms: int = config.VAD_MIN_SILENCE_MS) -> list[Chunk]:
    """Silero's speech chunks from its window probabilities, padded, by the rules of silero-vad's
    `get_speech_timestamps_from_probs` with `use_max_poss_sil_at_max_speech=False` (those of
    faster-whisper too), step by step: so that an audio still growing (`audio_length` None) can say
    which chunks are final. Its last chunk may be open: its end is then the least it can end at.
    With `audio_length` the audio is whole and its end closes the last chunk, as Silero's does.
    `min_silence_ms`: the silence that ends a chunk (a live stream's low-latency cuts use less)."""
    neg = max(config.VAD_THRESHOLD - 0.15, 0.01)
    min_silence = min_silence_ms * config.SAMPLE_RATE // 1000
    split_silence = 98 * config.SAMPLE_RATE // 1000  # a pause long enough to split too-long speech at
    pad = config.VAD_SPEECH_PAD_MS * config.SAMPLE_RATE // 1000
    max_speech = config.VAD_MAX_SPEECH_S * config.SAMPLE_RATE - WINDOW - 2 * pad
    raw: list[list] = []  # [start, end, closed] in samples, unpadded
    triggered = False
    start = silence = prev_end = next_start = 0  # 0: none (as Silero's)
    for i, p in enumerate(probs.tolist()):
        at = i * WINDOW
        if p >= config.VAD_THRESHOLD and silence:
            silence = 0
            if next_start < prev_end:
                next_start = at
        if p >= config.VAD_THRESHOLD and not triggered:
            triggered, start = True, at
            continue
        if triggered and at - start > max_speech:  # too long: split at the last pause, else here
            if prev_end:
                raw.append([start, prev_end, True])
                if next_start < prev_end:
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = silence = 0
            else:
                raw.append([start, at, True])
                prev_end = next_start = silence = 0
                triggered = False
                continue
        if p < neg and triggered:
            silence = silence or at
            if at - silence > split_silence:
                prev_end = silence
            if at - silence >= min_silence:
                raw.append([start, silence, True])
                prev_end = next_start = silence = 0
                triggered = False
    if triggered and audio_length is not None:
        raw.append([start, audio_length, True])
    elif triggered:  # may yet end at its last pause (a split), at its silence, or later
        raw.append([start, prev_end or silence or len(probs) * WINDOW, False])
    end_limit = audio_length if audio_length is not None else np.inf
    found = []
    for k, (a, b, closed) in enumerate(raw):
        gap_before = a - raw[k - 1][1] if k else 2 * pad + a
        gap_after = raw[k + 1][0] - b if k + 1 < len(raw) else 2 * pad
        end = min(b + min(pad, gap_after // 2), end_limit) if closed else b
        found.append(Chunk(max(0, a - min(pad, gap_before // 2)), int(end), closed))
    return found


def speech_chunks(audio: np.ndarray, probs: np.ndarray | None = None) -> list[dict]:
    """The speech of a whole 16 kHz audio as {"start", "end"} (samples), as Silero finds it; `probs`:
    its windows' probabilities (`probabilities(audio)`) when known already."""
    probs = probabilities(audio) if probs is None else probs
    return [{"start": c.start, "end": c.end} for c in chunks(probs, len(audio))]
