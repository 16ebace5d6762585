"""Demux: raw container bytes -> 16 kHz mono audio, and frames sampled every 0.5 s.

Decoding happens in memory with PyAV (FFmpeg's libraries): no temporary files, no subprocess.
Audio and frames are decoded by two independent passes over the same bytes (`decode_audio`,
`sample_frames`), so the server runs them in parallel: speech recognition starts as soon as the
audio is out, while frames are still being decoded and searched for faces. Frames are yielded one
at a time and never held all at once: their memory does not grow with the video's length.

Both passes read a `source`: the whole video as bytes, or a readable file-like object read from its
start (it need not be seekable). A live stream (fv2es.livemedia) runs the same two passes on a
growing buffer whose `read` blocks until more bytes come: what it decodes is what the whole bytes give.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar, Union

import av
import numpy as np

from . import config
from .checks import Limits
from .errors import InputError

# FFmpeg demuxers that read still images: such an input is not a video, whatever it decodes to.
_IMAGE_FORMATS = ("image2", "_pipe", "gif", "webp")

# Options of avformat_open_input. `format_whitelist` is checked right after probing, before the
# demuxer reads its header: a playlist or script format (concat, hls, ...) is refused before it can
# name, open or time a file. An empty `protocol_whitelist` refuses every protocol (file, data,
# subfile, http, ...) to any nested open: the input is only ever the in-memory buffer.
_OPEN_OPTIONS = {"format_whitelist": ",".join(config.CONTAINER_FORMATS), "protocol_whitelist": ""}


@dataclass
class Media:
    audio: np.ndarray  # float32 [n_samples] at config.SAMPLE_RATE, empty when there is no audio
    frames: np.ndarray  # uint8 [n_frames, H, W] grey (all that face detection uses), at most FRAME_MAX_WIDTH wide
    frame_times: np.ndarray  # float32 [n_frames] presentation time of each frame, seconds
    duration: float  # seconds covered by the streams


# What the passes read: the whole video, or a file-like object with `read(n)` (seek is not needed).
Source = Union[bytes, bytearray, memoryview, BinaryIO]

# FFmpeg's probe reads at most 1 MiB (PROBE_BUF_MAX) before it picks a format; a file-like source
# keeps that much of what it gave, to name a refused format (bytes are probed again in full).
_PROBE_MAX = 1 << 20


@contextmanager
def open_media(source: Source, *, limits: Limits = Limits()):
    """The opened container with its first audio and video streams; InputError for anything that is not a video.

    `source` is the video's bytes, or a file-like object read from its current position (a live
    stream: the size limit is then its reader's to enforce, as its size is not known here).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InputError("input is empty (0 bytes): send the bytes of a video file")
        if len(source) > limits.max_input_bytes:
            raise InputError(f"input is {len(source)} bytes, over the server's limit of {limits.max_input_bytes} bytes")
        file = io.BytesIO(source)
    else:
        file = _Recorder(source)
    try:
        container = av.open(file, mode="r", container_options=_OPEN_OPTIONS)
    except InputError:  # raised by a file-like source's read (it is a ValueError too)
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(file, _Recorder) and file.count == 0:
            raise InputError("input is empty (0 bytes): send the bytes of a video file") from None
        # A format off the allow-list fails with EINVAL and no name: probe again to name it.
        fmt = None
        if isinstance(exc, av.error.ArgumentError):
            fmt = _probe_format(bytes(file.head) if isinstance(file, _Recorder) else bytes(source[:_PROBE_MAX]))
        if fmt is not None and any(tag in fmt for tag in _IMAGE_FORMATS):
            raise InputError(f"input is a still image (format '{fmt}'), not a video") from None
        if fmt is not None and not _allowed(fmt):
            raise InputError(
                f"container format '{fmt}' is not accepted; send a video file (mp4, mov, mkv, webm, avi, flv, ts, ...)"
            ) from None
        raise InputError(f"input is not a readable video file ({_reason(exc)})") from None
    if isinstance(file, _Recorder):
        file.head = None  # only an error message needs it: not kept while the stream is decoded
    with container:
        fmt = container.format.name
        audio_stream = next(iter(container.streams.audio), None)
        video_stream = next(iter(container.streams.video), None)
        if audio_stream is None and video_stream is None:
            raise InputError(f"input (format '{fmt}') has neither an audio nor a video stream")
        header_duration = container.duration / av.time_base if container.duration else None
        if header_duration is not None and header_duration > limits.max_duration_s:
            raise InputError(f"video is {header_duration:.1f} s long, over the server's limit of {limits.max_duration_s:.0f} s")
        if video_stream is not None:
            _check_frame_size(video_stream.codec_context.width, video_stream.codec_context.height)
        yield container, audio_stream, video_stream


def _check_frame_size(width: int, height: int) -> None:
    """InputError for a frame of more than MAX_FRAME_PIXELS (it is decoded at full size before scaling)."""
    if width * height > config.MAX_FRAME_PIXELS:
        raise InputError(
            f"video frames are {width}x{height} ({width * height} pixels), over the server's limit of "
            f"{config.MAX_FRAME_PIXELS} pixels a frame: scale it down"
        )


def decode_audio(source: Source, *, limits: Limits = Limits()) -> tuple[np.ndarray, float]:
    """The audio as float32 mono at SAMPLE_RATE (empty when there is none) and the video's duration.

    Video packets are read but not decoded: their timestamps give the duration of a video whose
    picture outlasts its sound.
    """
    parts: list[np.ndarray] = []
    duration = drain(audio_pieces(source, limits=limits), parts.append)
    audio = np.concatenate(parts, dtype=np.float32) if parts else np.zeros(0, np.float32)  # "flt": no copy to convert
    return audio, duration


def audio_pieces(source: Source, *, limits: Limits = Limits()) -> Generator[np.ndarray, None, float]:
    """decode_audio as it goes: yields the audio's float32 pieces in order as they are decoded, and
    returns the video's duration (StopIteration.value; `drain` gives it).

    Every piece is final: the pieces joined are decode_audio's audio, whatever reads come after
    (the resampler only gives out samples its filter has all the input for; its tail comes last).
    """
    with open_media(source, limits=limits) as (container, audio_stream, video_stream):
        origin = _origin(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=config.SAMPLE_RATE)
        n_samples = 0
        lead = None  # seconds of silence before the first audio frame
        end = 0.0
        last_start = -np.inf  # the video ends with its last frame in display order
        streams = [s for s in (audio_stream, video_stream) if s is not None]
        try:
            for packet in container.demux(*streams):
                if packet.pts is not None and packet.time_base is not None:
                    start = float(packet.pts * packet.time_base) - origin
                    t = start + float((packet.duration or 0) * packet.time_base)
                    if t > limits.max_duration_s + 1.0:
                        raise InputError(f"video is longer than the server's limit of {limits.max_duration_s:.0f} s")
                    # A packet's duration is the step to the next one in decoding order: with B-frames
                    # at a variable rate, pts + duration of an earlier-shown frame can pass the end.
                    if packet.stream is video_stream and start >= last_start:
                        last_start, end = start, t
                if packet.stream is audio_stream:
                    for frame in packet.decode():
                        if lead is None:
                            # A sound track that starts after the picture (phones' empty edit, a cut
                            # stream) is put that late, so speech stays in sync with the frames.
                            lead = min(max(frame.time - origin, 0.0), limits.max_duration_s) if frame.time is not None else 0.0
                            silence = np.zeros(round(lead * config.SAMPLE_RATE), np.float32)
                            if silence.size:
                                n_samples += silence.size
                                yield silence
                        for out in resampler.resample(frame):
                            piece = out.to_ndarray().reshape(-1)
                            n_samples += piece.size
                            yield piece
            if audio_stream is not None:
                for out in resampler.resample(None):
                    piece = out.to_ndarray().reshape(-1)
                    n_samples += piece.size
                    yield piece
        except av.error.FFmpegError as exc:
            if lead is None and end == 0.0:
                raise InputError(f"input could not be decoded ({_reason(exc)})") from None
            raise InputError(f"input is corrupt: decoding failed after {end:.1f} s ({_reason(exc)})") from None
        if n_samples == 0 and end == 0.0:
            raise InputError(f"no audio or video could be decoded from the input (format '{container.format.name}')")
    return max(end, n_samples / config.SAMPLE_RATE)


T = TypeVar("T")
R = TypeVar("R")


def drain(pieces: Generator[T, None, R], sink: Callable[[T], object]) -> R:
    """Gives each item of `pieces` to `sink`; the generator's return value. The generator is closed
    (its container with it) also when `sink` raises."""
    try:
        while True:
            try:
                item = next(pieces)
            except StopIteration as stop:
                return stop.value
            sink(item)
    finally:
        pieces.close()


def sample_frames(
    source: Source,
    *,
    limits: Limits = Limits(),
    frame_interval_s: float = config.FRAME_INTERVAL_S,
    max_width: int = config.FRAME_MAX_WIDTH,
    stop_at_decode_error: bool = False,
) -> Iterator[tuple[float, np.ndarray]]:
    """(time, grey frame) for the first frame at or after each multiple of `frame_interval_s`.

    With `stop_at_decode_error` a stream that cannot be decoded (further) ends there instead of
    raising: the server's face step, whose input demux has already checked, keeps what it decoded.
    `source` as for open_media: bytes, or a file-like object (a live stream's reader).
    """
    with open_media(source, limits=limits) as (container, _, video_stream):
        if video_stream is None:
            return
        video_stream.thread_type = config.FRAME_DECODE_THREADING
        if config.FRAME_SKIP_NONREF:
            video_stream.codec_context.skip_frame = "NONREF"
        origin = _origin(container)
        next_sample_t = 0.0
        size = turns = None
        decoded = 0
        try:
            for frame in container.decode(video_stream):
                decoded += 1
                _check_frame_size(frame.width, frame.height)  # a stream may change resolution
                t = frame.time - origin if frame.time is not None else next_sample_t
                if t > limits.max_duration_s:
                    raise InputError(f"video is longer than the server's limit of {limits.max_duration_s:.0f} s")
                if t + 1e-6 < next_sample_t:
                    continue
                if size is None:  # a stream may change resolution: keep the first frame's size and rotation
                    turns = _quarter_turns(frame)
                    size = _grey_size(frame, max_width, sideways=turns % 2 == 1)
                grey = frame.to_ndarray(format="gray", width=size[0], height=size[1])
                yield t, np.ascontiguousarray(np.rot90(grey, turns)) if turns else grey
                next_sample_t = next_sample_time(t, frame_interval_s)
        except av.error.FFmpegError as exc:
            if stop_at_decode_error:
                return
            if not decoded:
                raise InputError(f"input could not be decoded ({_reason(exc)})") from None
            raise InputError(f"input is corrupt: decoding failed after {next_sample_t:.1f} s ({_reason(exc)})") from None


def next_sample_time(t: float, frame_interval_s: float = config.FRAME_INTERVAL_S) -> float:
    """After a frame sampled at `t`, the next sampled frame is the first at or after this time
    (a frame counts from 1e-6 s before it: times are rounded in their time base)."""
    return (np.floor(t / frame_interval_s + 1e-6) + 1) * frame_interval_s


def demux(data: bytes, limits: Limits = Limits()) -> Media:
    """Audio, all sampled frames and the duration at once: for training and tests (the server streams)."""
    audio, duration = decode_audio(data, limits=limits)
    sampled = list(sample_frames(data, limits=limits))
    frames = np.stack([f for _, f in sampled]) if sampled else np.zeros((0, 1, 1), np.uint8)
    times = np.asarray([t for t, _ in sampled], np.float32)
    return Media(audio, frames, times, duration)


def _quarter_turns(frame: av.VideoFrame) -> int:
    # Phones store the sensor's landscape picture and a display matrix saying how to turn it upright;
    # the Haar cascade only finds upright faces. `rotation` is counter-clockwise degrees, as np.rot90
    # turns; angles between quarter turns are rounded, mirroring flags ignored (a mirrored face is a face).
    try:
        return round(frame.rotation / 90) % 4
    except (AttributeError, TypeError, ValueError):  # no usable matrix (a degenerate one gives NaN)
        return 0


def _grey_size(frame: av.VideoFrame, max_width: int, *, sideways: bool = False) -> tuple[int, int]:
    # swscale scales during the pixel-format conversion: cheaper than a second resize. The width limit
    # is for the picture as displayed: for a quarter-turned frame that is the stored height.
    width, height = (frame.height, frame.width) if sideways else (frame.width, frame.height)
    if width > max_width:
        height = max(2, round(height * max_width / width / 2) * 2)
        width = max_width
    return (height, width) if sideways else (width, height)


def _origin(container) -> float:
    # Times are measured from the container's start (MPEG-TS streams, for one, start at ~1.4 s).
    return container.start_time / av.time_base if container.start_time else 0.0


def _allowed(fmt: str) -> bool:
    # FFmpeg's names are comma lists ("matroska,webm"); the whitelist matches any shared name.
    allowed = {name for entry in config.CONTAINER_FORMATS for name in entry.split(",")}
    return not allowed.isdisjoint(fmt.split(","))


class _ProbeData(ctypes.Structure):  # libavformat's AVProbeData
    _fields_ = [("filename", ctypes.c_char_p), ("buf", ctypes.c_char_p), ("buf_size", ctypes.c_int), ("mime_type", ctypes.c_char_p)]


@functools.cache
def _avformat():
    """The libavformat that PyAV runs on (wheels bundle it in av.libs/), or None."""
    bundled = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libavformat*.so*"))
    path = str(bundled[0]) if bundled else ctypes.util.find_library("avformat")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.av_probe_input_format3.restype = ctypes.POINTER(ctypes.c_char_p)  # AVInputFormat*, `name` first
    lib.av_probe_input_format3.argtypes = [ctypes.POINTER(_ProbeData), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    return lib


def _probe_format(data: bytes) -> str | None:
    """The demuxer FFmpeg's probe picks for `data`, for error messages only (PyAV has no probe API).

    Probing only scores the first bytes against each demuxer's signature: nothing is opened. As
    avformat_open_input, it tries 2 KiB, then twice as much until a format scores over 25 (up to 1 MiB).
    """
    try:
        lib = _avformat()
        size, score = 2048, ctypes.c_int()
        while lib is not None:
            head = data[:size]
            probe = _ProbeData(b"", head + bytes(64), len(head), None)  # FFmpeg reads up to 32 bytes past the end
            fmt = lib.av_probe_input_format3(ctypes.byref(probe), 1, ctypes.byref(score))
            if (fmt and score.value > 25) or size >= min(len(data), 1 << 20):
                return fmt[0].decode("ascii") if fmt else None
            size *= 2
    except (OSError, AttributeError, UnicodeDecodeError):
        pass
    return None


class _Recorder:
    """A file-like source as FFmpeg reads it (no seek): counts the bytes and keeps the probe's first ones."""

    def __init__(self, file):
        self._read = file.read
        self.head: bytearray | None = bytearray()
        self.count = 0

    def read(self, n: int) -> bytes:
        data = bytes(self._read(n))
        if self.head is not None and len(self.head) < _PROBE_MAX:
            self.head += data[: _PROBE_MAX - len(self.head)]
        self.count += len(data)
        return data


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
