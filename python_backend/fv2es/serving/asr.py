"""asr: AUDIO, AUDIO_START, DURATION (and SPEECH_PROBS from a stream) -> segments of the timeline, their transcripts and token ids; with the
"whisper" audio input also SPEECH_ROWS, SPEECH_SEGMENT (the audio encoder's input, from the Whisper
encoder states that the transcription computes)."""

from __future__ import annotations

from .. import config, stages
from ..asr import SpeechRecognizer, check_state_dim, check_trained_on
from ..text import load_tokenizer
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        gpu = self.device.startswith("cuda")
        asr_model = self.parameter("asr_model", config.ASR_MODEL)
        self.speech_rows = self.parameter("audio_input", config.AUDIO_INPUT) == "whisper"
        if self.speech_rows:
            check_trained_on(asr_model, self.parameter("audio_branch_asr_model", config.ASR_MODEL))
        self.recognizer = SpeechRecognizer(
            asr_model,
            device="cuda" if gpu else "cpu",
            device_index=int(self.device.split(":")[1]) if gpu else 0,
            compute_type=self.parameter("compute_type", "default"),
            cpu_threads=int(self.parameter("cpu_threads", str(config.ASR_CPU_THREADS))),
            beam_size=int(self.parameter("beam_size", str(config.ASR_BEAM_SIZE))),
            language=self.parameter("language", config.ASR_LANGUAGE),
            temperature=float(self.parameter("temperature", str(config.ASR_TEMPERATURE))),
        )
        self.tokenizer = load_tokenizer(self.parameter("text_model", config.TEXT_MODEL))
        if self.speech_rows:
            check_state_dim(asr_model, self.recognizer.state_dim)
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.asr(
            inputs["AUDIO"], inputs["DURATION"], self.recognizer, self.tokenizer, audio_start=inputs["AUDIO_START"],
            limits=self.limits, speech_rows=self.speech_rows, speech_probs=inputs.get("SPEECH_PROBS"),
        )
