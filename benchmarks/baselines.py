"""The alternatives the server is measured against (benchmarks/run.py runs them all in one go).

(a) `InProcessPipeline` (fv2es/inprocess.py): the same steps and models, called one after another
    in one Python process, no server.
(b) `TwoPhasePipeline`: the paper's Pre+V2EM baseline. Phase 1 preprocesses each modality with its
    own tool into files, as a preprocessing script with ffmpeg and friends does: the audio track to a
    16 kHz WAV, one frame per 0.5 s to full-resolution JPEG images, the transcript to JSON, the audio
    encoder's rows (Whisper states or Mel chunks), face crops and token ids to .npy. Phase 2 reads the files back and runs the encoders
    and the fusion. Every computation is the server's own (fv2es.stages); what differs is the file
    round trips and each tool decoding the video for itself.
(c) Floors: decoding the video alone (every audio and video frame) and transcribing its audio alone
    (the server's ASR model and settings, but with every core). Run one after the other, nothing
    beats their sum; a server that overlaps the two on several cores can.
"""

from __future__ import annotations

import io
import json
import tempfile
import wave
from pathlib import Path

import av
import cv2
import numpy as np

from fv2es import config, stages, stretches
from fv2es.asr import SpeechRecognizer
from fv2es.checks import Limits
from fv2es.inprocess import InProcessPipeline

WAV_SCALE = 32767.0


class TwoPhasePipeline:
    def __init__(self, in_process: InProcessPipeline):
        self.models = in_process  # the same loaded models: phase 2 is the in-process inference

    def analyze(self, video: bytes) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="fv2es-two-phase-") as tmp:
            work = Path(tmp)
            self.preprocess(video, work)
            return self.infer(work)

    # Phase 1: one tool per modality, each writing files.
    def preprocess(self, video: bytes, work: Path) -> None:
        (work / "input.mp4").write_bytes(video)
        extract_audio(work / "input.mp4", work / "audio.wav")
        extract_frames(work / "input.mp4", work / "frames")
        audio, duration = read_wav(work / "audio.wav"), json.loads((work / "duration.json").read_text())
        speech = stages.asr(audio, np.array([duration]), self.models.recognizer, self.models.tokenizer, limits=Limits())
        transcript = {"segments": speech["SEGMENT_TIMES"].tolist(), "text": [t.decode() for t in speech["TRANSCRIPTS"]]}
        (work / "transcript.json").write_text(json.dumps(transcript))
        arrays = {name: speech[name] for name in ("TEXT_IDS", "TEXT_MASK", "SPEECH_ROWS", "SPEECH_SEGMENT") if name in speech}
        if config.AUDIO_INPUT == "mel":  # the audio encoder's rows from the WAV file; on "whisper" they come out of ASR
            arrays |= stages.mel(read_wav(work / "audio.wav"), np.array(transcript["segments"], np.float32), self.models.transform,
                                 limits=Limits())
        arrays |= faces_from_images(work / "frames", self.models.detector)
        for name, array in arrays.items():
            np.save(work / f"{name}.npy", array)

    # Phase 2: read everything back; the in-process pipeline runs the steps that are left.
    def infer(self, work: Path) -> dict[str, np.ndarray]:
        transcript = json.loads((work / "transcript.json").read_text())
        tensors = {path.stem: np.load(path) for path in work.glob("*.npy")}
        tensors["SEGMENT_TIMES"] = np.array(transcript["segments"], np.float32).reshape(-1, 2)
        tensors["TRANSCRIPTS"] = np.array([t.encode() for t in transcript["text"]], dtype=np.object_)
        tensors["SEGMENT_HAS_SPEECH"] = np.array([bool(t.strip()) for t in transcript["text"]])
        return self.models.run(tensors)


def extract_audio(video_path: Path, wav_path: Path) -> None:
    """`ffmpeg -i input -ac 1 -ar 16000 audio.wav`, plus the duration the timeline needs."""
    media = stages.demux(video_path.read_bytes(), limits=Limits())
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(config.SAMPLE_RATE)
        out.writeframes((np.clip(media["AUDIO"], -1, 1) * WAV_SCALE).astype("<i2").tobytes())
    (wav_path.parent / "duration.json").write_text(json.dumps(float(media["DURATION"][0])))


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / WAV_SCALE


def extract_frames(video_path: Path, folder: Path) -> None:
    """`ffmpeg -i input -vf fps=2 frames/%06d.jpg`: every frame decoded, one per 0.5 s written at full size."""
    folder.mkdir()
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = config.FRAME_DECODE_THREADING
        next_t = 0.0
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_t:
                continue
            cv2.imwrite(str(folder / f"{frame.time:012.6f}.jpg"), frame.to_ndarray(format="bgr24"))
            next_t = (np.floor(frame.time / config.FRAME_INTERVAL_S + 1e-6) + 1) * config.FRAME_INTERVAL_S


def faces_from_images(folder: Path, detector) -> dict[str, np.ndarray]:
    """The server's face step (same detector, tracking and crops, and the frames at low resolution)
    on the extracted images."""

    def frames():
        for path in sorted(folder.glob("*.jpg")):
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            scale = config.FRAME_MAX_WIDTH / grey.shape[1]
            if scale < 1:
                grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            yield float(path.stem), grey

    return stages.frame_rows(frames(), detector)


def decode_floor(video: bytes) -> int:
    """Decodes every audio and video frame of the file, converting nothing (slice threads: faster
    than frame threads here, 0.74 against 1.10 s on the 60 s clip)."""
    frames = 0
    with av.open(io.BytesIO(video)) as container:
        for stream in container.streams.video:
            stream.thread_type = config.FRAME_DECODE_THREADING
        for _ in container.decode(*container.streams.audio, *container.streams.video):
            frames += 1
    return frames


def asr_floor(recognizer: SpeechRecognizer, audio: np.ndarray) -> int:
    """The server's speech recognition alone on the decoded audio (run.py gives it every core)."""
    return len(recognizer.transcribe(audio))


def stretch_bounds(audio: np.ndarray) -> list[tuple[int, int]]:
    bounds = [0, *stretches.cuts(audio), len(audio)]
    return list(zip(bounds, bounds[1:]))


def asr_in_one_piece(recognizer: SpeechRecognizer, audio: np.ndarray) -> int:
    """The server's speech recognition on the whole audio in one call, as the whole-file path ran it
    before stretches (Whisper windows packed with speech across every pause)."""
    return len(recognizer.listen(audio).segments)


def asr_by_stretch(recognizer: SpeechRecognizer, audio: np.ndarray) -> int:
    """The same, stretch by stretch (fv2es.stretches), as `stages.asr` runs it now: each stretch's
    recognition reads the VAD probabilities that the cutter computed."""
    cutter = stretches.Cutter()
    bounds = [0, *cutter.cuts(audio), len(audio)]
    probs = [*cutter.stretch_probs, cutter.rest(audio)]
    return sum(len(recognizer.listen(audio[a:b], probs=p).segments) for (a, b), p in zip(zip(bounds, bounds[1:]), probs))


def whisper_windows(audio: np.ndarray) -> dict[str, int]:
    """Whisper encoder passes (speech blocks) of the audio in one piece and by stretch."""
    return {"one_piece": len(SpeechRecognizer.blocks(audio)),
            "by_stretch": sum(len(SpeechRecognizer.blocks(audio[a:b])) for a, b in stretch_bounds(audio)),
            "stretches": len(stretch_bounds(audio))}

