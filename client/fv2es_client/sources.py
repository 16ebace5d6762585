"""Byte sources for `Fv2esClient.stream`: a finished file, a file that is still being written, or a
capture (RTSP/HTTP URL, webcam, any input FFmpeg reads) remuxed into MPEG-TS on the client.

    file_chunks("clip.ts")                                     # a whole file, in chunks (replays, tests)
    growing_file_chunks("recording.ts", idle_timeout_s=10)    # tail a file an encoder is writing
    capture_chunks("rtsp://camera/stream", seconds=60)        # the server never sees the URL, only bytes
    capture_chunks("/dev/video0", options={"video_size": "640x480", "framerate": "30"})

Every source is a plain iterator of bytes; those that wait (tailing, capturing) also take a `stop`
event that ends them cleanly between two reads, so that the stream still gets its end.
"""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

DEFAULT_CHUNK_BYTES = 256 * 1024
DEFAULT_POLL_S = 0.2
DEFAULT_IDLE_TIMEOUT_S = 10.0
DONE_SUFFIX = ".done"  # growing_file_chunks: `<path>.done` says the writer has finished
DEFAULT_FLUSH_S = 0.5  # capture_chunks: the longest a produced byte waits before it is yielded
OPEN_TIMEOUT_S = 10.0  # capture_chunks: opening the input, and each read of a network input
# Codecs that MPEG-TS carries and the server decodes: copied as they are (no re-encoding).
COPY_VIDEO_CODECS = frozenset({"h264"})
COPY_AUDIO_CODECS = frozenset({"aac", "mp3"})
LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "tcp://", "http://", "https://")


def file_chunks(path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *,
                stop: threading.Event | None = None) -> Iterator[bytes]:
    """A finished file's bytes, `chunk_bytes` at a time (until `stop` is set)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be at least 1")
    with open(path, "rb") as f:
        while (stop is None or not stop.is_set()) and (data := f.read(chunk_bytes)):
            yield data


def byte_clock(path: str | Path) -> list[tuple[float, int]]:
    """(media time from the file's start, bytes that hold every packet up to it), in time order, from
    each packet's time and position: what a player of the file has read by then."""
    import av  # noqa: PLC0415

    marks = []
    with av.open(str(path)) as container:
        start = container.start_time / av.time_base if container.start_time else 0.0
        for packet in container.demux():
            if packet.pts is not None and packet.pos is not None and packet.pos >= 0:
                marks.append((float(packet.pts * packet.time_base) - start, packet.pos + packet.size))
    marks.sort()
    clock, end = [], 0
    for t, packet_end in marks:
        end = max(end, packet_end)
        clock.append((t, end))
    return clock


def paced_file_chunks(path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *, step_s: float = 0.5,
                      stop: threading.Event | None = None) -> Iterator[bytes]:
    """A finished file's bytes as they are, at the speed it plays: every `step_s`, the bytes that hold
    the media up to that time (byte_clock), at most `chunk_bytes` at once (until `stop` is set)."""
    data = Path(path).read_bytes()
    clock = byte_clock(path)
    duration = clock[-1][0] if clock else 0.0
    started, sent, t, mark = time.monotonic(), 0, step_s, 0
    while sent < len(data) and (stop is None or not stop.is_set()):
        _sleep(started + t - step_s - time.monotonic(), stop)
        while mark < len(clock) and clock[mark][0] < t:
            mark += 1
        upto = len(data) if t > duration else (clock[mark - 1][1] if mark else 0)
        for start in range(sent, upto, chunk_bytes):
            yield data[start : min(start + chunk_bytes, upto)]
        sent = max(sent, upto)
        t += step_s


def done_marker(path: str | Path) -> Path:
    """`<path>.done`: the file whose existence tells growing_file_chunks that `path` is complete."""
    path = Path(path)
    return path.with_name(path.name + DONE_SUFFIX)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


def growing_file_chunks(
    path: str | Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    poll_s: float = DEFAULT_POLL_S,
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """Tails a file that is being written: yields its bytes in order, new ones as they appear.

    The rule for the end: the file is read to its end once more, then the source ends, as soon as
    either `<path>.done` exists (the writer creates it after its last write: the end is immediate
    and nothing is lost), or the file has not grown for `idle_timeout_s` (None: only the marker
    ends it), or `stop` is set. A file that does not exist yet is waited for, under the same rule;
    a file that shrinks (truncated, replaced) raises OSError.
    """
    if chunk_bytes < 1 or poll_s <= 0:
        raise ValueError("chunk_bytes must be at least 1 and poll_s positive")
    path, marker = Path(path), done_marker(path)
    last_growth = time.monotonic()

    def should_end() -> bool:
        idle = idle_timeout_s is not None and time.monotonic() - last_growth >= idle_timeout_s
        return marker.exists() or idle or (stop is not None and stop.is_set())

    while not path.exists():
        if should_end():
            raise FileNotFoundError(f"no such file: {path} (waited {time.monotonic() - last_growth:.1f} s)")
        _sleep(poll_s, stop)
    with open(path, "rb", buffering=0) as f:
        position = 0
        while True:
            ending = should_end()  # before the read: what was written before the marker is read now
            while data := f.read(chunk_bytes):
                position += len(data)
                last_growth = time.monotonic()
                yield data
                ending = False  # it grew: look again after this read
            if ending:
                return
            if os.fstat(f.fileno()).st_size < position:
                raise OSError(f"{path} shrank below the {position} bytes already read: it was truncated or replaced")
            _sleep(poll_s, stop)


class _Sink:
    """A write-only file object collecting a muxer's output until it is taken."""

    def __init__(self):
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


def default_input_format(source: str) -> str | None:
    """`v4l2` for a Linux video device (/dev/video0), else None (FFmpeg probes)."""
    return "v4l2" if source.startswith("/dev/video") else None


def is_live_source(source: str) -> bool:
    """A URL or a capture device (capture_chunks), rather than a file on this machine."""
    return source.lower().startswith(LIVE_PREFIXES) or source.startswith("/dev/")


def capture_chunks(
    source: str | Path,
    *,
    seconds: float | None = None,
    input_format: str | None = None,
    options: dict[str, str] | None = None,
    transcode: bool | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    flush_s: float = DEFAULT_FLUSH_S,
    realtime: bool = False,
    stop: threading.Event | None = None,
    open_timeout_s: float | None = OPEN_TIMEOUT_S,
) -> Iterator[bytes]:
    """Opens `source` on this machine with PyAV (an RTSP/HTTP URL, a webcam such as /dev/video0, a
    file, any input FFmpeg reads) and remuxes its first video and first audio stream into MPEG-TS in
    memory, yielding the TS bytes as they are produced (at least every `flush_s` while packets come,
    at most `chunk_bytes` at once).

    H.264 video and AAC/MP3 audio are copied as they are; anything else is encoded (video: libx264,
    preset ultrafast, tune zerolatency; audio: AAC). `transcode=True` encodes everything, False
    refuses inputs that would need it (ValueError). `input_format` and `options` go to FFmpeg
    (`v4l2` is the default for /dev/video*; e.g. options={"rtsp_transport": "tcp"}). The capture
    ends at the end of the input, after `seconds` of media time, or when `stop` is set; `realtime`
    paces a file at the speed it plays (a live input paces itself).
    """
    import av  # noqa: PLC0415 - PyAV is needed by this source only

    source = str(source)
    fmt = input_format if input_format is not None else default_input_format(source)
    timeout = None if open_timeout_s is None else (open_timeout_s, open_timeout_s)
    container = av.open(source, format=fmt, options=dict(options or {}), timeout=timeout)
    sink = _Sink()
    out = None
    try:
        inputs = [s for s in (_first(container.streams.video), _first(container.streams.audio)) if s is not None]
        if not inputs:
            raise ValueError(f"{source} has no audio or video stream")
        out = av.open(sink, "w", format="mpegts", container_options={"flush_packets": "1"})
        routes = {s.index: _Route(s, out, transcode) for s in inputs}
        start = None
        wall_start = time.monotonic()
        last_yield = time.monotonic()
        for packet in container.demux(inputs):
            if stop is not None and stop.is_set():
                break
            route = routes[packet.stream.index]
            t = route.seconds(packet)
            if t is not None:
                if start is None:
                    start = t
                if seconds is not None and t - start >= seconds:
                    break
                if realtime and t - start > time.monotonic() - wall_start:
                    _sleep(t - start - (time.monotonic() - wall_start), stop)
            route.feed(packet)
            now = time.monotonic()
            if len(sink.buffer) >= chunk_bytes or (sink.buffer and now - last_yield >= flush_s):
                last_yield = now
                yield from _split(sink.take(), chunk_bytes)
        for route in routes.values():
            route.finish()
        out.close()
        out = None
        yield from _split(sink.take(), chunk_bytes)
    finally:
        if out is not None:
            try:
                out.close()
            except Exception:  # noqa: BLE001 - closing after an earlier failure
                pass
        container.close()


def _first(streams):
    """The first stream that is not a cover picture (an `attached_pic` video stream), or None."""
    from av.stream import Disposition  # noqa: PLC0415

    return next((s for s in streams if not s.disposition & Disposition.attached_pic), None)


def _split(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _Route:
    """One input stream into the TS muxer: packets copied, or decoded and encoded again."""

    def __init__(self, stream, out, transcode: bool | None):
        self.input, self.out = stream, out
        name = stream.codec_context.codec.canonical_name  # `mp3`, where the decoder is `mp3float`
        copyable = name in (COPY_VIDEO_CODECS if stream.type == "video" else COPY_AUDIO_CODECS)
        if transcode is False and not copyable:
            raise ValueError(f"the {stream.type} codec {name} cannot be copied into MPEG-TS as it is: allow transcoding")
        self.copy = copyable and not transcode
        self.last_dts = None
        self.last_pts = None
        if self.copy:
            self.output = out.add_stream_from_template(stream)
        elif stream.type == "video":
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            self.output = out.add_stream("libx264", rate=rate)
            self.output.width = stream.codec_context.width // 2 * 2
            self.output.height = stream.codec_context.height // 2 * 2
            self.output.pix_fmt = "yuv420p"
            self.output.options = {"preset": "ultrafast", "tune": "zerolatency"}
            if stream.time_base:  # the input's own clock: variable-rate and live timestamps stay as they are
                self.output.codec_context.time_base = stream.time_base
        else:
            rate = stream.codec_context.sample_rate or 48_000
            self.output = out.add_stream("aac", rate=rate)
            self.output.layout = "mono" if stream.codec_context.channels == 1 else "stereo"

    def seconds(self, packet) -> float | None:
        stamp = packet.pts if packet.pts is not None else packet.dts
        return None if stamp is None or packet.time_base is None else float(stamp * packet.time_base)

    def feed(self, packet) -> None:
        if self.copy:
            if packet.dts is None or (self.last_dts is not None and packet.dts <= self.last_dts):
                return  # flush packets, or out of order for the muxer: dropped
            self.last_dts = packet.dts
            packet.stream = self.output
            self.out.mux(packet)
            return
        for frame in packet.decode():
            self._encode(frame)

    def _encode(self, frame) -> None:
        if self.input.type == "video":
            if frame.pts is not None:
                if self.last_pts is not None and frame.pts <= self.last_pts:
                    return  # the encoder needs increasing timestamps
                self.last_pts = frame.pts
        self.out.mux(self.output.encode(frame))

    def finish(self) -> None:
        if self.copy:
            return
        import av  # noqa: PLC0415

        try:  # the decoder's delayed frames (demux's last, empty packet flushed it when the input ended)
            for frame in self.input.codec_context.decode(None):
                self._encode(frame)
        except av.error.EOFError:
            pass
        self.out.mux(self.output.encode(None))


def sent_as_is(path: str | Path) -> bool:
    """Whether a finished file can go to the stream model byte for byte: MPEG-TS or Matroska/WebM
    (formats that can be read while they are written). Anything else is remuxed (capture_chunks);
    a file PyAV cannot open is sent as it is, for the server to say what is wrong with it."""
    import av  # noqa: PLC0415

    try:
        with av.open(str(path)) as container:
            names = set(container.format.name.split(","))
    except (av.error.FFmpegError, OSError, ValueError):
        return True
    return bool(names & {"mpegts", "matroska", "webm"})


def source_chunks(
    source: str | Path,
    *,
    follow: bool = False,
    seconds: float | None = None,
    realtime: bool = False,
    transcode: bool | None = None,
    input_format: str | None = None,
    options: dict[str, str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """The bytes `fv2es-client --stream SOURCE` sends: with `follow`, the growing file tailed
    (growing_file_chunks); a URL or a device (or any `input_format`) captured and remuxed
    (capture_chunks); a finished file as it is when it is MPEG-TS or Matroska/WebM and nothing asks
    for a capture option, else remuxed. A missing file raises FileNotFoundError here, at once."""
    source = str(source)
    capture = {"seconds": seconds, "input_format": input_format, "options": options, "transcode": transcode,
               "chunk_bytes": chunk_bytes, "realtime": realtime, "stop": stop}
    if follow:
        return growing_file_chunks(source, chunk_bytes=chunk_bytes, idle_timeout_s=idle_timeout_s, stop=stop)
    if is_live_source(source) or input_format:
        return capture_chunks(source, **capture)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if sent_as_is(source) and not (seconds or transcode):
        if realtime:
            return paced_file_chunks(source, chunk_bytes, stop=stop)
        return file_chunks(source, chunk_bytes, stop=stop)
    return capture_chunks(source, **capture)
