"""A live stream's audio and sampled frames, decoded as its bytes arrive.

A client sends a growing container stream (MPEG-TS, Matroska/WebM, fragmented MP4: formats that
can be read while they are written) as a sequence of byte chunks. `LiveMedia` runs the two passes
of fv2es.media on it, each in its own thread: `audio_pieces` (decode_audio's core) and
`sample_frames`, each reading the stream through a blocking reader of one shared, growing buffer.
FFmpeg reads ahead (probing, stream info): a reader with no byte left blocks until the next chunk or
the end of the stream, it never sees an end of file before `close()`. What comes out is therefore
exactly what the whole bytes give: the same code on the same bytes, read in the same order.

    live = LiveMedia(limits=...)   # no thread until the first bytes
    live.feed(chunk)        # returns when both decoders wait for more bytes (or have finished)
    live.audio              # float32 samples so far, from the stream's start: all final
    live.take_frames()      # [(time, grey frame)] sampled since the last call, in time order
    live.frames_until       # every sampled frame with time < this has been taken (-inf, +inf at the end)
    live.close()            # end of stream: decoders flush; audio, frames and duration complete
    live.duration           # after close(): what decode_audio gives for the whole bytes
    live.stop()             # abandon: the threads end, the memory is freed

Guarantees, at any time (after each feed() in particular):
  - `audio` is a prefix of decode_audio(whole bytes)[0]: samples once given never change (the
    resampler gives out only samples whose input it has all; its filter's tail comes at close()).
  - take_frames() gives a prefix of sample_frames(whole bytes): same times, same pixels.
  - a sampled frame not yet taken has a time >= frames_until (sampled times only increase and
    each is at or after the next multiple of the interval after the previous one).
Decoders lag the bytes a little: FFmpeg reads the start of the stream to learn its streams before
any packet comes out (until every stream's parameters are known; at most 5 s of media or 5 MB,
about 1 s for the test clips), the video decoder keeps a few packets (B-frames), the resampler a
few samples, and a container packet ends only where the next one starts. At 0.5 s chunks the audio
is ~0.05 s behind the bytes (median; 60 s MPEG-TS clip); the rest comes at the next chunk, or close().

Not streamable: an MP4/MOV whose index (moov) comes after its media data (the default of most
writers, phones included) can only be read with seeks, which a stream does not have. It is refused
as soon as its layout shows (InputError at feed()); MP4 is streamable fragmented
(movflags frag_keyframe+empty_moov) or with its index first (faststart).

Formats (tests/test_livemedia.py; the others checked by hand, 4 KiB chunks): MPEG-TS, Matroska,
WebM (also as written live: no sizes, no index, no duration), fragmented MP4 and index-first MP4
give the whole file's result; so do FLV, AVI, ASF, Ogg, ADTS, WAV and FLAC. MPEG-PS too, but FFmpeg
analyses ~5 s of it before the first packet comes out. MP3 (audio only): samples given before
close() are final, but the complete audio keeps the encoder's end padding (~13 ms of silence) that
the whole file drops: the MP3 demuxer trims it only when it can seek to the end.

Memory: the buffer keeps only the bytes a decoder has not read yet (feed() returns once both have
read all they can), the audio so far (64 KB per second), and the frames not yet taken.
"""

from __future__ import annotations

import threading

import numpy as np

from . import config
from .checks import Limits
from .errors import InputError
from .media import audio_pieces, drain, next_sample_time, sample_frames

# Bytes every decoder has read are dropped from the buffer once there are this many.
_TRIM_BYTES = 1 << 20
# stop() waits this long for each decoder thread to end (they end at their next read or output).
_STOP_JOIN_S = 10.0
# frames_until stays this far below the next sampling time: sample_frames takes a frame from 1e-6 s
# before it (float rounding is far below the difference).
_FRAMES_UNTIL_MARGIN_S = 2e-6


class _Halted(Exception):
    """Raised in a decoder thread to end it: the stream was stopped or failed."""


class _Reader:
    """One decoder's view of the stream: `read(n)` blocks until there are bytes it has not read, or
    the stream is closed (then b"": the end of the file) or stopped (b"" too: the decoder ends)."""

    def __init__(self, live: LiveMedia, name: str):
        self._live = live
        self.name = name
        self.pos = 0  # bytes of the stream read so far
        self.waiting = False  # blocked in read() for bytes not yet fed
        self.done = False  # the decoder has finished (or failed, or was stopped)

    def read(self, n: int = -1) -> bytes:
        live = self._live
        with live._cond:
            while self.pos == live._end and not (live._closed or live._halted):
                self.waiting = True
                live._cond.notify_all()  # feed() waits for every decoder to be here
                live._cond.wait()
            self.waiting = False
            if live._halted or self.pos == live._end:
                return b""
            start = self.pos - live._base
            stop = len(live._data) if n is None or n < 0 else start + n
            out = bytes(live._data[start:stop])
            self.pos += len(out)
            live._trim()
            return out


class LiveMedia:
    """The audio and sampled frames of a stream fed in chunks; see the module's docstring.

    `stop_at_decode_error` as for sample_frames (True, as the server's face step): a video stream
    that cannot be decoded further ends the frames there, the audio pass reports the damage if
    the container is damaged. Errors raised by either decoder (InputError: not a video, corrupt,
    over the limits) are kept in `error` and raised by feed() and close(); the stream is then dead.
    """

    def __init__(
        self,
        *,
        limits: Limits = Limits(),
        frame_interval_s: float = config.FRAME_INTERVAL_S,
        max_width: int = config.FRAME_MAX_WIDTH,
        stop_at_decode_error: bool = True,
    ):
        self.limits = limits
        self.frame_interval_s = frame_interval_s
        self.max_width = max_width
        self.stop_at_decode_error = stop_at_decode_error
        self._cond = threading.Condition()
        self._data = bytearray()  # the stream's bytes from _base to _end that a decoder has not read
        self._base = 0
        self._end = 0  # bytes fed
        self._closed = False  # close() called: readers at the end get b""
        self._stopped = False
        self._halted = False  # stopped or failed: every reader gets b"", every decoder ends
        self._readers: list[_Reader] = []
        self._threads: list[threading.Thread] = []
        self._layout = _Mp4Layout()
        self._samples = np.zeros(0, np.float32)  # capacity; the first _n are the audio
        self._n = 0
        self._frames: list[tuple[float, np.ndarray]] = []
        self._next_sample = -np.inf  # no sampled frame comes before this time
        self._duration: float | None = None
        self.error: BaseException | None = None

    # --- What the model calls -------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Appends the stream's next bytes; returns when the decoders have used all they can."""
        try:
            self._feed(chunk)
        except BaseException:
            self._join_if_halted()  # a failed stream's decoders end at once: none is left when this raises
            raise

    def _feed(self, chunk: bytes) -> None:
        with self._cond:
            self._check_open("feed")
            if not chunk:
                return
            if self._end + len(chunk) > self.limits.max_input_bytes:
                self._fail(InputError(f"the stream is over the server's limit of {self.limits.max_input_bytes} bytes "
                                      f"({self._end + len(chunk)} bytes sent)"))
                raise self.error
            problem = self._layout.feed(chunk)
            if problem is not None:
                self._fail(InputError(problem))
                raise self.error
            self._data += chunk
            self._end += len(chunk)
            if not self._threads:
                self._start()
            self._cond.notify_all()
            while not self._settled():
                self._cond.wait()
            self._check_alive()

    def close(self) -> None:
        """The end of the stream: the decoders read to the end and flush. Then `audio`, the frames
        and `duration` are complete. Raises the decoders' error, if any; a second call does nothing."""
        try:
            self._close()
        except BaseException:
            self._join_if_halted()
            raise

    def _close(self) -> None:
        with self._cond:
            if self.error is not None:
                raise self.error
            if self._closed:
                return
            self._check_open("close")
            self._closed = True
            if not self._threads:
                self._fail(InputError("input is empty (0 bytes): send the bytes of a video stream"))
                raise self.error
            self._cond.notify_all()
            while not (self._halted or all(r.done for r in self._readers)):
                self._cond.wait()
        for thread in self._threads:
            thread.join()
        with self._cond:
            self._check_alive()

    def stop(self) -> None:
        """Abandons the stream (idle, failed, server closing): the decoder threads end, the buffers
        are freed. feed() and close() then raise InputError. Safe to call at any time, twice."""
        with self._cond:
            self._stopped = self._halted = True
            self._cond.notify_all()
        self._join_if_halted()
        with self._cond:
            self._data = bytearray()
            self._samples = np.zeros(0, np.float32)
            self._n = 0
            self._frames = []

    @property
    def audio(self) -> np.ndarray:
        """float32 mono at SAMPLE_RATE decoded so far, from the stream's start (read-only view):
        a prefix of what decode_audio gives for the whole stream, every sample final."""
        with self._cond:
            view = self._samples[: self._n]
        view.flags.writeable = False
        return view

    def take_frames(self) -> list[tuple[float, np.ndarray]]:
        """(time, grey frame) sampled since the last call, in time order: sample_frames' next ones."""
        with self._cond:
            frames, self._frames = self._frames, []
        return frames

    @property
    def frames_until(self) -> float:
        """Every sampled frame with time < this has been returned by take_frames(); -inf before the
        first, +inf once the video pass has ended (the end of the stream, or no video)."""
        with self._cond:
            if self._frames:
                return self._frames[0][0]
            return self._next_sample

    @property
    def duration(self) -> float | None:
        """After close(): the stream's duration, as decode_audio gives it for the whole bytes. None before."""
        with self._cond:
            return self._duration

    @property
    def bytes_fed(self) -> int:
        return self._end

    @property
    def media_s(self) -> float:
        """Seconds of the stream decoded so far: its audio, or its sampled frames' times if further."""
        with self._cond:
            frames = self._next_sample if np.isfinite(self._next_sample) else 0.0
            return max(self._n / config.SAMPLE_RATE, frames)

    # --- Decoder threads ------------------------------------------------------------------------

    def _start(self) -> None:
        for name, target in (("audio", self._run_audio), ("video", self._run_video)):
            reader = _Reader(self, name)
            thread = threading.Thread(target=self._run, args=(target, reader), name=f"fv2es-live-{name}", daemon=True)
            self._readers.append(reader)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _run(self, target, reader: _Reader) -> None:
        try:
            target(reader)
        except _Halted:
            pass
        except BaseException as exc:  # noqa: BLE001 - kept, raised by feed() / close()
            self._fail(exc)
        finally:
            with self._cond:
                reader.done = True
                self._trim()
                self._cond.notify_all()

    def _run_audio(self, reader: _Reader) -> None:
        pieces = audio_pieces(reader, limits=self.limits)
        duration = drain(pieces, self._add_audio)
        with self._cond:
            if not self._halted:
                self._duration = duration

    def _run_video(self, reader: _Reader) -> None:
        frames = sample_frames(reader, limits=self.limits,
                               frame_interval_s=self.frame_interval_s, max_width=self.max_width,
                               stop_at_decode_error=self.stop_at_decode_error)
        drain(frames, self._add_frame)
        with self._cond:
            if not self._halted:
                self._next_sample = np.inf

    def _add_audio(self, piece: np.ndarray) -> None:
        with self._cond:
            if self._halted:
                raise _Halted
            n = self._n + piece.size
            if n > self._samples.size:
                grown = np.empty(max(n, 2 * self._samples.size, config.SAMPLE_RATE), np.float32)
                grown[: self._n] = self._samples[: self._n]
                self._samples = grown  # views given out keep the old array: their samples are final
            self._samples[self._n : n] = piece
            self._n = n

    def _add_frame(self, frame: tuple[float, np.ndarray]) -> None:
        with self._cond:
            if self._halted:
                raise _Halted
            self._frames.append(frame)
            self._next_sample = float(next_sample_time(frame[0], self.frame_interval_s)) - _FRAMES_UNTIL_MARGIN_S

    def _join_if_halted(self) -> None:
        if self._halted:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(_STOP_JOIN_S)

    # --- State (under self._cond) ---------------------------------------------------------------

    def _settled(self) -> bool:
        """Every decoder has finished, or waits in read() with every byte fed read."""
        return self._halted or all(r.done or (r.waiting and r.pos == self._end) for r in self._readers)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._halted:  # stopped, or failed already: what the decoders say at EOF is moot
                return
            self.error = exc
            self._halted = True
            self._data = bytearray()
            self._cond.notify_all()

    def _trim(self) -> None:
        low = min((r.pos for r in self._readers if not r.done), default=self._end)
        if low - self._base >= _TRIM_BYTES or (low == self._end and self._data):
            del self._data[: low - self._base]
            self._base = low

    def _check_alive(self) -> None:
        if self.error is not None:
            raise self.error
        if self._stopped:
            raise InputError("the stream was stopped (idle for too long, or the server is closing)")

    def _check_open(self, what: str) -> None:
        self._check_alive()
        if self._closed:
            raise RuntimeError(f"LiveMedia.{what}() after close()")


class _Mp4Layout:
    """Watches an MP4/MOV stream's top-level boxes: media data (mdat) before the index (moov) needs
    seeks, which a stream does not allow. feed() gives the error message then, else None."""

    _TOP = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"sidx", b"moof", b"mfra",
            b"meta", b"pdin", b"prft", b"emsg"}

    def __init__(self):
        self._head = bytearray()  # the bytes of the box header being read
        self._skip = 0  # bytes left of the current box's body
        self._done = False  # decided: not MP4, or the index came first

    def feed(self, chunk: bytes) -> str | None:
        pos = 0
        while not self._done and pos < len(chunk):
            if self._skip:
                step = min(self._skip, len(chunk) - pos)
                self._skip -= step
                pos += step
                continue
            # A box header: 32-bit size and type, then a 64-bit size when the first is 1.
            want = 16 if len(self._head) >= 8 and self._head[:4] == b"\0\0\0\1" else 8
            take = chunk[pos : pos + want - len(self._head)]
            self._head += take
            pos += len(take)
            if len(self._head) < want or (want == 8 and self._head[:4] == b"\0\0\0\1"):
                continue
            size, kind = int.from_bytes(self._head[:4], "big"), bytes(self._head[4:8])
            if want == 16:
                size = int.from_bytes(self._head[8:16], "big")
            if kind not in self._TOP:
                self._done = True  # not MP4 (or a box this check does not know): FFmpeg decides
            elif kind in (b"moov", b"moof"):
                self._done = True  # the index first: streamable
            elif kind == b"mdat" and size != want:
                self._done = True
                return ("this MP4/MOV stream has its media data before its index (moov at the end): it can only be "
                        "read whole, not while it arrives; stream MPEG-TS, WebM/Matroska or fragmented MP4 "
                        "(ffmpeg -movflags frag_keyframe+empty_moov), or send the file whole")
            elif size < want:  # 0: "to the end of the file", or broken: FFmpeg decides
                self._done = True
            else:
                self._skip = size - want
                self._head = bytearray()
        return None
