"""The whole pipeline in one Python process, without a server: the same steps (`fv2es.stages`) and
the same exported TorchScript models, called one after another for one video at a time.

This is what a user would write by hand; the benchmarks compare the server with it, and a test
checks that both give the same scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import config, stages
from .asr import SpeechRecognizer
from .audio import mel_transform
from .faces import make_face_detector
from .models import load_for_inference
from .text import load_tokenizer

TORCHSCRIPT_MODELS = ("audio_encoder", "visual_encoder", "text_encoder", "fusion")


class InProcessPipeline:
    def __init__(self, repository: Path):
        self.detector = make_face_detector()
        self.recognizer = SpeechRecognizer()
        self.tokenizer = load_tokenizer()
        self.transform = mel_transform()
        self.models = {name: load_for_inference(str(repository / name / "1" / "model.pt")) for name in TORCHSCRIPT_MODELS}

    def run_model(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.models[name](*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)).numpy()

    def analyze(self, video: bytes) -> dict[str, np.ndarray]:
        """The ensemble's outputs for one video (MODEL_INFO aside)."""
        media = stages.demux(video)
        faces = stages.face_crop(video, self.detector)
        return self.infer(media, faces)

    def infer(self, media: stages.Arrays, faces: stages.Arrays) -> dict[str, np.ndarray]:
        """Everything after demux and face_crop: ASR (and Mel, on the "mel" audio input), the encoders,
        fusion and aggregation."""
        speech = stages.asr(media["AUDIO"], media["DURATION"], self.recognizer, self.tokenizer)
        if config.AUDIO_INPUT == "whisper":
            audio_rows, audio_segment = speech["SPEECH_ROWS"], speech["SPEECH_SEGMENT"]
        else:
            mel = stages.mel(media["AUDIO"], speech["SEGMENT_TIMES"], self.transform)
            audio_rows, audio_segment = mel["MEL_CHUNKS"], mel["MEL_SEGMENT"]
        owners = stages.assign_faces(faces["FACE_TIMES"], speech["SEGMENT_TIMES"])
        scores = self.run_model(
            "fusion",
            self.run_model("audio_encoder", audio_rows), audio_segment,
            self.run_model("visual_encoder", faces["FACES"]), owners["FACE_SEGMENT"],
            self.run_model("text_encoder", speech["TEXT_IDS"], speech["TEXT_MASK"]), speech["SEGMENT_HAS_SPEECH"],
        )
        video = stages.aggregate(scores, speech["SEGMENT_TIMES"], list(config.LABELS))
        return {
            "SEGMENT_TIMES": speech["SEGMENT_TIMES"],
            "TRANSCRIPTS": speech["TRANSCRIPTS"],
            "SEGMENT_SCORES": scores,
            "SEGMENT_HAS_SPEECH": speech["SEGMENT_HAS_SPEECH"],
            "SEGMENT_HAS_FACE": owners["SEGMENT_HAS_FACE"],
            **video,
        }
