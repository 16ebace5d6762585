"""Demux: raw container bytes -> 16 kHz mono audio, and frames sampled every 0.5 s.

Decoding happens in memory with PyAV (FFmpeg's libraries): no temporary files, no subprocess.
Audio and frames are decoded by two independent passes over the same bytes (`decode_audio`,
`sample_frames`), so the server runs them in parallel: speech recognition starts as soon as the
audio is out, while frames are still being decoded and searched for faces. Frames are yielded one
at a time and never held all at once: their memory does not grow with the video's length.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np

from . import config
from .errors import InputError

# FFmpeg demuxers that read still images: such an input is not a video, whatever it decodes to.
_IMAGE_FORMATS = ("image2", "_pipe", "gif", "webp")


@dataclass
class Media:
    audio: np.ndarray  # float32 [n_samples] at config.SAMPLE_RATE, empty when there is no audio
    frames: np.ndarray  # uint8 [n_frames, H, W] grey (all that face detection uses), at most FRAME_MAX_WIDTH wide
    frame_times: np.ndarray  # float32 [n_frames] presentation time of each frame, seconds
    duration: float  # seconds covered by the streams


@contextmanager
def open_media(data: bytes, *, max_bytes: int = config.MAX_INPUT_BYTES, max_duration_s: float = config.MAX_DURATION_S):
    """The opened container with its first audio and video streams; InputError for anything that is not a video."""
    if len(data) == 0:
        raise InputError("input is empty (0 bytes): send the bytes of a video file")
    if len(data) > max_bytes:
        raise InputError(f"input is {len(data)} bytes, over the server's limit of {max_bytes} bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"input is not a readable video file ({_reason(exc)})") from None
    with container:
        fmt = container.format.name
        if any(tag in fmt for tag in _IMAGE_FORMATS):
            raise InputError(f"input is a still image (format '{fmt}'), not a video")
        audio_stream = next(iter(container.streams.audio), None)
        video_stream = next(iter(container.streams.video), None)
        if audio_stream is None and video_stream is None:
            raise InputError(f"input (format '{fmt}') has neither an audio nor a video stream")
        header_duration = container.duration / av.time_base if container.duration else None
        if header_duration is not None and header_duration > max_duration_s:
            raise InputError(f"video is {header_duration:.1f} s long, over the server's limit of {max_duration_s:.0f} s")
        yield container, audio_stream, video_stream


def decode_audio(
    data: bytes, *, max_bytes: int = config.MAX_INPUT_BYTES, max_duration_s: float = config.MAX_DURATION_S
) -> tuple[np.ndarray, float]:
    """The audio as float32 mono at SAMPLE_RATE (empty when there is none) and the video's duration.

    Video packets are read but not decoded: their timestamps give the duration of a video whose
    picture outlasts its sound.
    """
    with open_media(data, max_bytes=max_bytes, max_duration_s=max_duration_s) as (container, audio_stream, video_stream):
        origin = _origin(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=config.SAMPLE_RATE)
        parts: list[np.ndarray] = []
        end = 0.0
        streams = [s for s in (audio_stream, video_stream) if s is not None]
        try:
            for packet in container.demux(*streams):
                if packet.pts is not None and packet.time_base is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin
                    if t > max_duration_s + 1.0:
                        raise InputError(f"video is longer than the server's limit of {max_duration_s:.0f} s")
                    if packet.stream is video_stream:
                        end = max(end, t)
                if packet.stream is audio_stream:
                    for frame in packet.decode():
                        parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            if audio_stream is not None:
                parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.error.FFmpegError as exc:
            if not parts and end == 0.0:
                raise InputError(f"input could not be decoded ({_reason(exc)})") from None
            raise InputError(f"input is corrupt: decoding failed after {end:.1f} s ({_reason(exc)})") from None
    audio = np.concatenate(parts, dtype=np.float32) if parts else np.zeros(0, np.float32)  # "flt": no copy to convert
    if audio.size == 0 and end == 0.0:
        raise InputError(f"no audio or video could be decoded from the input (format '{container.format.name}')")
    return audio, max(end, audio.size / config.SAMPLE_RATE)


def sample_frames(
    data: bytes,
    *,
    max_bytes: int = config.MAX_INPUT_BYTES,
    max_duration_s: float = config.MAX_DURATION_S,
    frame_interval_s: float = config.FRAME_INTERVAL_S,
    max_width: int = config.FRAME_MAX_WIDTH,
    stop_at_decode_error: bool = False,
) -> Iterator[tuple[float, np.ndarray]]:
    """(time, grey frame) for the first frame at or after each multiple of `frame_interval_s`.

    With `stop_at_decode_error` a stream that cannot be decoded (further) ends there instead of
    raising: the server's face step, whose input demux has already checked, keeps what it decoded.
    """
    with open_media(data, max_bytes=max_bytes, max_duration_s=max_duration_s) as (container, _, video_stream):
        if video_stream is None:
            return
        video_stream.thread_type = config.FRAME_DECODE_THREADING
        if config.FRAME_SKIP_NONREF:
            video_stream.codec_context.skip_frame = "NONREF"
        origin = _origin(container)
        next_sample_t = 0.0
        size = None
        decoded = 0
        try:
            for frame in container.decode(video_stream):
                decoded += 1
                t = frame.time - origin if frame.time is not None else next_sample_t
                if t > max_duration_s:
                    raise InputError(f"video is longer than the server's limit of {max_duration_s:.0f} s")
                if t + 1e-6 < next_sample_t:
                    continue
                size = size or _grey_size(frame, max_width)  # a stream may change resolution: keep the first
                yield t, frame.to_ndarray(format="gray", width=size[0], height=size[1])
                next_sample_t = (np.floor(t / frame_interval_s + 1e-6) + 1) * frame_interval_s
        except av.error.FFmpegError as exc:
            if stop_at_decode_error:
                return
            if not decoded:
                raise InputError(f"input could not be decoded ({_reason(exc)})") from None
            raise InputError(f"input is corrupt: decoding failed after {next_sample_t:.1f} s ({_reason(exc)})") from None


def demux(data: bytes, **limits) -> Media:
    """Audio, all sampled frames and the duration at once: for training and tests (the server streams)."""
    audio, duration = decode_audio(data, **limits)
    sampled = list(sample_frames(data, **limits))
    frames = np.stack([f for _, f in sampled]) if sampled else np.zeros((0, 1, 1), np.uint8)
    times = np.asarray([t for t, _ in sampled], np.float32)
    return Media(audio, frames, times, duration)


def _grey_size(frame: av.VideoFrame, max_width: int) -> tuple[int, int]:
    # swscale scales during the pixel-format conversion: cheaper than a second resize.
    width, height = frame.width, frame.height
    if width > max_width:
        height = max(2, round(height * max_width / width / 2) * 2)
        width = max_width
    return width, height


def _origin(container) -> float:
    # Times are measured from the container's start (MPEG-TS streams, for one, start at ~1.4 s).
    return container.start_time / av.time_base if container.start_time else 0.0


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
