"""The preprocessing steps of the pipeline as plain functions: named numpy arrays in, named arrays out.

Each Triton model of the ensemble (`fv2es/serving/`) is a thin wrapper around one of these, with the
same input and output names as its config.pbtxt; `benchmarks/baselines.py` calls the very same
functions one after another in a single process, which is the "without a server" comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import checks, config
from .faces import FaceDetector, normalise_faces, video_faces
from .media import decode_audio, sample_frames
from .segments import aggregate_scores, frame_segments, segment_timeline
from .text import tokenize

if TYPE_CHECKING:  # torch and faster-whisper stay out of the models that do not need them (memory)
    import torch

    from .asr import SpeechRecognizer

Arrays = dict[str, np.ndarray]


def demux(video: bytes, *, max_bytes: int = config.MAX_INPUT_BYTES, max_duration_s: float = config.MAX_DURATION_S) -> Arrays:
    """VIDEO bytes -> AUDIO [n] float32 at SAMPLE_RATE, DURATION [1] seconds."""
    audio, duration = decode_audio(video, max_bytes=max_bytes, max_duration_s=max_duration_s)
    out = {"AUDIO": audio, "DURATION": np.array([duration], np.float32)}
    # What demux gives passes the checks of the steps after it, which run in parallel: a file
    # that fails them fails here, in one step (Triton 2.51 can leave a request unanswered when two
    # parallel steps fail).
    limits = checks.Limits(max_duration_s)
    checks.audio(out["AUDIO"], limits, name="the decoded audio")
    checks.duration(out["DURATION"], limits, name="the input's duration")
    return out


def face_crop(
    video: bytes,
    detector: FaceDetector,
    *,
    duration: np.ndarray | None = None,
    max_bytes: int = config.MAX_INPUT_BYTES,
    max_duration_s: float = config.MAX_DURATION_S,
) -> Arrays:
    """VIDEO bytes (and DURATION from demux, when given) -> FACES [N, 1, S, S] normalised crops,
    FACE_TIMES [N] seconds (-1: placeholder).

    Runs after demux has accepted the file: a video stream that is corrupt (or undecodable) gives
    the faces of the frames decoded before the damage, and segments past it are flagged faceless.
    """
    if duration is not None:
        checks.duration(duration, checks.Limits(max_duration_s))
    frames = sample_frames(video, max_bytes=max_bytes, max_duration_s=max_duration_s, stop_at_decode_error=True)
    return face_rows(*video_faces(frames, detector))


def face_rows(faces: np.ndarray, times: np.ndarray) -> Arrays:
    """The visual encoder's rows: the faces found, or when there is none one neutral grey row that
    keeps the encoder's batch non-empty, at time -1 (no segment: the fusion ignores it)."""
    if faces.shape[0] == 0:
        faces = normalise_faces(np.full((1, config.FACE_SIZE, config.FACE_SIZE), config.FACE_MEAN, np.uint8))
        times = np.array([-1.0], np.float32)
    return {"FACES": faces, "FACE_TIMES": times}


def asr(
    audio: np.ndarray,
    duration: np.ndarray,
    recognizer: "SpeechRecognizer",
    tokenizer,
    *,
    window_s: float = config.WINDOW_S,
    max_duration_s: float = config.MAX_DURATION_S,
    speech_rows: bool = config.AUDIO_INPUT == "whisper",
) -> Arrays:
    """AUDIO, DURATION -> the timeline's segments, their transcripts and their token ids; with
    `speech_rows`, also the audio encoder's input from the Whisper encoder states of the speech:
    SPEECH_ROWS [N, 2 x SPEECH_STATE_DIM] and SPEECH_SEGMENT [N] (-1: a placeholder row)."""
    from .asr import speech_chunks

    audio, seconds = checks.audio_and_duration(audio, duration, checks.Limits(max_duration_s))
    speech = recognizer.listen(audio.astype(np.float32, copy=False))
    segments = segment_timeline(speech.segments, seconds, window_s=window_s)
    texts = [s.text for s in segments]
    ids, mask = tokenize(tokenizer, texts)
    out = {
        "SEGMENT_TIMES": np.array([[s.start, s.end] for s in segments], np.float32),
        "TRANSCRIPTS": np.array([t.encode("utf-8") for t in texts], dtype=np.object_),
        "SEGMENT_HAS_SPEECH": np.array([s.has_speech for s in segments], bool),
        "TEXT_IDS": ids,
        "TEXT_MASK": mask,
    }
    if speech_rows:
        out["SPEECH_ROWS"], out["SPEECH_SEGMENT"] = speech_chunks(speech.states, speech.times, out["SEGMENT_TIMES"])
    return out


def mel(
    audio: np.ndarray,
    segment_times: np.ndarray,
    transform: "torch.nn.Module",
    device: str = "cpu",
    *,
    max_duration_s: float = config.MAX_DURATION_S,
) -> Arrays:
    """AUDIO, SEGMENT_TIMES -> MEL_CHUNKS [N, N_MELS, CHUNK_FRAMES], MEL_SEGMENT [N]."""
    limits = checks.Limits(max_duration_s)
    audio = checks.audio(audio, limits)
    segment_times = checks.segment_times(segment_times, limits)
    import torch

    from .audio import segment_mel_chunks

    samples = torch.from_numpy(audio.astype(np.float32, copy=False)).to(device)
    times = [(float(a), float(b)) for a, b in segment_times]
    with torch.inference_mode():
        chunks, owners = segment_mel_chunks(samples, times, transform)
    if chunks.shape[0] == 0:
        # No audio: one silent row keeps the encoder's batch non-empty; segment -1 = ignore.
        chunks = torch.zeros(1, config.N_MELS, config.CHUNK_FRAMES)
        owners = torch.full((1,), -1, dtype=torch.int64)
    return {"MEL_CHUNKS": chunks.cpu().numpy(), "MEL_SEGMENT": owners.numpy()}


def assign_faces(face_times: np.ndarray, segment_times: np.ndarray, *, max_duration_s: float = config.MAX_DURATION_S) -> Arrays:
    """FACE_TIMES, SEGMENT_TIMES -> FACE_SEGMENT [N] (-1: none, ignored by the fusion), SEGMENT_HAS_FACE [S]."""
    limits = checks.Limits(max_duration_s)
    face_times = checks.face_times(face_times, limits)
    segment_times = checks.segment_times(segment_times, limits)
    owners = frame_segments(face_times, segment_times)
    has_face = np.zeros(len(segment_times), bool)
    has_face[owners[owners >= 0]] = True
    return {"FACE_SEGMENT": owners, "SEGMENT_HAS_FACE": has_face}


def aggregate(
    segment_scores: np.ndarray, segment_times: np.ndarray, labels: list[str], *, max_duration_s: float = config.MAX_DURATION_S
) -> Arrays:
    """SEGMENT_SCORES, SEGMENT_TIMES -> VIDEO_SCORES (duration-weighted), LABELS."""
    if np.ndim(segment_scores) == 2 and np.shape(segment_scores)[1] != len(labels):
        raise RuntimeError(f"fusion gives {np.shape(segment_scores)[1]} scores but {len(labels)} labels are shipped")
    checks.segment_scores(segment_scores, segment_times, len(labels), checks.Limits(max_duration_s))
    return {
        "VIDEO_SCORES": aggregate_scores(segment_scores, segment_times),
        "LABELS": np.array([label.encode() for label in labels], dtype=np.object_),
    }
