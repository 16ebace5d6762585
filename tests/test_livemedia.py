"""A live stream decoded as its bytes arrive (fv2es.livemedia) gives what the whole file gives.

Clips are built with synth.encode_video in the formats that can be read while they are written
(MPEG-TS, Matroska, WebM, fragmented MP4, MP4 with its index first), fed in chunks of several sizes.
After every chunk the audio so far must be the start of decode_audio's, the frames taken so far the
start of sample_frames' (times and pixels), and every frame before `frames_until` taken; after
close() all of it, and the duration, must be identical. No server.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import tempfile
import threading
import time

import av
import numpy as np
import pytest

from fv2es import config
from fv2es.checks import Limits
from fv2es.errors import InputError
from fv2es.livemedia import LiveMedia
from fv2es.media import decode_audio, sample_frames
from fv2es_build import synth

FPS = 25
SIZE = (320, 240)
# Fragmented MP4 as a live writer makes it: an empty index first, then 0.5 s fragments.
FRAGMENTED = {"movflags": "empty_moov+default_base_moof", "frag_duration": "500000"}


@functools.cache
def speech() -> np.ndarray:
    """About 5 s of espeak-ng speech at 16 kHz: a pause, a sentence, a pause."""
    pause = np.zeros(config.SAMPLE_RATE // 2, np.float32)
    return np.concatenate([pause, synth.speak("I am so happy to see you again today, my friend."), pause])


def resampled(audio: np.ndarray, rate: int) -> np.ndarray:
    """`audio` at `rate`: the clips' sound tracks are not at 16 kHz, so the decoder resamples."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
    frame.sample_rate = config.SAMPLE_RATE
    out = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
    return np.concatenate(out + [o.to_ndarray().reshape(-1) for o in resampler.resample(None)])


# name -> encode_video arguments (the sound track's rate as `stream_rate`).
CLIPS = {
    "mpegts": dict(container_format="mpegts", stream_rate=48_000),
    "matroska": dict(container_format="matroska", stream_rate=44_100),
    "webm": dict(container_format="webm", video_codec="libvpx", audio_codec="libopus"),
    "fragmented_mp4": dict(container_format="mp4", stream_rate=44_100, container_options=FRAGMENTED),
    # A phone held upright, streaming: the picture stored turned, a display matrix to turn it back.
    "fragmented_mp4_rotated": dict(container_format="mp4", stream_rate=48_000, container_options=FRAGMENTED,
                                   display_rotation=-90),
    # A sound track that starts after the picture: the lead silence.
    "mpegts_late": dict(container_format="mpegts", stream_rate=48_000, audio_delay_s=1.0),
}


@functools.cache
def clip(name: str) -> bytes:
    if name == "mp4_faststart":  # the index first: remuxed through a file (faststart rewrites it)
        return faststart(clip_plain_mp4())
    if name == "webm_written_live":  # as a browser's MediaRecorder writes it: no sizes, no index, no duration
        return remux(clip("webm"), "webm", Pipe())
    spec = CLIPS[name]
    audio = resampled(speech(), spec.get("stream_rate", 48_000))
    n_frames = int(len(speech()) / config.SAMPLE_RATE * FPS)
    return synth.encode_video(frames=synth.talking_head_frames(n_frames, *SIZE), fps=FPS, width=SIZE[0], height=SIZE[1],
                              audio=audio, audio_rate=spec.get("stream_rate", 48_000), **spec)


@functools.cache
def clip_plain_mp4() -> bytes:
    n_frames = int(len(speech()) / config.SAMPLE_RATE * FPS)
    return synth.encode_video(frames=synth.talking_head_frames(n_frames, *SIZE), audio=speech(), container_format="mp4")


def remux(data: bytes, container_format: str, target, **options) -> bytes:
    """The same packets in another container written to `target` (a path, or a file-like object)."""
    with av.open(io.BytesIO(data)) as src, \
            av.open(target, "w", format=container_format, container_options=options) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    if isinstance(target, Pipe):
        return b"".join(target.parts)
    with open(target, "rb") as f:
        return f.read()


def faststart(data: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return remux(data, "mp4", os.path.join(tmp, "faststart.mp4"), movflags="faststart")


class Pipe:
    """A write-only output (no seek): the muxer writes as it would to a live connection."""

    def __init__(self):
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)


@functools.cache
def whole(name: str):
    data = clip(name)
    audio, duration = decode_audio(data)
    return audio, duration, list(sample_frames(data))


def chunks(data: bytes, how: str):
    if how == "random":
        rng = np.random.default_rng(7)
        sizes = rng.integers(1, 48 * 1024, size=len(data))
    else:
        sizes = np.full(len(data), {"1k": 1024, "64k": 64 * 1024}[how])
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


def assert_same_frames(got, expected):
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (t, a), (_, b) in zip(got, expected):
        assert a.shape == b.shape and np.array_equal(a, b), t


def stream(name: str, how: str):
    """Feeds the clip, checking the guarantees after each chunk; (live, frames, audio samples out before close)."""
    audio, _, frames = whole(name)
    live = LiveMedia()
    taken, until, before_close = [], -np.inf, 0
    for chunk in chunks(clip(name), how):
        live.feed(chunk)
        so_far = live.audio
        assert np.array_equal(so_far, audio[: len(so_far)]), "samples given before the end must be final"
        taken += live.take_frames()
        assert_same_frames(taken, frames[: len(taken)])
        assert live.frames_until >= until
        until = live.frames_until
        assert [t for t, _ in frames if t < until] == [t for t, _ in taken]
        before_close = len(so_far)
    live.close()
    taken += live.take_frames()
    assert live.frames_until == np.inf
    return live, taken, before_close


@pytest.mark.parametrize("how", ["1k", "64k", "random"])
@pytest.mark.parametrize("name", ["mpegts", "matroska", "webm", "fragmented_mp4"])
def test_stream_gives_the_whole_files_audio_frames_and_duration(name, how):
    audio, duration, frames = whole(name)
    threads = threading.active_count()
    live, taken, before_close = stream(name, how)
    assert np.array_equal(live.audio, audio) and live.audio.dtype == np.float32
    assert live.duration == duration
    assert_same_frames(taken, frames)
    assert len(frames) >= 9 and len(audio) > 4 * config.SAMPLE_RATE
    # Decoded while it arrived, not all at close(): the last chunk holds at most 48 KiB of the clip.
    assert before_close > len(audio) / 3, (before_close, len(audio), len(clip(name)))
    assert threading.active_count() == threads  # the decoder threads have ended


@pytest.mark.parametrize("name", ["fragmented_mp4_rotated", "mpegts_late", "mp4_faststart", "webm_written_live"])
def test_rotation_lead_silence_and_other_layouts(name):
    audio, duration, frames = whole(name)
    live, taken, _ = stream(name, "random")
    assert np.array_equal(live.audio, audio) and live.duration == duration
    assert_same_frames(taken, frames)
    if name == "mpegts_late":  # 1 s of lead silence, then the speech's own 0.5 s pause
        loud = np.flatnonzero(np.abs(audio) > 0.01) / config.SAMPLE_RATE
        assert loud[0] == pytest.approx(1.5, abs=0.03)
    if "rotated" in name:  # stored turned, given upright: the unrotated clip's picture, up to the codec's loss
        upright = whole("fragmented_mp4")[2]
        assert len(frames) == len(upright)
        for (_, a), (_, b) in zip(frames, upright):
            assert a.shape == b.shape == (SIZE[1], SIZE[0]) and np.abs(a.astype(int) - b.astype(int)).mean() < 12


def test_mp4_with_its_index_at_the_end_is_refused_at_once():
    # Read without seeking, its media data would be skipped to reach the index (moov) at the end,
    # then be needed again: nothing could be decoded. The layout shows in the first bytes.
    data = clip_plain_mp4()
    live = LiveMedia()
    with pytest.raises(InputError, match="moov at the end") as info:
        for i in range(0, 4096):
            live.feed(data[i : i + 1])
    assert i < 100 and live.error is info.value and live.audio.size == 0
    with pytest.raises(InputError, match="moov at the end"):
        live.close()
    assert np.array_equal(decode_audio(data)[0], decode_audio(faststart(data))[0])  # the same content, index first


def refused_as_whole(payload: bytes, chunk: int = 8192) -> str:
    """The live stream's error for `payload`, checked to be the whole bytes' one."""
    with pytest.raises(InputError) as whole_error:
        decode_audio(payload)
    live = LiveMedia()
    with pytest.raises(InputError) as live_error:
        for i in range(0, len(payload), chunk):
            live.feed(payload[i : i + chunk])
        live.close()
    assert str(live_error.value) == str(whole_error.value)
    assert live.error is live_error.value
    with pytest.raises(InputError):
        live.feed(b"more")
    return str(live_error.value)


def test_garbage_is_refused():
    garbage = np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    assert "not a readable video" in refused_as_whole(garbage)


def test_payloads_refused_as_the_whole_bytes_are():
    concat = b"ffconcat version 1.0\nfile 'samples/talking_head.mp4'\n"
    # Shorter than FFmpeg's first probe (refused at close), and longer (refused at the first feed).
    for payload in (concat, concat * 200):
        assert "container format 'concat' is not accepted" in refused_as_whole(payload, chunk=len(payload))


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_url_sent_as_bytes_opens_nothing(scheme):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.3)
        message = refused_as_whole(f"{scheme}://127.0.0.1:{server.getsockname()[1]}/live".encode())
        assert "not a readable video" in message
        with pytest.raises(TimeoutError):  # no connection was ever attempted
            server.accept()


def test_over_the_byte_limit():
    data = clip("mpegts")
    live = LiveMedia(limits=Limits(max_input_bytes=len(data) // 2))
    with pytest.raises(InputError, match=f"over the server's limit of {len(data) // 2} bytes"):
        for chunk in chunks(data, "1k"):
            live.feed(chunk)
    assert live.bytes_fed <= len(data) // 2 and live.audio.size > 0  # refused on the chunk that passed the limit


def test_over_the_duration_limit():
    threads = threading.active_count()
    live = LiveMedia(limits=Limits(max_duration_s=2.0))
    with pytest.raises(InputError, match="limit of 2 s"):
        for chunk in chunks(clip("matroska"), "1k"):
            live.feed(chunk)
        live.close()
    live.stop()
    assert threading.active_count() == threads


def test_empty_stream():
    with pytest.raises(InputError, match="empty"):
        LiveMedia().close()


def test_stop_in_the_middle_ends_the_threads_and_frees_the_memory():
    data = clip("webm")
    threads = threading.active_count()
    live = LiveMedia()
    live.feed(data[: len(data) // 2])
    assert threading.active_count() == threads + 2 and live.audio.size > 0
    live.stop()
    assert threading.active_count() == threads
    assert live.audio.size == 0 and live.take_frames() == [] and len(live._data) == 0
    with pytest.raises(InputError, match="stopped"):
        live.feed(data[len(data) // 2 :])
    live.stop()  # twice: nothing


def test_stop_from_another_thread_releases_a_waiting_feed():
    # The server's reaper may stop a stream while a request feeds it: feed() must not wait on.
    threads = threading.active_count()
    live = LiveMedia()
    add, stopper = live._add_audio, threading.Thread(target=live.stop)

    def slow_decoder(piece):
        if stopper.ident is None:
            stopper.start()
            deadline = time.monotonic() + 10
            while not live._halted and time.monotonic() < deadline:  # still decoding when stop() comes
                time.sleep(0.01)
        add(piece)

    live._add_audio = slow_decoder
    with pytest.raises(InputError, match="stopped"):
        live.feed(clip("mpegts"))
    stopper.join()
    assert threading.active_count() == threads


class NonSeekable(io.RawIOBase):
    """A pipe-like file: read only."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)


def test_media_reads_a_file_like_source():
    data = clip("matroska")
    audio, duration, frames = whole("matroska")
    got_audio, got_duration = decode_audio(NonSeekable(data))
    assert np.array_equal(got_audio, audio) and got_duration == duration
    assert_same_frames(list(sample_frames(NonSeekable(data))), frames)
    with pytest.raises(InputError, match="input is empty"):
        decode_audio(NonSeekable(b""))
    with pytest.raises(InputError, match="container format 'concat' is not accepted"):
        decode_audio(NonSeekable(b"ffconcat version 1.0\nfile 'a.mp4'\n"))
