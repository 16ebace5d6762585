"""asr: AUDIO, DURATION -> segments of the timeline, their transcripts and token ids."""

from __future__ import annotations

import numpy as np

from .. import config
from ..asr import SpeechRecognizer
from ..errors import InputError
from ..segments import segment_timeline
from ..text import load_tokenizer, tokenize
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        gpu = self.device.startswith("cuda")
        self.recognizer = SpeechRecognizer(
            self.parameter("asr_model", config.ASR_MODEL),
            device="cuda" if gpu else "cpu",
            device_index=int(self.device.split(":")[1]) if gpu else 0,
            compute_type=self.parameter("compute_type", "default"),
            cpu_threads=int(self.parameter("cpu_threads", "0")),
            beam_size=int(self.parameter("beam_size", str(config.ASR_BEAM_SIZE))),
            language=self.parameter("language", config.ASR_LANGUAGE),
            temperature=float(self.parameter("temperature", str(config.ASR_TEMPERATURE))),
        )
        self.tokenizer = load_tokenizer(self.parameter("text_model", config.TEXT_MODEL))
        self.window_s = float(self.parameter("window_s", str(config.WINDOW_S)))

    def process(self, inputs):
        audio = inputs["AUDIO"].astype(np.float32, copy=False)
        duration = float(inputs["DURATION"].reshape(-1)[0])
        if not duration > 0:
            raise InputError("input has no measurable duration (a single frame or an empty stream)")
        speech = self.recognizer.transcribe(audio)
        segments = segment_timeline(speech, duration, window_s=self.window_s)
        texts = [s.text for s in segments]
        ids, mask = tokenize(self.tokenizer, texts)
        return {
            "SEGMENT_TIMES": np.array([[s.start, s.end] for s in segments], np.float32),
            "TRANSCRIPTS": np.array([t.encode("utf-8") for t in texts], dtype=np.object_),
            "SEGMENT_HAS_SPEECH": np.array([s.has_speech for s in segments], bool),
            "TEXT_IDS": ids,
            "TEXT_MASK": mask,
        }
