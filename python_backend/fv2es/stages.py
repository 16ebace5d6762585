"""The preprocessing steps of the pipeline as plain functions: named numpy arrays in, named arrays out.

Each Triton model of the ensemble (`fv2es/serving/`) is a thin wrapper around one of these, with the
same input and output names as its config.pbtxt; `benchmarks/baselines.py` calls the very same
functions one after another in a single process, which is the "without a server" comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import checks, config, stretches
from .faces import FaceDetector, normalise_faces, video_faces
from .errors import InputError
from .modalities import FACES, Modality
from .people import person_rows, person_scores, segment_speakers
from .media import decode_audio, sample_frames
from .segments import Segment, aggregate_scores, frame_segments, segment_timeline
from .scene import SceneRows
from .text import tokenize

if TYPE_CHECKING:  # torch and faster-whisper stay out of the models that do not need them (memory)
    import torch

    from .asr import SpeechRecognizer

Arrays = dict[str, np.ndarray]


def demux(video: bytes, *, limits: checks.Limits) -> Arrays:
    """VIDEO bytes -> AUDIO [n] float32 at SAMPLE_RATE, AUDIO_START [1] (0: the audio starts the
    timeline; a live stream sends later stretches), DURATION [1] seconds."""
    audio, duration = decode_audio(video, limits=limits)
    out = {"AUDIO": audio, "AUDIO_START": np.zeros(1, np.int64), "DURATION": np.array([duration], np.float32)}
    # What demux gives passes the checks of the steps after it, which run in parallel: a file
    # that fails them fails here, in one step (Triton 2.51 can leave a request unanswered when two
    # parallel steps fail).
    checks.audio(out["AUDIO"], limits, name="the decoded audio")
    checks.duration(out["DURATION"], limits, name="the input's duration")
    return out


def face_crop(
    video: bytes,
    detector: FaceDetector,
    *,
    duration: np.ndarray | None = None,
    limits: checks.Limits,
) -> Arrays:
    """VIDEO bytes (and DURATION from demux, when given) -> the faces of the sampled frames
    (fv2es.faces.FaceRows): FACES [N, 1, S, S] normalised crops, FACE_TIMES [N] seconds (-1:
    placeholder), FACE_PERSON [N] (the person each face is, -1: placeholder), FACE_MAIN [N] (the
    largest face of its frame: the visual input of the segment scores), FACE_MOUTH [N] (mouth
    movement since the person's previous face, -1: none); and every sampled frame at low resolution
    (fv2es.scene): SCENE [T, 1, s, s], SCENE_TIMES [T] (-1: placeholder).

    Runs after demux has accepted the file: a video stream that is corrupt (or undecodable) gives
    the faces of the frames decoded before the damage, and segments past it are flagged faceless.
    """
    if duration is not None:
        checks.duration(duration, limits)
    return frame_rows(sample_frames(video, limits=limits, stop_at_decode_error=True), detector)


def frame_rows(frames, detector: FaceDetector) -> Arrays:
    """The face step's outputs from (time, grey frame) pairs: every face (`face_rows`) and every
    frame at low resolution (fv2es.scene)."""
    scenes = SceneRows()
    return {**face_rows(video_faces(scenes.watch(frames), detector)), **scenes.take()}


def face_rows(rows: Arrays) -> Arrays:
    """The visual encoder's rows: the faces found, or when there is none one neutral grey row that
    keeps the encoder's batch non-empty, at time -1 (no segment: the fusion ignores it), person -1."""
    if rows["FACES"].shape[0] > 0:
        return rows
    return {
        "FACES": normalise_faces(np.full((1, config.FACE_SIZE, config.FACE_SIZE), config.FACE_MEAN, np.uint8)),
        "FACE_TIMES": np.array([-1.0], np.float32),
        "FACE_PERSON": np.array([-1], np.int64),
        "FACE_MAIN": np.array([False]),
        "FACE_MOUTH": np.array([-1.0], np.float32),
    }


def asr(
    audio: np.ndarray,
    duration: np.ndarray,
    recognizer: "SpeechRecognizer",
    tokenizer,
    *,
    audio_start: np.ndarray | int = 0,
    limits: checks.Limits,
    speech_rows: bool = config.AUDIO_INPUT == "whisper",
    speech_probs: np.ndarray | None = None,
) -> Arrays:
    """AUDIO (from sample AUDIO_START of the timeline on), DURATION (where the timeline ends) -> the
    segments of the timeline from AUDIO_START on, their transcripts and their token ids; with
    `speech_rows`, also the audio encoder's input from the Whisper encoder states of the speech:
    SPEECH_ROWS [N, 2 x SPEECH_STATE_DIM] and SPEECH_SEGMENT [N] (-1: a placeholder row).

    The audio is cut into stretches at pauses (fv2es.stretches), each recognised and segmented alone:
    a live stream sends one stretch at a time, with its start, and gets the same segments. Silero VAD
    runs once: the cutter's speech probabilities of each stretch are the ones its recognition uses;
    a stream sends them (SPEECH_PROBS) with its stretch, which is then not cut again."""
    from .asr import speech_chunks

    start = checks.audio_start(audio_start, limits)
    audio, seconds = checks.audio_and_duration(audio, duration, limits, start=start)
    if speech_probs is not None:
        bounds, probs = [0, len(audio)], [checks.speech_probs(speech_probs, len(audio))]
    else:
        cutter = stretches.Cutter()
        bounds = [0, *cutter.cuts(audio), len(audio)]
        probs = [*cutter.stretch_probs, cutter.rest(audio)]
    segments, rows, owners = [], [], []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        offset = (start + a) / config.SAMPLE_RATE
        end = stretches.timeline_end((start + b) / config.SAMPLE_RATE, seconds) if k == len(bounds) - 2 else (start + b) / config.SAMPLE_RATE
        if end - offset <= 0:
            continue
        speech = recognizer.listen(audio[a:b].astype(np.float32, copy=False), probs=probs[k])
        local = segment_timeline(speech.segments, end - offset)
        if speech_rows:
            local_times = np.array([[s.start, s.end] for s in local], np.float32)
            stretch_rows, stretch_owners = speech_chunks(speech.states, speech.times, local_times)
            keep = stretch_owners >= 0
            rows.append(stretch_rows[keep])
            owners.append(stretch_owners[keep] + len(segments))
        segments.extend(Segment(s.start + offset, s.end + offset, s.text) for s in local)
    texts = [s.text for s in segments]
    ids, mask = tokenize(tokenizer, texts)
    out = {
        "SEGMENT_TIMES": np.array([[s.start, s.end] for s in segments], np.float32).reshape(-1, 2),
        "TRANSCRIPTS": np.array([t.encode("utf-8") for t in texts], dtype=np.object_),
        "SEGMENT_HAS_SPEECH": np.array([s.has_speech for s in segments], bool),
        "TEXT_IDS": ids,
        "TEXT_MASK": mask,
    }
    if speech_rows:
        rows_, owners_ = (np.concatenate(rows), np.concatenate(owners)) if rows else (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        if len(owners_) == 0:  # no speech anywhere: one placeholder row keeps the encoder's batch non-empty
            rows_, owners_ = speech_chunks(np.zeros((0, 0), np.float32), np.zeros(0), np.zeros((0, 2), np.float32))
        out["SPEECH_ROWS"], out["SPEECH_SEGMENT"] = rows_.astype(np.float32), owners_.astype(np.int64)
    return out


def mel(
    audio: np.ndarray,
    segment_times: np.ndarray,
    transform: "torch.nn.Module",
    device: str = "cpu",
    *,
    audio_start: np.ndarray | int = 0,
    limits: checks.Limits,
) -> Arrays:
    """AUDIO (from sample AUDIO_START of the timeline on), SEGMENT_TIMES -> MEL_CHUNKS [N, N_MELS, CHUNK_FRAMES], MEL_SEGMENT [N]."""
    audio = checks.audio(audio, limits)
    start_s = checks.audio_start(audio_start, limits) / config.SAMPLE_RATE
    segment_times = checks.segment_times(segment_times, limits)
    import torch

    from .audio import segment_mel_chunks

    samples = torch.from_numpy(audio.astype(np.float32, copy=False)).to(device)
    times = [(float(a) - start_s, float(b) - start_s) for a, b in segment_times]
    with torch.inference_mode():
        chunks, owners = segment_mel_chunks(samples, times, transform)
    if chunks.shape[0] == 0:
        # No audio: one silent row keeps the encoder's batch non-empty; segment -1 = ignore.
        chunks = torch.zeros(1, config.N_MELS, config.CHUNK_FRAMES)
        owners = torch.full((1,), -1, dtype=torch.int64)
    return {"MEL_CHUNKS": chunks.cpu().numpy(), "MEL_SEGMENT": owners.numpy()}


def assign_faces(
    face_times: np.ndarray, face_main: np.ndarray, segment_times: np.ndarray, *, limits: checks.Limits
) -> Arrays:
    """FACE_TIMES, FACE_MAIN, SEGMENT_TIMES -> FACE_SEGMENT [N] (the segment of each frame's largest
    face; -1: none, ignored by the fusion), SEGMENT_HAS_FACE [S]."""
    face_times = checks.face_times(face_times, limits)
    face_main = checks.flags(face_main, "FACE_MAIN", len(face_times), "FACE_TIMES")
    segment_times = checks.segment_times(segment_times, limits)
    owners = np.where(face_main, frame_segments(face_times, segment_times), -1).astype(np.int64)
    has_face = np.zeros(len(segment_times), bool)
    has_face[owners[owners >= 0]] = True
    return {"FACE_SEGMENT": owners, "SEGMENT_HAS_FACE": has_face}


def people(inputs: Arrays, entries: tuple[Modality, ...], *, limits: checks.Limits) -> Arrays:
    """The faces' persons and the segments -> SEGMENT_SPEAKER [S], and the inputs of the fusion run
    once more on (person, segment) pairs (fv2es.people.person_rows), by name: FACE_TIMES,
    FACE_PERSON, FACE_MOUTH, SEGMENT_TIMES, SEGMENT_HAS_SPEECH and each modality's
    `Modality.person_inputs`. SEGMENT_SCORES, if given, is not used: the ensemble passes it so that
    this step follows the fusion (fv2es.pipeline). FACE_ROW_TIMES and FACE_ROW_PERSON, if given, are
    the face modality's rows when they are not every face (the sparse face selection's): the
    speakers come from every face, the face rows' pairs from those."""
    face_times = checks.face_times(inputs["FACE_TIMES"], limits)
    n_faces = len(face_times)
    face_person = checks.person_ids(inputs["FACE_PERSON"], "FACE_PERSON", n_faces, "FACE_TIMES", limits)
    face_mouth = checks.finite(checks.shape(inputs["FACE_MOUTH"], "FACE_MOUTH", (n_faces,)), "FACE_MOUTH")
    segment_times = checks.segment_times(inputs["SEGMENT_TIMES"], limits)
    n_segments = len(segment_times)
    segment_has_speech = checks.flags(inputs["SEGMENT_HAS_SPEECH"], "SEGMENT_HAS_SPEECH", n_segments, "SEGMENT_TIMES")
    rows = {}
    for m in entries:
        if m.person_rows == FACES:
            continue
        if m.sequence:
            index = checks.integers(checks.shape(inputs[m.index], m.index, (None,)), m.index)
            checks.segment_ids(index, m.index, n_segments, "SEGMENT_TIMES")
            rows[m.index] = index
        else:
            rows[m.features] = checks.finite(checks.shape(inputs[m.features], m.features, (n_segments, m.feature_dim)), m.features)
            rows[m.index] = checks.flags(inputs[m.index], m.index, n_segments, "SEGMENT_TIMES")
    if "SEGMENT_SCORES" in inputs:
        checks.shape(inputs["SEGMENT_SCORES"], "SEGMENT_SCORES", (n_segments, None))
    speakers = segment_speakers(face_times, face_person, face_mouth, segment_times, segment_has_speech)
    row_times, row_person = face_times, face_person
    if "FACE_ROW_TIMES" in inputs or "FACE_ROW_PERSON" in inputs:
        if not ("FACE_ROW_TIMES" in inputs and "FACE_ROW_PERSON" in inputs):
            raise InputError("FACE_ROW_TIMES and FACE_ROW_PERSON come together (the face modality's rows), or neither")
        row_times = checks.face_times(inputs["FACE_ROW_TIMES"], limits, "FACE_ROW_TIMES")
        row_person = checks.person_ids(inputs["FACE_ROW_PERSON"], "FACE_ROW_PERSON", len(row_times), "FACE_ROW_TIMES", limits)
    out = person_rows(row_times, row_person, segment_times, speakers, rows, entries)
    return {"SEGMENT_SPEAKER": speakers, "PERSON_PAIRS": out.pop("PERSON_SEGMENTS"), **out}


def people_aggregate(
    person_pairs: np.ndarray, pair_scores: np.ndarray, segment_times: np.ndarray, *, limits: checks.Limits
) -> Arrays:
    """PERSON_PAIRS, PAIR_SCORES (the fusion's scores of each pair), SEGMENT_TIMES -> PERSON_SEGMENTS,
    PERSON_SEGMENT_SCORES (the placeholder pair dropped), PERSON_SCORES [P, C] (each person's
    duration-weighted overall)."""
    segment_times = checks.segment_times(segment_times, limits)
    pairs = checks.integers(checks.shape(person_pairs, "PERSON_PAIRS", (None, 2)), "PERSON_PAIRS")
    checks.segment_ids(pairs[:, 1], "PERSON_PAIRS segment", len(segment_times), "SEGMENT_TIMES")
    checks.person_ids(pairs[:, 0], "PERSON_PAIRS person", len(pairs), "PERSON_PAIRS", limits)
    scores = checks.finite(checks.shape(pair_scores, "PAIR_SCORES", (len(pairs), None)), "PAIR_SCORES")
    segments_, segment_scores, overall = person_scores(pairs, scores, segment_times)
    return {"PERSON_SEGMENTS": segments_, "PERSON_SEGMENT_SCORES": segment_scores, "PERSON_SCORES": overall}


def aggregate(
    segment_scores: np.ndarray, segment_times: np.ndarray, labels: list[str], *, limits: checks.Limits
) -> Arrays:
    """SEGMENT_SCORES, SEGMENT_TIMES -> VIDEO_SCORES (duration-weighted), LABELS."""
    if np.ndim(segment_scores) == 2 and np.shape(segment_scores)[1] != len(labels):
        raise RuntimeError(f"fusion gives {np.shape(segment_scores)[1]} scores but {len(labels)} labels are shipped")
    checks.segment_scores(segment_scores, segment_times, len(labels), limits)
    return {
        "VIDEO_SCORES": aggregate_scores(segment_scores, segment_times),
        "LABELS": np.array([label.encode() for label in labels], dtype=np.object_),
    }
