"""Demux: raw container bytes -> 16 kHz mono audio and frames sampled every 0.5 s.

Decoding happens in memory with PyAV (FFmpeg's libraries): no temporary files, no subprocess.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import cv2
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
    duration: float  # seconds covered by the decoded streams


def demux(
    data: bytes,
    *,
    max_bytes: int = config.MAX_INPUT_BYTES,
    max_duration_s: float = config.MAX_DURATION_S,
    frame_interval_s: float = config.FRAME_INTERVAL_S,
    max_width: int = config.FRAME_MAX_WIDTH,
) -> Media:
    """Decode a whole video file held in memory. Raises InputError for anything that is not one."""
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
            raise InputError(
                f"video is {header_duration:.1f} s long, over the server's limit of {max_duration_s:.0f} s"
            )
        audio, frames, frame_times, end = _decode(
            container, audio_stream, video_stream, frame_interval_s, max_width, max_duration_s
        )
    if audio.size == 0 and len(frames) == 0:
        raise InputError(f"no audio or video could be decoded from the input (format '{fmt}')")
    duration = max(end, audio.size / config.SAMPLE_RATE)
    if len(frames):
        frames_arr = np.stack(_same_size(frames))
    else:
        frames_arr = np.zeros((0, 1, 1), np.uint8)
    return Media(audio, frames_arr, np.asarray(frame_times, np.float32), float(duration))


def _decode(container, audio_stream, video_stream, frame_interval_s, max_width, max_duration_s):
    streams = [s for s in (audio_stream, video_stream) if s is not None]
    if video_stream is not None:
        video_stream.thread_type = "AUTO"  # frame-threaded decoding: the main cost of demux
    resampler = av.AudioResampler(format="flt", layout="mono", rate=config.SAMPLE_RATE)
    audio_parts: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    frame_times: list[float] = []
    next_sample_t = 0.0
    end = 0.0
    # Times are measured from the container's start (MPEG-TS streams, for one, start at ~1.4 s).
    origin = container.start_time / av.time_base if container.start_time else 0.0
    try:
        for frame in container.decode(*streams):
            t = frame.time - origin if frame.time is not None else end
            if t > max_duration_s:
                raise InputError(f"video is longer than the server's limit of {max_duration_s:.0f} s")
            if isinstance(frame, av.AudioFrame):
                for out in resampler.resample(frame):
                    audio_parts.append(out.to_ndarray().reshape(-1))
            elif t + 1e-6 >= next_sample_t:
                frames.append(_to_grey(frame, max_width))
                frame_times.append(t)
                next_sample_t = (np.floor(t / frame_interval_s + 1e-6) + 1) * frame_interval_s
                end = max(end, t + _frame_duration(video_stream))
            else:
                end = max(end, t + _frame_duration(video_stream))
        if audio_stream is not None:
            for out in resampler.resample(None):
                audio_parts.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        if not audio_parts and not frames:
            raise InputError(f"input could not be decoded ({_reason(exc)})") from None
        raise InputError(f"input is corrupt: decoding failed after {end:.1f} s ({_reason(exc)})") from None
    audio = np.concatenate(audio_parts).astype(np.float32) if audio_parts else np.zeros(0, np.float32)
    return audio, frames, frame_times, end


def _to_grey(frame: av.VideoFrame, max_width: int) -> np.ndarray:
    # swscale scales during the pixel-format conversion: cheaper than a second resize, and grey
    # frames are a third of the memory that travels between the ensemble's steps.
    width, height = frame.width, frame.height
    if width > max_width:
        height = max(2, round(height * max_width / width / 2) * 2)
        width = max_width
    return frame.to_ndarray(format="gray", width=width, height=height)


def _same_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    # A stream may change resolution midway; keep the first frame's size for all.
    height, width = frames[0].shape[:2]
    return [f if f.shape[:2] == (height, width) else cv2.resize(f, (width, height)) for f in frames]


def _frame_duration(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.0


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
