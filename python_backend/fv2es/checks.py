"""Validation of every model's inputs, before any work: shapes, ranges, finite numbers, limits.

Every model of the ensemble can be called directly by any client, so none may trust its inputs to
come from the step before it. Each function here checks one kind of input and raises `InputError`
with a short message naming the tensor ("AUDIO_SEGMENT holds segment 57 but there are 3 segments
(TEXT_FEATURES rows)"); the serving code turns that into INVALID_ARG. The functions are plain numpy,
called by `fv2es.stages` (so the in-process pipeline checks the same) and by the TorchScript runner.

The limits follow from the duration limit (config.MAX_DURATION_S, the `max_duration_s` parameter of
the models' configs), with `TIME_SLACK_S` for what demux lets through: it measures the duration from
packet timestamps and accepts packets up to 1 s past the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import config, modalities, vad
from .modalities import Modality
from .errors import InputError
from .segments import SEGMENT_RULE, frame_segments

TIME_SLACK_S = 2.0  # demux accepts packets up to 1 s past max_duration_s; one more for rounding
OVERLAP_TOLERANCE_S = 1e-3  # neighbouring segments share their boundary; float32 rounding aside
CHUNK_S = config.HOP_LENGTH * config.CHUNK_FRAMES / config.SAMPLE_RATE  # audio per mel chunk (0.4 s)
# The longest segment the timeline makes: a split speech segment (or a window) plus a short piece
# merged on either side. The fusion accepts twice the rows such a segment can have, per segment:
# rows beyond that could only come from a crafted request (and would pad every segment to them).
LONGEST_SEGMENT_S = SEGMENT_RULE.longest_s
MAX_ROWS_PER_SEGMENT = 2 * (math.ceil(LONGEST_SEGMENT_S / min(CHUNK_S, config.FRAME_INTERVAL_S)) + 1)
# The group model's visual rows of a segment: each sampled frame and its faces, twice over as above.
MAX_VISUAL_ROWS_PER_SEGMENT = 2 * (math.ceil(LONGEST_SEGMENT_S / config.FRAME_INTERVAL_S) + 1) * (config.MAX_FACES_PER_FRAME + 1)
# Magnitudes no real input comes near. Decoded audio lies within +-1 (a float track may overshoot a
# little); log-mel chunks are standardised per clip, so |z| <= sqrt(values) (<= 1e4 up to hours of
# audio); faces are grey levels normalised to about +-2.
AUDIO_MAX_ABS = 1e3
MEL_MAX_ABS = 1e4
SPEECH_MAX_ABS = 1e4  # Whisper encoder states (layer-normalised) stay far below
FACE_MAX_ABS = 1e2
SCORE_TOLERANCE = 1e-3  # segment scores are probabilities, up to float rounding


@dataclass(frozen=True)
class Limits:
    """What one request may hold: its size and its duration, and what follows from the duration. The
    one place a model's limits are read (`limits_from`, once, when it loads) and then passed down;
    in-process use takes config's values (`Limits()`)."""

    max_duration_s: float = config.MAX_DURATION_S
    max_input_bytes: int = config.MAX_INPUT_BYTES

    @property
    def max_time_s(self) -> float:
        """The latest time (segment end, face time, DURATION) a valid request can hold."""
        return self.max_duration_s + TIME_SLACK_S

    @property
    def max_samples(self) -> int:
        return int(self.max_time_s * config.SAMPLE_RATE)

    @property
    def max_segments(self) -> int:
        """Segments are at least SEGMENT_RULE.min_segment_s long (config.MAX_SEGMENTS_PER_VIDEO, with the slack)."""
        return int(self.max_time_s / SEGMENT_RULE.min_segment_s) + 1

    @property
    def max_frames(self) -> int:
        """One sampled frame every FRAME_INTERVAL_S."""
        return int(self.max_time_s / config.FRAME_INTERVAL_S) + 1

    @property
    def max_faces(self) -> int:
        """At most MAX_FACES_PER_FRAME faces per sampled frame."""
        return self.max_frames * config.MAX_FACES_PER_FRAME

    @property
    def max_chunks(self) -> int:
        """One mel chunk per CHUNK_S of audio, plus one padded chunk per segment."""
        return int(self.max_time_s / CHUNK_S) + self.max_segments


def limits_from(parameter) -> Limits:
    """Limits from a model's config parameters; `parameter(name, default) -> str`."""
    return Limits(max_duration_s=float(parameter("max_duration_s", str(config.MAX_DURATION_S))),
                  max_input_bytes=int(parameter("max_input_bytes", str(config.MAX_INPUT_BYTES))))


# --- Building blocks ----------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def shape(array: np.ndarray, name: str, dims: tuple[int | None, ...]) -> np.ndarray:
    """`array` as an ndarray of `dims` (None: any size)."""
    array = np.asarray(array)
    ok = array.ndim == len(dims) and all(d is None or d == n for d, n in zip(dims, array.shape))
    if not ok:
        want = "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"
        raise InputError(f"{name} has shape {list(array.shape)}, expected {want}")
    return array


def rows(array: np.ndarray, name: str, *, at_least: int = 0, at_most: int | None = None, what: str = "rows") -> int:
    n = int(np.shape(array)[0])
    if n < at_least:
        raise InputError(f"{name} has {n} {what}, needs at least {at_least}")
    if at_most is not None and n > at_most:
        raise InputError(f"{name} has {n} {what}, over the limit of {at_most}")
    return n


def same_rows(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if len(a) != len(b):
        raise InputError(f"{a_name} has {len(a)} rows but {b_name} has {len(b)}: they must match")


def finite(array: np.ndarray, name: str, *, max_abs: float | None = None) -> np.ndarray:
    """A float array without NaN or infinity (and within +-max_abs)."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        raise InputError(f"{name} must hold numbers, got {array.dtype}")
    if array.dtype.kind == "f" and array.size:
        if not np.isfinite(array).all():
            raise InputError(f"{name} holds NaN or infinite values")
    if max_abs is not None and array.size:
        peak = float(np.abs(array).max())
        if peak > max_abs:
            raise InputError(f"{name} holds a value of magnitude {_fmt(peak)}, over the limit of {_fmt(max_abs)}")
    return array


def integers(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integers, got {array.dtype}")
    return array


def in_range(array: np.ndarray, name: str, low: int, high: int, what: str) -> None:
    """Integer values in [low, high) (`what` explains high when one is out of range)."""
    if array.size == 0:
        return
    smallest, largest = int(array.min()), int(array.max())
    if smallest < low:
        raise InputError(f"{name} holds {smallest}, below {low}")
    if largest >= high:
        raise InputError(f"{name} holds {largest} but {what}")


# --- Inputs of the models -----------------------------------------------------------------------


def duration(value: np.ndarray, limits: Limits, name: str = "DURATION") -> float:
    """DURATION [1]: seconds, finite, > 0 and within the duration limit."""
    array = np.asarray(value)
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one value, got {array.size}")
    seconds = float(finite(array.reshape(-1), name)[0])
    if not seconds > 0:
        raise InputError(f"{name} must be a positive number of seconds, got {_fmt(seconds)}")
    if seconds > limits.max_time_s:
        raise InputError(f"{name} is {_fmt(seconds)} s, over the server's limit of {limits.max_duration_s:.0f} s")
    return seconds


def audio(samples: np.ndarray, limits: Limits, name: str = "AUDIO") -> np.ndarray:
    """AUDIO [n]: mono samples at SAMPLE_RATE, finite, within the duration limit."""
    samples = shape(samples, name, (None,))
    if samples.size > limits.max_samples:
        seconds = samples.size / config.SAMPLE_RATE
        raise InputError(
            f"{name} holds {samples.size} samples ({seconds:.0f} s at {config.SAMPLE_RATE} Hz), "
            f"over the server's limit of {limits.max_duration_s:.0f} s"
        )
    return finite(samples, name, max_abs=AUDIO_MAX_ABS)


def audio_start(value: np.ndarray | int, limits: Limits, name: str = "AUDIO_START") -> int:
    """AUDIO_START [1]: the sample of the timeline where AUDIO starts (0 for a whole file)."""
    array = integers(shape(np.asarray(value).reshape(-1), name, (1,)), name)
    start = int(array[0])
    if not 0 <= start <= limits.max_samples:
        raise InputError(f"{name} is {start}; it must be a sample index from 0 to {limits.max_samples}")
    return start


def audio_and_duration(samples: np.ndarray, seconds: np.ndarray, limits: Limits, *, start: int = 0) -> tuple[np.ndarray, float]:
    """AUDIO (from sample `start` on) and DURATION of one video: each valid, and the audio no longer than the video."""
    samples, seconds = audio(samples, limits), duration(seconds, limits)
    audio_s = (start + samples.size) / config.SAMPLE_RATE
    if audio_s > seconds + 1.0:
        raise InputError(f"AUDIO ends at {audio_s:.1f} s but DURATION is {_fmt(seconds)} s: it cannot be longer than the video")
    return samples, seconds


def speech_probs(probs: np.ndarray, n_samples: int, name: str = "SPEECH_PROBS") -> np.ndarray:
    """SPEECH_PROBS [W]: one speech probability (0 to 1) per 32 ms VAD window of the AUDIO it comes
    with, the last window counted even when partial."""
    windows = -(-n_samples // vad.WINDOW)
    probs = finite(shape(probs, name, (windows,)), name)
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise InputError(f"{name} must hold probabilities from 0 to 1")
    return probs.astype(np.float32, copy=False)


def segment_times(times: np.ndarray, limits: Limits, name: str = "SEGMENT_TIMES") -> np.ndarray:
    """SEGMENT_TIMES [S, 2]: 1 <= S <= max_segments, finite, 0 <= start <= end <= max time, in time
    order without overlap (assign_faces looks segments up by their start; overlapping segments
    would multiply the mel step's work)."""
    times = finite(shape(times, name, (None, 2)), name)
    rows(times, name, at_least=1, at_most=limits.max_segments, what="segments")
    starts, ends = times[:, 0].astype(np.float64), times[:, 1].astype(np.float64)
    if starts.min() < 0:
        raise InputError(f"{name} holds a start of {_fmt(starts.min())} s; times start at 0")
    backwards = np.flatnonzero(ends < starts)
    if backwards.size:
        i = int(backwards[0])
        raise InputError(f"{name} row {i} ends ({_fmt(ends[i])} s) before it starts ({_fmt(starts[i])} s)")
    if ends.max() > limits.max_time_s:
        raise InputError(f"{name} holds an end of {_fmt(ends.max())} s, over the server's limit of {limits.max_duration_s:.0f} s")
    overlaps = np.flatnonzero(starts[1:] < ends[:-1] - OVERLAP_TOLERANCE_S)
    if overlaps.size:
        i = int(overlaps[0]) + 1
        raise InputError(f"{name} row {i} starts before row {i - 1} ends: segments must be in time order without overlap")
    return times


def face_times(times: np.ndarray, limits: Limits, name: str = "FACE_TIMES") -> np.ndarray:
    """FACE_TIMES [N]: seconds of each face, -1 for a placeholder row, finite, within the limit."""
    return _row_times(times, name, limits, limits.max_faces, "faces")


def frame_times(times: np.ndarray, limits: Limits, name: str = "SCENE_TIMES") -> np.ndarray:
    """SCENE_TIMES [N]: seconds of each sampled frame, -1 for a placeholder row, finite, within the limit."""
    return _row_times(times, name, limits, limits.max_frames, "frames")


def _row_times(times: np.ndarray, name: str, limits: Limits, at_most: int, what: str) -> np.ndarray:
    times = finite(shape(times, name, (None,)), name)
    rows(times, name, at_most=at_most, what=what)
    if times.size:
        if times.min() < -1:
            raise InputError(f"{name} holds {_fmt(times.min())}; times are >= 0 (-1: no {what[:-1]})")
        if times.max() > limits.max_time_s:
            raise InputError(f"{name} holds {_fmt(times.max())} s, over the server's limit of {limits.max_duration_s:.0f} s")
    return times


def segment_scores(scores: np.ndarray, times: np.ndarray, n_labels: int, limits: Limits) -> None:
    """SEGMENT_SCORES [S, C] probabilities, one row per SEGMENT_TIMES row."""
    segment_times(times, limits)
    scores = finite(shape(scores, "SEGMENT_SCORES", (None, n_labels)), "SEGMENT_SCORES")
    same_rows(scores, "SEGMENT_SCORES", times, "SEGMENT_TIMES")
    if scores.min() < -SCORE_TOLERANCE or scores.max() > 1 + SCORE_TOLERANCE:
        raise InputError("SEGMENT_SCORES must be probabilities in [0, 1]")


def mel_chunks(chunks: np.ndarray) -> None:
    """MEL_CHUNKS [N, N_MELS, CHUNK_FRAMES]: standardised log-mel values."""
    chunks = shape(chunks, "MEL_CHUNKS", (None, config.N_MELS, config.CHUNK_FRAMES))
    rows(chunks, "MEL_CHUNKS", at_least=1)
    finite(chunks, "MEL_CHUNKS", max_abs=MEL_MAX_ABS)


def speech_rows(rows_: np.ndarray) -> None:
    """SPEECH_ROWS [N, 2 x SPEECH_STATE_DIM]: mean and std of Whisper encoder states."""
    rows_ = shape(rows_, "SPEECH_ROWS", (None, 2 * config.SPEECH_STATE_DIM))
    rows(rows_, "SPEECH_ROWS", at_least=1)
    finite(rows_, "SPEECH_ROWS", max_abs=SPEECH_MAX_ABS)


def faces(crops: np.ndarray) -> None:
    """FACES [N, 1, FACE_SIZE, FACE_SIZE]: normalised grey crops."""
    crops = shape(crops, "FACES", (None, 1, config.FACE_SIZE, config.FACE_SIZE))
    rows(crops, "FACES", at_least=1)
    finite(crops, "FACES", max_abs=FACE_MAX_ABS)


def text_tokens(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> None:
    """TEXT_IDS, TEXT_MASK [N, TEXT_MAX_TOKENS]: token ids in [0, vocab_size), mask values 0 or 1."""
    ids = integers(shape(ids, "TEXT_IDS", (None, config.TEXT_MAX_TOKENS)), "TEXT_IDS")
    mask = integers(shape(mask, "TEXT_MASK", (None, config.TEXT_MAX_TOKENS)), "TEXT_MASK")
    rows(ids, "TEXT_IDS", at_least=1)
    same_rows(ids, "TEXT_IDS", mask, "TEXT_MASK")
    in_range(ids, "TEXT_IDS", 0, vocab_size, f"the text model's vocabulary has {vocab_size} tokens")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise InputError("TEXT_MASK must hold only 0 and 1")


def flags(values: np.ndarray, name: str, n_rows: int, rows_from: str) -> np.ndarray:
    """A BOOL [n_rows] input, one flag per row of `rows_from`."""
    values = np.asarray(values)
    if values.dtype != np.bool_:
        raise InputError(f"{name} must hold booleans, got {values.dtype}")
    shape(values, name, (None,))
    if len(values) != n_rows:
        raise InputError(f"{name} has {len(values)} rows but {rows_from} has {n_rows}: they must match")
    return values


def person_ids(ids: np.ndarray, name: str, n_rows: int, rows_from: str, limits: Limits) -> np.ndarray:
    """Person id of each row: in [-1, max_faces) (-1: a placeholder row), one per row of `rows_from`."""
    ids = integers(shape(ids, name, (None,)), name)
    if len(ids) != n_rows:
        raise InputError(f"{name} has {len(ids)} rows but {rows_from} has {n_rows}: they must match")
    if ids.size and not (-1 <= int(ids.min()) and int(ids.max()) < limits.max_faces):
        raise InputError(f"{name} holds person ids from {int(ids.min())} to {int(ids.max())}; they must be in [-1, {limits.max_faces})")
    return ids.astype(np.int64, copy=False)


def segment_ids(ids: np.ndarray, name: str, n_segments: int, segments_from: str) -> None:
    """Segment index of each row: in [-1, n_segments) (-1: a padding row, ignored)."""
    ids = integers(shape(ids, name, (None,)), name)
    if ids.size and int(ids.min()) < -1:
        raise InputError(f"{name} holds segment {int(ids.min())}; segment ids are >= 0 (-1: no segment)")
    if ids.size and int(ids.max()) >= n_segments:
        raise InputError(f"{name} holds segment {int(ids.max())} but there are {n_segments} segments ({segments_from})")
    kept = ids[ids >= 0]
    if kept.size:
        counts = np.bincount(kept, minlength=n_segments)
        busiest = int(counts.argmax())
        if counts[busiest] > MAX_ROWS_PER_SEGMENT:
            raise InputError(f"{name} gives segment {busiest} {int(counts[busiest])} rows, over the limit of {MAX_ROWS_PER_SEGMENT} per segment")


def fusion_inputs(inputs: dict[str, np.ndarray], entries: tuple[Modality, ...], limits: Limits) -> None:
    """The fusion's inputs, by name, for its modalities: one row per segment of each per-segment
    modality's features and flags (the first one's features give the segment count), rows of each
    sequence modality's features with their segment ids in [-1, S), finite features, consistent row
    counts."""
    counted = modalities.segment_count_input(entries)
    width = next(m.feature_dim for m in entries if m.features == counted)
    n_segments = rows(shape(inputs[counted], counted, (None, width)), counted, at_least=1, at_most=limits.max_segments,
                      what="rows (one per segment)")
    for m in entries:
        features = finite(shape(inputs[m.features], m.features, (None, m.feature_dim)), m.features)
        if m.sequence:
            rows(features, m.features, at_least=1, at_most=getattr(limits, m.max_rows))
            same_rows(features, m.features, inputs[m.index], m.index)
            segment_ids(inputs[m.index], m.index, n_segments, f"{counted} rows")
        else:
            for name, value in ((m.features, features), (m.index, shape(inputs[m.index], m.index, (None,)))):
                if len(value) != n_segments:
                    raise InputError(f"{name} has {len(value)} rows but there are {n_segments} segments ({counted} rows)")


def face_select_inputs(inputs: dict[str, np.ndarray], entries: tuple[Modality, ...], limits: Limits) -> None:
    """The sparse face selection's inputs (fv2es.models.sparse): the other modalities' fusion inputs,
    the face rows (FACES, FACE_TIMES, FACE_PERSON and the face modality's segment ids, one row each
    per face) and SEGMENT_TIMES (a row per segment)."""
    face = modalities.face_modality(entries)
    queries = tuple(m for m in entries if m is not face)
    fusion_inputs(inputs, queries, limits)
    counted = modalities.segment_count_input(queries)
    n_segments = len(inputs[counted])
    same_rows(segment_times(inputs["SEGMENT_TIMES"], limits), "SEGMENT_TIMES", inputs[counted], counted)
    crops = inputs["FACES"]
    faces(crops)
    n_faces = rows(crops, "FACES", at_most=limits.max_faces, what="faces")
    same_rows(crops, "FACES", face_times(inputs["FACE_TIMES"], limits), "FACE_TIMES")
    person_ids(inputs["FACE_PERSON"], "FACE_PERSON", n_faces, "FACES", limits)
    same_rows(crops, "FACES", shape(inputs[face.index], face.index, (None,)), face.index)
    segment_ids(inputs[face.index], face.index, n_segments, f"{counted} rows")


def group_inputs(inputs: dict[str, np.ndarray], audio: Modality, visual: Modality, limits: Limits) -> None:
    """The group model's inputs (fv2es.models.group): SEGMENT_TIMES; the faces' features with their
    FACE_TIMES; the frames (SCENE) with their SCENE_TIMES; the audio modality's features with their
    segment ids. A segment's visual rows (faces and frames inside it) stay within what a segment of
    the longest kind can hold: more could only come from a crafted request, and each segment's
    attention grows with the square of its rows."""
    times = segment_times(inputs["SEGMENT_TIMES"], limits)
    n_segments = len(times)
    features = finite(shape(inputs[visual.features], visual.features, (None, visual.feature_dim)), visual.features)
    rows(features, visual.features, at_least=1, at_most=limits.max_faces, what="faces")
    same_rows(features, visual.features, face_times(inputs["FACE_TIMES"], limits), "FACE_TIMES")
    scene = finite(shape(inputs["SCENE"], "SCENE", (None, 1, config.SCENE_SIZE, config.SCENE_SIZE)), "SCENE", max_abs=FACE_MAX_ABS)
    rows(scene, "SCENE", at_least=1, at_most=limits.max_frames, what="frames")
    same_rows(scene, "SCENE", frame_times(inputs["SCENE_TIMES"], limits), "SCENE_TIMES")
    sounds = finite(shape(inputs[audio.features], audio.features, (None, audio.feature_dim)), audio.features)
    rows(sounds, audio.features, at_least=1, at_most=getattr(limits, audio.max_rows))
    same_rows(sounds, audio.features, inputs[audio.index], audio.index)
    segment_ids(inputs[audio.index], audio.index, n_segments, "SEGMENT_TIMES rows")
    owners = np.concatenate([frame_segments(np.asarray(inputs[name], np.float32), times) for name in ("FACE_TIMES", "SCENE_TIMES")])
    counts = np.bincount(owners[owners >= 0], minlength=n_segments)
    if counts.size and counts.max() > MAX_VISUAL_ROWS_PER_SEGMENT:
        busiest = int(counts.argmax())
        raise InputError(f"segment {busiest} holds {int(counts[busiest])} faces and frames, over the limit of "
                         f"{MAX_VISUAL_ROWS_PER_SEGMENT} per segment")
